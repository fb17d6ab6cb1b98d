//! `[limits]`: API rate limits per client IP, per client and for rotations.

use serde::Deserialize;

use super::{invalid, ConfigError};

/// `[limits]`: API rate limits, GCRA (the `governor` crate). A request over
/// a limit answers 429 (`application/problem+json`) with `Retry-After` in
/// whole seconds. `/healthz`, `/readyz` and `/metrics` are exempt.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    /// Sustained requests per second per client IP address (the TCP peer;
    /// `X-Forwarded-For` is not trusted), checked before authentication. 0 = off.
    pub per_ip_per_s: u32,
    /// Requests per IP address allowed at once above the rate (at least 1 when on).
    pub per_ip_burst: u32,
    /// Sustained requests per second per authenticated client (JWT `sub`). 0 = off.
    pub per_client_per_s: u32,
    /// Requests per client allowed at once above the rate (at least 1 when on).
    pub per_client_burst: u32,
    /// Sustained `POST /v1/signing-secret/rotate` calls per hour per client
    /// (JWT `sub`), per process. 0 = off.
    pub rotations_per_hour: u32,
    /// Rotations per client allowed at once above that rate (at least 1 when
    /// on; 2 or more lets a client revoke a leaked secret by rotating twice).
    pub rotation_burst: u32,
}

impl LimitSettings {
    /// Every limit that is on needs a burst of at least 1.
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        for (key, rate, burst) in [
            ("limits.per_ip_burst", self.per_ip_per_s, self.per_ip_burst),
            (
                "limits.per_client_burst",
                self.per_client_per_s,
                self.per_client_burst,
            ),
            (
                "limits.rotation_burst",
                self.rotations_per_hour,
                self.rotation_burst,
            ),
        ] {
            if rate > 0 && burst == 0 {
                return Err(invalid(key, "must be at least 1 when its rate is on"));
            }
        }
        Ok(())
    }
}
