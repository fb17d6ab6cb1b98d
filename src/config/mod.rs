//! Typed, validated settings: loading and layering ([`load`]), one file per
//! section of `config/default.toml`.
//!
//! Layering (later wins), as documented in `docs/reference.md`, "Configuration":
//! 1. `config/default.toml`, compiled into the binary so every key has a default;
//! 2. the file named by `--config PATH` or `HOOKRELAY_CONFIG`;
//! 3. environment variables `HOOKRELAY__SECTION__KEY` (double underscore nests);
//!    `DATABASE_URL` sets `database.url` unless `HOOKRELAY__DATABASE__URL` is set.
//!
//! Unknown keys are rejected, and [`Settings::validate`] checks every value, so a
//! bad configuration fails at start with one line naming the key
//! ([`ConfigError`], exit code 2 in `main`).
//!
//! This module is a leaf: besides external crates it imports only
//! [`crate::domain`] (`scripts/check_cycles.py`).

mod admission;
mod auth;
mod commands;
mod database;
mod delivery;
mod dispatcher;
mod events;
mod integrations;
mod limits;
pub mod load;
mod maintenance;
mod query;
mod resilience;
mod retention;
mod security;
mod server;
mod telemetry;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

pub use admission::AdmissionSettings;
pub use auth::{AuthSettings, TokenKeys, DEV_JWT_SECRET, MAX_TOKEN_LIFETIME_S};
pub use commands::CommandSettings;
pub use database::{mask_url, DatabaseSettings};
pub use delivery::{DeliverySettings, MAX_RETRY_DELAY_S, MAX_SECRET_ROTATION_GRACE_S};
pub use dispatcher::DispatcherSettings;
pub use events::EventSettings;
pub use integrations::{
    BreakerSettings, CredentialSettings, FallbackSettings, IntegrationSettings, OperationSettings,
    QuerySettings, ThrottleSettings, WriteMethod, DEFAULT_OPERATION_ROLES, DEFAULT_QUERY_ROLES,
};
pub use limits::LimitSettings;
pub use load::DEFAULT_CONFIG;
pub use maintenance::MaintenanceSettings;
pub use query::{CacheSettings, QuerySideSettings, MAX_READ_YOUR_WRITES_MS, MAX_STALENESS_MS};
pub use resilience::ResilienceSettings;
pub use retention::RetentionSettings;
pub use security::{
    SecuritySettings, DEFAULT_REDACT_FIELDS, DEV_JOB_MAC_KEY, DEV_SIGNING_KEY_ENCRYPTION_KEY,
};
pub use server::ServerSettings;
pub use telemetry::{LogFormat, TelemetrySettings};

/// A configuration problem: the key (dotted path) and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value failed validation.
    #[error("config error: `{key}`: {problem}")]
    Invalid {
        /// Dotted key, e.g. `integrations.httpbin.base_url`.
        key: String,
        /// What is wrong, in one sentence.
        problem: String,
    },
    /// The layered sources could not be read or did not match the schema
    /// (unknown key, wrong type, unreadable file).
    #[error("config error: {0}")]
    Load(String),
}

fn invalid(key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        problem: problem.into(),
    }
}

/// All settings. Each section mirrors a table of `config/default.toml`, where
/// every key is documented with its unit and default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// HTTP server.
    pub server: ServerSettings,
    /// Postgres pools.
    pub database: DatabaseSettings,
    /// JWT authentication.
    pub auth: AuthSettings,
    /// Callback URL policy.
    pub security: SecuritySettings,
    /// Command intake.
    pub commands: CommandSettings,
    /// Outbox dispatcher.
    pub dispatcher: DispatcherSettings,
    /// Webhook delivery.
    pub delivery: DeliverySettings,
    /// Logging.
    pub telemetry: TelemetrySettings,
    /// Scheduled housekeeping.
    pub maintenance: MaintenanceSettings,
    /// How long finished commands and dead letters are kept.
    pub retention: RetentionSettings,
    /// Bounded queues: when `POST /v1/commands` refuses new work.
    pub admission: AdmissionSettings,
    /// Process-wide resilience settings.
    pub resilience: ResilienceSettings,
    /// The event log's push stream (SSE).
    pub events: EventSettings,
    /// API rate limits (per client IP, per authenticated client).
    pub limits: LimitSettings,
    /// The read side: status-document cache, read-your-writes, batch queries.
    pub query: QuerySideSettings,
    /// The shared cache backend (Redis) for several API instances.
    pub cache: CacheSettings,
    /// Third-party APIs by name (`[integrations.NAME]`).
    #[serde(default)]
    pub integrations: BTreeMap<String, IntegrationSettings>,
    /// Fingerprint of the fields the parsed values were built from, set by
    /// [`Settings::validate`]; see [`Settings::parsed`].
    #[serde(skip)]
    parsed_from: Option<u64>,
}

impl Settings {
    /// Checks every value, section by section, and resolves credentials from
    /// the environment.
    ///
    /// # Errors
    /// The first invalid key, with the problem.
    pub fn validate(mut self) -> Result<Settings, ConfigError> {
        self.server.check()?;
        self.limits.check()?;
        self.commands.check()?;
        self.database.check()?;
        self.auth.check()?;
        self.security.check()?;
        self.dispatcher.check()?;
        self.delivery.check()?;
        self.check_max_claims()?;
        self.maintenance.check()?;
        self.retention.check()?;
        self.admission.check()?;
        self.resilience.check()?;
        self.query.check()?;
        self.cache.check()?;
        self.events.check()?;
        self.check_integrations()?;
        self.parsed_from = Some(self.source_fingerprint());
        Ok(self)
    }

    /// These settings with their parsed values current: as they are when
    /// [`Settings::validate`] built those values from the fields they have
    /// now, otherwise validated again. A caller may change a field of loaded
    /// settings (a test rotating a key) and still get values that match,
    /// while the settings `main` loaded are not parsed a second time.
    ///
    /// # Errors
    /// As [`Settings::validate`].
    pub fn parsed(self) -> Result<Settings, ConfigError> {
        if self.parsed_from == Some(self.source_fingerprint()) {
            Ok(self)
        } else {
            self.validate()
        }
    }

    /// A hash of the fields that [`Settings::validate`] builds values from
    /// (callback policy, key rings, JWT keys, cron schedules). Kept only in
    /// memory, never logged.
    fn source_fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};

        use secrecy::ExposeSecret;

        let mut h = std::collections::hash_map::DefaultHasher::new();
        let security = &self.security;
        security.allow_private_callbacks.hash(&mut h);
        security.https_only_callbacks.hash(&mut h);
        security.allowed_callback_cidrs.hash(&mut h);
        for keys in [
            &security.signing_key_encryption_keys,
            &security.job_mac_keys,
        ] {
            keys.len().hash(&mut h);
            for key in keys {
                key.expose_secret().hash(&mut h);
            }
        }
        let auth = &self.auth;
        auth.jwt_secret.expose_secret().hash(&mut h);
        auth.algorithm.hash(&mut h);
        auth.public_key_file.hash(&mut h);
        auth.private_key_file.hash(&mut h);
        let maintenance = &self.maintenance;
        for cron in [
            &maintenance.purge_attempt_bodies_cron,
            &maintenance.expire_idempotency_keys_cron,
            &maintenance.retire_signing_secrets_cron,
            &maintenance.purge_token_jtis_cron,
            &maintenance.purge_events_cron,
            &self.retention.purge_cron,
        ] {
            cron.hash(&mut h);
        }
        h.finish()
    }

    /// `dispatcher.max_claims` must leave room for every attempt an
    /// integration or the delivery schedule may make.
    fn check_max_claims(&self) -> Result<(), ConfigError> {
        let schedule_attempts =
            u32::try_from(self.delivery.retry_schedule_s.len()).unwrap_or(u32::MAX);
        let most_attempts = self
            .integrations
            .values()
            .map(|i| i.max_attempts)
            .chain(std::iter::once(schedule_attempts.saturating_add(1)))
            .max()
            .unwrap_or(1);
        if self.dispatcher.max_claims <= most_attempts.saturating_add(1) {
            return Err(invalid(
                "dispatcher.max_claims",
                format!("must exceed every integration's max_attempts and the delivery schedule's attempts ({most_attempts}) by at least 2"),
            ));
        }
        Ok(())
    }

    /// Shutdown grace for in-flight jobs.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.dispatcher.shutdown_grace_s)
    }

    /// Warnings for a worker to log at start: one per call timeout
    /// (`integrations.NAME.timeout_ms`, `delivery.timeout_ms`) longer than
    /// `dispatcher.shutdown_grace_s`, naming both keys. Such a call can still
    /// be running when a shutdown aborts it; its job is then held back for
    /// that timeout before another worker may repeat it, so a rolling restart
    /// delays those commands (or callbacks) by up to the timeout.
    pub fn shutdown_warnings(&self) -> Vec<String> {
        let grace_ms = self.dispatcher.shutdown_grace_s.saturating_mul(1000);
        let grace = self.dispatcher.shutdown_grace_s;
        let warn = |key: String, timeout_ms: u64| {
            format!(
                "{key} ({timeout_ms} ms) exceeds dispatcher.shutdown_grace_s ({grace} s): a call \
                 still running at shutdown is aborted, and its job waits {timeout_ms} ms (the \
                 timeout) before another worker repeats it. Raise dispatcher.shutdown_grace_s \
                 or lower {key} so calls can finish during a shutdown"
            )
        };
        let mut warnings: Vec<String> = self
            .integrations
            .iter()
            .filter(|(_, i)| i.timeout_ms > grace_ms)
            .map(|(name, i)| warn(format!("integrations.{name}.timeout_ms"), i.timeout_ms))
            .collect();
        if self.delivery.timeout_ms > grace_ms {
            warnings.push(warn("delivery.timeout_ms".into(), self.delivery.timeout_ms));
        }
        warnings
    }
}
