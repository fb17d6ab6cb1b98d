//! The throttle of one integration, checked after the breaker in this order:
//! the **vendor pause** (adaptive throttling from the vendor's rate-limit
//! headers, [`VendorLimit`]), the **rate limit** (GCRA via `governor`:
//! `throttle.rate_per_s`, `burst`) and the **in-flight limit** (a semaphore
//! of `throttle.max_in_flight` calls). Waits up to [`SHORT_WAIT`] are slept
//! here; longer ones are refused with their delay. The header rules are in
//! the parent module's docs.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::SHORT_WAIT;
use crate::config::ThrottleSettings;

/// Below this many remaining requests, calls are paced until the vendor's reset.
pub const LOW_WATER: u64 = 5;

/// What the vendor's headers said about its rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct VendorLimit {
    /// Requests left in the current window.
    pub remaining: Option<u64>,
    /// Time until the window resets.
    pub reset: Option<Duration>,
    /// `Retry-After` of a 429/503.
    pub retry_after: Option<Duration>,
}

impl VendorLimit {
    /// Reads the rate-limit headers of a response (see the module docs).
    pub fn from_headers(status: u16, headers: &reqwest::header::HeaderMap) -> Option<VendorLimit> {
        let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let mut limit = VendorLimit::default();
        if matches!(status, 429 | 503) {
            limit.retry_after = get("retry-after")
                .and_then(|v| crate::http::body::parse_retry_after(v, chrono::Utc::now()));
        }
        limit.remaining = get("x-ratelimit-remaining").and_then(|v| v.trim().parse().ok());
        limit.reset = get("x-ratelimit-reset").and_then(|v| parse_reset(v.trim()));
        if let Some(ietf) = get("ratelimit") {
            for part in ietf.split([',', ';']) {
                let Some((k, v)) = part.trim().split_once('=') else {
                    continue;
                };
                match k.trim() {
                    "remaining" | "r" => {
                        limit.remaining = v.trim().parse().ok().or(limit.remaining)
                    }
                    "reset" | "t" => limit.reset = parse_reset(v.trim()).or(limit.reset),
                    _ => {}
                }
            }
        }
        (limit != VendorLimit::default()).then_some(limit)
    }

    /// How long the next call should wait, if at all.
    pub fn pause(&self) -> Option<Duration> {
        let paced = match (self.remaining, self.reset) {
            (Some(0), Some(reset)) => Some(reset),
            (Some(n), Some(reset)) if n < LOW_WATER => {
                Some(reset / u32::try_from(n + 1).unwrap_or(1))
            }
            _ => None,
        };
        match (paced, self.retry_after) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }
}

/// `X-RateLimit-Reset`: seconds from now, or a Unix time (seconds) when > 10⁹.
fn parse_reset(v: &str) -> Option<Duration> {
    let n: f64 = v.parse().ok()?;
    if !n.is_finite() || n < 0.0 {
        return None;
    }
    // `try_from`: a huge value (`1e300`) must not panic the caller.
    if n > 1e9 {
        let now = chrono::Utc::now().timestamp() as f64;
        return Duration::try_from_secs_f64((n - now).max(0.0)).ok();
    }
    Duration::try_from_secs_f64(n).ok()
}

/// The throttle of one integration (per process).
pub(super) struct Throttle {
    settings: ThrottleSettings,
    limiter: Option<RateLimiter<NotKeyed, InMemoryState, DefaultClock>>,
    in_flight: Option<Arc<Semaphore>>,
    paused_until: Mutex<Option<Instant>>,
}

impl Throttle {
    /// A throttle without a pause for `settings`.
    pub(super) fn new(settings: ThrottleSettings) -> Self {
        let limiter = NonZeroU32::new(settings.rate_per_s).map(|rate| {
            let burst = NonZeroU32::new(settings.burst).unwrap_or(NonZeroU32::MIN);
            RateLimiter::direct(Quota::per_second(rate).allow_burst(burst))
        });
        let in_flight =
            (settings.max_in_flight > 0).then(|| Arc::new(Semaphore::new(settings.max_in_flight)));
        Throttle {
            settings,
            limiter,
            in_flight,
            paused_until: Mutex::new(None),
        }
    }

    /// Vendor pause, then rate limit, then in-flight limit (see the module
    /// docs): `Ok` with the in-flight slot (if a limit is configured) to go,
    /// `Err((delay, reason))` to try again after `delay` (`reason`: `vendor`,
    /// `rate`, `in_flight`).
    pub(super) async fn admit(
        &self,
    ) -> Result<Option<OwnedSemaphorePermit>, (Duration, &'static str)> {
        // Vendor pause.
        if let Some(wait) = self.vendor_pause(Instant::now()) {
            if wait > SHORT_WAIT {
                return Err((wait, "vendor"));
            }
            tokio::time::sleep(wait).await;
        }
        // Rate limit (GCRA).
        if let Some(limiter) = &self.limiter {
            loop {
                match limiter.check() {
                    Ok(()) => break,
                    Err(not_until) => {
                        let wait = not_until.wait_time_from(DefaultClock::default().now());
                        if wait > SHORT_WAIT {
                            return Err((wait, "rate"));
                        }
                        tokio::time::sleep(wait).await;
                    }
                }
            }
        }
        // In-flight limit.
        match &self.in_flight {
            None => Ok(None),
            Some(sem) => {
                match tokio::time::timeout(SHORT_WAIT, sem.clone().acquire_owned()).await {
                    Ok(Ok(permit)) => Ok(Some(permit)),
                    _ => Err((SHORT_WAIT * 2, "in_flight")),
                }
            }
        }
    }

    /// Adaptive throttling (`throttle.adaptive`): pauses calls for as long as
    /// the vendor's headers ask, capped at `throttle.max_pause_s`; a pause
    /// only ever grows. `integration` names it in the log line.
    pub(super) fn observe(&self, integration: &str, vendor: Option<VendorLimit>) {
        if !self.settings.adaptive {
            return;
        }
        if let Some(wait) = vendor.and_then(|v| v.pause()) {
            let wait = wait.min(Duration::from_secs(self.settings.max_pause_s));
            if let (Ok(mut p), Some(until)) =
                (self.paused_until.lock(), Instant::now().checked_add(wait))
            {
                if p.is_none_or(|cur| cur < until) {
                    *p = Some(until);
                }
            }
            tracing::debug!(target: "hookrelay::command", integration = %integration, wait_ms = wait.as_millis() as u64, "vendor rate limit: pausing calls");
        }
    }

    /// Time left of the vendor pause at `now`, if any.
    pub(super) fn vendor_pause(&self, now: Instant) -> Option<Duration> {
        self.paused_until
            .lock()
            .ok()
            .and_then(|p| *p)
            .and_then(|until| until.checked_duration_since(now))
    }

    /// Configured requests per second (0 = none).
    pub(super) fn rate_per_s(&self) -> u32 {
        self.settings.rate_per_s
    }

    /// Calls in flight now, when a limit is configured.
    pub(super) fn in_flight(&self) -> Option<usize> {
        self.in_flight
            .as_ref()
            .map(|s| self.settings.max_in_flight - s.available_permits())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vendor_headers_are_read() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("x-ratelimit-remaining", "0".parse().expect("hv"));
        h.insert("x-ratelimit-reset", "2".parse().expect("hv"));
        let v = VendorLimit::from_headers(200, &h).expect("limit");
        assert_eq!(v.pause(), Some(Duration::from_secs(2)));

        let mut h = reqwest::header::HeaderMap::new();
        h.insert(
            "ratelimit",
            "limit=100, remaining=1, reset=10".parse().expect("hv"),
        );
        let v = VendorLimit::from_headers(200, &h).expect("limit");
        assert_eq!(
            v.pause(),
            Some(Duration::from_secs(5)),
            "paced: 10 s over the 2 calls left"
        );

        let mut h = reqwest::header::HeaderMap::new();
        h.insert("retry-after", "3".parse().expect("hv"));
        assert_eq!(
            VendorLimit::from_headers(429, &h).and_then(|v| v.pause()),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            VendorLimit::from_headers(500, &h),
            None,
            "Retry-After only on 429/503"
        );
        // Too large for 64 bits: the longest wait (then `max_pause_s`), not
        // "no Retry-After".
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("retry-after", "99999999999999999999".parse().expect("hv"));
        assert_eq!(
            VendorLimit::from_headers(503, &h).and_then(|v| v.pause()),
            Some(Duration::MAX)
        );

        let mut h = reqwest::header::HeaderMap::new();
        h.insert("x-ratelimit-remaining", "500".parse().expect("hv"));
        assert_eq!(
            VendorLimit::from_headers(200, &h).and_then(|v| v.pause()),
            None
        );
    }
}
