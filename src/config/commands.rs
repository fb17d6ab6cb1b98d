//! `[commands]`: command intake (size limits, group commit, `Retry-After`).

use serde::Deserialize;

use super::{invalid, ConfigError};

/// `[commands]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandSettings {
    /// Longest callback URL, bytes.
    pub max_callback_url_len: usize,
    /// Most entries in a command's `params` object (422 naming `params` beyond).
    pub max_params: usize,
    /// Largest serialised `params` object (compact JSON), bytes (422 naming `params` beyond).
    pub max_params_bytes: usize,
    /// Most rows per intake transaction.
    pub intake_batch_max: usize,
    /// Extra wait for a fuller intake batch, ms (0 = none).
    pub intake_batch_window_ms: u64,
    /// Concurrent intake writer tasks.
    pub intake_writers: usize,
    /// `Retry-After` on 202 and status documents, seconds.
    pub retry_after_s: u64,
    /// `POST /v1/commands` without an `Idempotency-Key` header answers 400.
    pub require_idempotency_key: bool,
}

impl CommandSettings {
    /// Checks the size limits and the intake writers.
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        if self.max_callback_url_len < 16 {
            return Err(invalid(
                "commands.max_callback_url_len",
                "must be at least 16",
            ));
        }
        if self.max_params_bytes < 2 {
            return Err(invalid("commands.max_params_bytes", "must be at least 2"));
        }
        if self.intake_batch_max == 0 || self.intake_batch_max > 1000 {
            return Err(invalid("commands.intake_batch_max", "must be 1..=1000"));
        }
        if self.intake_writers == 0 {
            return Err(invalid("commands.intake_writers", "must be at least 1"));
        }
        Ok(())
    }
}
