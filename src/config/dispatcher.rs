//! `[dispatcher]`: the outbox worker (concurrency, claims, leases, drain).

use serde::Deserialize;

use super::{invalid, ConfigError};

/// `[dispatcher]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DispatcherSettings {
    /// Jobs in flight per worker process.
    pub concurrency: usize,
    /// Most jobs per claim statement.
    pub claim_batch: usize,
    /// Lease length, seconds.
    pub lease_s: u64,
    /// Safety-net poll, ms.
    pub poll_interval_ms: u64,
    /// Shutdown grace for in-flight jobs, seconds.
    pub shutdown_grace_s: u64,
    /// A job claimed this many times without a recorded outcome is given up
    /// (command `failed`, delivery dead-lettered `abandoned`): a poison-job cap.
    pub max_claims: u32,
}

impl DispatcherSettings {
    /// Checks concurrency, claim size, poll and lease. `dispatcher.max_claims`
    /// depends on other sections and is checked by [`super::Settings::validate`].
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        if self.concurrency == 0 {
            return Err(invalid("dispatcher.concurrency", "must be at least 1"));
        }
        if self.claim_batch == 0 {
            return Err(invalid("dispatcher.claim_batch", "must be at least 1"));
        }
        if self.poll_interval_ms == 0 {
            return Err(invalid("dispatcher.poll_interval_ms", "must be at least 1"));
        }
        if self.lease_s < 3 {
            return Err(invalid(
                "dispatcher.lease_s",
                "must be at least 3 seconds (leases are renewed every third)",
            ));
        }
        Ok(())
    }
}
