//! `[resilience]`: the process-wide retry budget shared by every integration.

use serde::Deserialize;

use super::{invalid, ConfigError};

/// `[resilience]`: settings shared by every integration's policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResilienceSettings {
    /// Retries allowed per upstream call made (0.2 = at most 20% of calls are retries).
    pub retry_budget_ratio: f64,
    /// Retries per second always allowed, however few calls were made.
    pub retry_budget_min_per_s: f64,
}

impl ResilienceSettings {
    /// Checks the budget's bounds.
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        if !(0.0..=10.0).contains(&self.retry_budget_ratio) {
            return Err(invalid(
                "resilience.retry_budget_ratio",
                "must be between 0 and 10",
            ));
        }
        if !(0.0..=1e6).contains(&self.retry_budget_min_per_s) {
            return Err(invalid(
                "resilience.retry_budget_min_per_s",
                "must be between 0 and 1e6",
            ));
        }
        Ok(())
    }
}
