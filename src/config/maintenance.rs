//! `[maintenance]`: cron schedules of the housekeeping runs, and retention.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{invalid, ConfigError};

/// `[maintenance]`: cron schedules (UTC, with a seconds field) and retention.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceSettings {
    /// When to drop old attempt response bodies.
    pub purge_attempt_bodies_cron: String,
    /// When to forget old idempotency keys.
    pub expire_idempotency_keys_cron: String,
    /// When to delete signing secrets past their rotation grace.
    pub retire_signing_secrets_cron: String,
    /// When to forget recorded token `jti`s whose token has expired.
    pub purge_token_jtis_cron: String,
    /// Attempt response bodies are kept this long, seconds.
    pub attempt_body_retention_s: u64,
    /// Idempotency keys are honoured this long after the command, seconds.
    pub idempotency_key_ttl_s: u64,
    /// Lease of a running maintenance run, seconds.
    pub run_lease_s: u64,
    /// When to delete events older than `event_retention_s` from the event log.
    pub purge_events_cron: String,
    /// Events (`command_events`) are kept this long, seconds; a stream resumed
    /// with an older `Last-Event-ID` continues from the oldest event kept.
    pub event_retention_s: u64,
    /// The five `*_cron` expressions, parsed once by
    /// [`super::Settings::validate`], by key name (`purge_events_cron`, ...);
    /// see [`MaintenanceSettings::schedule`].
    #[serde(skip)]
    pub schedules: BTreeMap<&'static str, cron::Schedule>,
}

impl MaintenanceSettings {
    /// The parsed schedule of the `*_cron` key `name` (e.g.
    /// `"purge_events_cron"`); `None` before validation or for another name.
    pub fn schedule(&self, name: &str) -> Option<&cron::Schedule> {
        self.schedules.get(name)
    }

    /// Parses every schedule (once) and checks the lease and the event retention.
    pub(super) fn check(&mut self) -> Result<(), ConfigError> {
        let expressions = [
            ("purge_attempt_bodies_cron", &self.purge_attempt_bodies_cron),
            (
                "expire_idempotency_keys_cron",
                &self.expire_idempotency_keys_cron,
            ),
            (
                "retire_signing_secrets_cron",
                &self.retire_signing_secrets_cron,
            ),
            ("purge_token_jtis_cron", &self.purge_token_jtis_cron),
            ("purge_events_cron", &self.purge_events_cron),
        ];
        let mut schedules = BTreeMap::new();
        for (name, expr) in expressions {
            let schedule = crate::domain::parse_cron(expr).map_err(|e| {
                invalid(
                    format!("maintenance.{name}"),
                    format!("is not a cron expression ({e})"),
                )
            })?;
            schedules.insert(name, schedule);
        }
        self.schedules = schedules;
        if self.run_lease_s == 0 {
            return Err(invalid("maintenance.run_lease_s", "must be at least 1"));
        }
        if self.event_retention_s < 3600 {
            return Err(invalid(
                "maintenance.event_retention_s",
                "must be at least 3600 seconds (a shorter log breaks ordinary reconnects)",
            ));
        }
        Ok(())
    }
}
