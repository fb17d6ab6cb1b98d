//! `[events]`: the event tailer and the SSE streams it feeds.

use serde::Deserialize;

use super::{invalid, ConfigError};

/// `[events]`: the per-process event tailer and the SSE streams it feeds
/// (`GET /v1/events`, `GET /v1/commands/{id}/events`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventSettings {
    /// Safety-net poll of the event log, ms; `NOTIFY hookrelay_events` wakes
    /// the tailer at once, the poll covers lost notifications and a read
    /// replica that lags behind the primary.
    pub poll_interval_ms: u64,
    /// A comment line is sent on an idle stream this often, seconds, so
    /// proxies keep the connection and a gone client is noticed.
    pub keep_alive_s: u64,
    /// The `retry:` hint sent at the start of each stream, ms: how long an
    /// `EventSource` waits before reconnecting.
    pub retry_ms: u64,
    /// Open SSE streams allowed per API process; beyond it 503.
    pub max_streams: usize,
}

impl EventSettings {
    /// Checks the poll, keep-alive and retry intervals and the stream cap.
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        if !(10..=60_000).contains(&self.poll_interval_ms) {
            return Err(invalid(
                "events.poll_interval_ms",
                "must be between 10 and 60000 ms",
            ));
        }
        if !(1..=300).contains(&self.keep_alive_s) {
            return Err(invalid(
                "events.keep_alive_s",
                "must be between 1 and 300 seconds",
            ));
        }
        if !(100..=3_600_000).contains(&self.retry_ms) {
            return Err(invalid(
                "events.retry_ms",
                "must be between 100 and 3600000 ms",
            ));
        }
        if self.max_streams == 0 {
            return Err(invalid("events.max_streams", "must be at least 1"));
        }
        Ok(())
    }
}
