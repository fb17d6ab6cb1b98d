//! `[admission]`: bounded queues for `POST /v1/commands`.
//!
//! When the sampled ready backlog or outbox lag passes its bound, new
//! commands are answered 503 (`urn:hookrelay:problem:overloaded`) instead of
//! being accepted (see `src/command/admission.rs` and `docs/reference.md`).

use serde::Deserialize;

use super::{invalid, ConfigError};

/// `[admission]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdmissionSettings {
    /// Most ready outbox jobs (`run_at <= now()`, not leased) before new
    /// commands are refused; 0 = no bound.
    pub max_ready_backlog: u64,
    /// Largest age of the oldest ready job, ms, before new commands are
    /// refused; 0 = no bound.
    pub max_outbox_lag_ms: u64,
    /// How often each API process samples the backlog and the lag, ms
    /// (50–10000).
    pub sample_interval_ms: u64,
    /// `Retry-After` of a refused command, seconds (1–3600).
    pub retry_after_s: u64,
}

impl AdmissionSettings {
    /// Whether any bound is configured (otherwise nothing is sampled).
    pub fn enabled(&self) -> bool {
        self.max_ready_backlog > 0 || self.max_outbox_lag_ms > 0
    }

    /// Checks the values.
    ///
    /// # Errors
    /// The first invalid key.
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        if !(50..=10_000).contains(&self.sample_interval_ms) {
            return Err(invalid(
                "admission.sample_interval_ms",
                "must be between 50 and 10000 ms",
            ));
        }
        if !(1..=3600).contains(&self.retry_after_s) {
            return Err(invalid(
                "admission.retry_after_s",
                "must be between 1 and 3600 seconds",
            ));
        }
        if self.max_ready_backlog > 10_000_000 {
            return Err(invalid(
                "admission.max_ready_backlog",
                "must be at most 10000000 (0 = no bound)",
            ));
        }
        Ok(())
    }
}
