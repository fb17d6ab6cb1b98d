//! `[retention]`: how long finished commands and dead letters are kept.
//!
//! The `purge_finished` maintenance task (`src/maintenance/retention.rs`)
//! deletes them, with their deliveries, attempts and events, in batches.

use serde::Deserialize;

use super::{invalid, ConfigError};

/// `[retention]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSettings {
    /// Finished commands (final status, callback delivered or none) are kept
    /// this many days after they finished; 0 = kept forever.
    pub finished_days: u32,
    /// Commands whose callback was dead-lettered are kept this many days
    /// after the dead-lettering (a replay makes them live again); 0 = kept
    /// forever.
    pub dead_letter_days: u32,
    /// When to delete them (cron, UTC, with a seconds field).
    pub purge_cron: String,
    /// `purge_cron`, parsed once at load ([`RetentionSettings::schedule`]).
    #[serde(skip)]
    schedule: Option<cron::Schedule>,
}

impl RetentionSettings {
    /// The parsed `purge_cron`; `None` before validation.
    pub fn schedule(&self) -> Option<&cron::Schedule> {
        self.schedule.as_ref()
    }

    /// Parses the schedule (once) and checks the values.
    ///
    /// # Errors
    /// The first invalid key.
    pub(super) fn check(&mut self) -> Result<(), ConfigError> {
        self.schedule = Some(crate::domain::parse_cron(&self.purge_cron).map_err(|e| {
            invalid(
                "retention.purge_cron",
                format!("is not a cron expression ({e})"),
            )
        })?);
        for (key, days) in [
            ("retention.finished_days", self.finished_days),
            ("retention.dead_letter_days", self.dead_letter_days),
        ] {
            if days > 36_500 {
                return Err(invalid(
                    key,
                    "must be at most 36500 days (0 = keep forever)",
                ));
            }
        }
        Ok(())
    }
}
