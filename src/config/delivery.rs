//! `[delivery]`: webhook delivery (retry schedule, timeouts, per-host limit,
//! signing-secret rotation grace).

use serde::Deserialize;

use super::{invalid, ConfigError};

/// `[delivery]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliverySettings {
    /// Delays between attempts, seconds (fractions allowed).
    pub retry_schedule_s: Vec<f64>,
    /// Jitter fraction applied to each delay (0.2 = ±20%).
    pub jitter: f64,
    /// One attempt's timeout, ms.
    pub timeout_ms: u64,
    /// Cap on a receiver's `Retry-After`, seconds.
    pub max_retry_after_s: u64,
    /// Response body bytes kept per attempt.
    pub response_body_limit_bytes: usize,
    /// `User-Agent` header on callbacks.
    pub user_agent: String,
    /// Concurrent callback attempts per receiver `host:port`.
    pub max_in_flight_per_host: usize,
    /// After `POST /v1/signing-secret/rotate`, how long the previous secret
    /// keeps signing alongside the new one, seconds (default 86400 = 24 h;
    /// 0 = it stops at once; at most [`MAX_SECRET_ROTATION_GRACE_S`]).
    pub secret_rotation_grace_s: u64,
}

/// Upper bound of `delivery.secret_rotation_grace_s`: 30 days. A rotated-out
/// secret (perhaps leaked) should not keep signing for longer than receivers
/// plausibly need to switch.
pub const MAX_SECRET_ROTATION_GRACE_S: u64 = 30 * 24 * 3600;

/// Longest delay a retry schedule entry or `delivery.max_retry_after_s` may
/// give, seconds (30 days): beyond it a delay overflows the arithmetic
/// (`Duration`, Postgres intervals) after the attempt was sent, so the
/// outcome could never be recorded and the webhook would go out again.
pub const MAX_RETRY_DELAY_S: u64 = 30 * 24 * 3600;

impl DeliverySettings {
    /// Checks the schedule, the caps and the per-host limit.
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        if let Some(bad) = self
            .retry_schedule_s
            .iter()
            .find(|d| !d.is_finite() || **d < 0.0 || **d > MAX_RETRY_DELAY_S as f64)
        {
            return Err(invalid(
                "delivery.retry_schedule_s",
                format!("delays must be 0 to {MAX_RETRY_DELAY_S} seconds (30 days), got {bad}"),
            ));
        }
        if self.max_retry_after_s > MAX_RETRY_DELAY_S {
            return Err(invalid(
                "delivery.max_retry_after_s",
                format!("must be at most {MAX_RETRY_DELAY_S} seconds (30 days)"),
            ));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(invalid("delivery.jitter", "must be between 0 and 1"));
        }
        if self.timeout_ms == 0 {
            return Err(invalid("delivery.timeout_ms", "must be at least 1"));
        }
        if self.secret_rotation_grace_s > MAX_SECRET_ROTATION_GRACE_S {
            return Err(invalid(
                "delivery.secret_rotation_grace_s",
                format!("must be at most {MAX_SECRET_ROTATION_GRACE_S} seconds (30 days)"),
            ));
        }
        if self.max_in_flight_per_host == 0 {
            return Err(invalid(
                "delivery.max_in_flight_per_host",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}
