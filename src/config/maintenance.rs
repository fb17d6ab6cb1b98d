//! `[maintenance]`: cron schedules of the housekeeping runs, and retention.

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
}

impl MaintenanceSettings {
    /// Parses every schedule and checks the lease and the event retention.
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        for (key, expr) in [
            (
                "maintenance.purge_attempt_bodies_cron",
                &self.purge_attempt_bodies_cron,
            ),
            (
                "maintenance.expire_idempotency_keys_cron",
                &self.expire_idempotency_keys_cron,
            ),
            (
                "maintenance.retire_signing_secrets_cron",
                &self.retire_signing_secrets_cron,
            ),
            (
                "maintenance.purge_token_jtis_cron",
                &self.purge_token_jtis_cron,
            ),
            ("maintenance.purge_events_cron", &self.purge_events_cron),
        ] {
            crate::domain::parse_cron(expr)
                .map_err(|e| invalid(key, format!("is not a cron expression ({e})")))?;
        }
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
