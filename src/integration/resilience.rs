//! The resilience policy for upstream calls: throttle, circuit breaker and
//! retry budget, composed per integration.
//!
//! Before a call, [`Policy::admit`] decides in this order:
//! 1. **circuit breaker** — closed: go; open: refuse until the cool-down ends
//!    (the command waits without spending an attempt, or its fallback answers);
//!    half-open: let `half_open_probes` probe calls through at a time;
//! 2. **vendor pause** (adaptive throttling) — the vendor's own rate-limit
//!    headers said to wait;
//! 3. **rate limit** — GCRA via `governor` (`throttle.rate_per_s`, `burst`);
//! 4. **in-flight limit** — a semaphore of `throttle.max_in_flight` calls.
//!
//! Short waits (≤ [`SHORT_WAIT`]) are slept inside the job; longer ones come
//! back as [`Admission::Wait`] so the dispatcher reschedules the job in the
//! outbox (no attempt spent) instead of holding a slot.
//!
//! After a call, [`Policy::record`] feeds the breaker's sliding window (a
//! retryable failure — 5xx, 408, timeout, connection error — counts as a
//! failure; 429 is throttling and 4xx is the caller's problem, neither trips
//! the breaker) and the vendor's headers into the adaptive throttle.
//!
//! **Adaptive throttling** reads `Retry-After` (on 429/503), `X-RateLimit-Remaining`
//! with `X-RateLimit-Reset` (seconds from now, or a Unix time when larger than
//! 10⁹), and the IETF draft `RateLimit` header (`remaining=`/`r=` and
//! `reset=`/`t=`). With nothing remaining, calls pause until the reset; with
//! fewer than [`LOW_WATER`] remaining, calls are paced to spread what is left
//! evenly over the time to the reset, so the vendor's limit is not hit. A pause
//! is capped at `throttle.max_pause_s` (default 1 h): a reset time sent in
//! milliseconds reads as a Unix time millennia away, and a deferred job's
//! `run_at` is durable, so an uncapped pause would outlive a restart.
//!
//! State is per process (a deployment with N worker processes lets each run at
//! the configured rate; divide accordingly). Sharing it through Redis is future
//! work.

use std::collections::{HashMap, VecDeque};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::{BreakerSettings, IntegrationSettings, ThrottleSettings};

/// Waits up to this long are slept in the job; longer ones reschedule it.
pub const SHORT_WAIT: Duration = Duration::from_millis(250);

/// Below this many remaining requests, calls are paced until the vendor's reset.
pub const LOW_WATER: u64 = 5;

/// Breaker state, as shown in diagnostics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls flow.
    Closed,
    /// Calls are refused until the cool-down ends.
    Open,
    /// A few probe calls decide between closed and open.
    HalfOpen,
}

impl BreakerState {
    /// `closed`, `open` or `half_open`.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// The answer of [`Policy::admit`].
#[derive(Debug)]
pub enum Admission {
    /// Call now; keep the ticket until the call ended and pass it to
    /// [`Policy::record`].
    Go(Ticket),
    /// Not now: try again after `delay` (`reason`: `rate`, `in_flight`, `vendor`).
    Wait {
        /// How long to wait.
        delay: Duration,
        /// Why.
        reason: &'static str,
    },
    /// The breaker is open for `remaining` more.
    Open {
        /// Time left of the cool-down.
        remaining: Duration,
    },
}

/// Proof of admission: the in-flight slot and, for a half-open probe, the
/// breaker whose probe it holds. Pass it to [`Policy::record`] when the call
/// ends; a ticket dropped unrecorded (its task was cancelled: a lost lease,
/// a client gone) gives its probe back, so half-open can never run out of
/// probes for calls that will never report.
#[derive(Debug)]
pub struct Ticket {
    _slot: Option<OwnedSemaphorePermit>,
    probe: Option<Arc<Mutex<Breaker>>>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(breaker) = self.probe.take() {
            release_probe(&breaker);
        }
    }
}

/// Gives back a half-open probe whose call never reports an outcome.
fn release_probe(breaker: &Mutex<Breaker>) {
    if let Ok(mut b) = breaker.lock() {
        b.record(Instant::now(), true, None, &mut Vec::new());
    }
}

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

#[derive(Debug)]
struct Breaker {
    settings: BreakerSettings,
    state: BreakerState,
    /// (when, failed) of recent calls, oldest first.
    window: VecDeque<(Instant, bool)>,
    open_until: Instant,
    probes_in_flight: usize,
    probe_successes: usize,
}

/// A breaker state change, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// Before.
    pub from: BreakerState,
    /// After.
    pub to: BreakerState,
}

impl Breaker {
    fn new(settings: BreakerSettings) -> Self {
        Breaker {
            settings,
            state: BreakerState::Closed,
            window: VecDeque::new(),
            open_until: Instant::now(),
            probes_in_flight: 0,
            probe_successes: 0,
        }
    }

    fn set(&mut self, to: BreakerState, changes: &mut Vec<Transition>) {
        if self.state != to {
            changes.push(Transition {
                from: self.state,
                to,
            });
            self.state = to;
        }
    }

    /// `Ok(probe)` to go, `Err(remaining)` while open or out of probes.
    fn admit(&mut self, now: Instant, changes: &mut Vec<Transition>) -> Result<bool, Duration> {
        if !self.settings.enabled {
            return Ok(false);
        }
        if self.state == BreakerState::Open {
            if now < self.open_until {
                return Err(self.open_until - now);
            }
            self.set(BreakerState::HalfOpen, changes);
            self.probes_in_flight = 0;
            self.probe_successes = 0;
        }
        if self.state == BreakerState::HalfOpen {
            if self.probes_in_flight >= self.settings.half_open_probes {
                return Err(SHORT_WAIT);
            }
            self.probes_in_flight += 1;
            return Ok(true);
        }
        Ok(false)
    }

    fn record(
        &mut self,
        now: Instant,
        probe: bool,
        failed: Option<bool>,
        changes: &mut Vec<Transition>,
    ) {
        if !self.settings.enabled {
            return;
        }
        if probe {
            self.probes_in_flight = self.probes_in_flight.saturating_sub(1);
        }
        let Some(failed) = failed else { return };
        if self.state == BreakerState::HalfOpen && probe {
            if failed {
                self.trip(now, changes);
            } else {
                self.probe_successes += 1;
                if self.probe_successes >= self.settings.half_open_probes {
                    self.window.clear();
                    self.set(BreakerState::Closed, changes);
                }
            }
            return;
        }
        if self.state != BreakerState::Closed {
            return;
        }
        self.window.push_back((now, failed));
        let horizon = Duration::from_secs(self.settings.window_s);
        while self
            .window
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > horizon)
        {
            self.window.pop_front();
        }
        let calls = self.window.len();
        let failures = self.window.iter().filter(|(_, f)| *f).count();
        if calls >= self.settings.min_calls
            && failures as f64 / calls as f64 >= self.settings.failure_rate
        {
            self.trip(now, changes);
        }
    }

    fn trip(&mut self, now: Instant, changes: &mut Vec<Transition>) {
        self.open_until = now + Duration::from_secs_f64(self.settings.cool_down_s);
        self.window.clear();
        self.set(BreakerState::Open, changes);
    }

    fn failure_rate(&self, now: Instant) -> f64 {
        let horizon = Duration::from_secs(self.settings.window_s);
        let recent: Vec<bool> = self
            .window
            .iter()
            .filter(|(t, _)| now.duration_since(*t) <= horizon)
            .map(|(_, f)| *f)
            .collect();
        if recent.is_empty() {
            0.0
        } else {
            recent.iter().filter(|f| **f).count() as f64 / recent.len() as f64
        }
    }
}

/// A snapshot for diagnostics (`GET /v1/admin/integrations`).
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct PolicySnapshot {
    /// `closed`, `open` or `half_open`.
    pub breaker: String,
    /// Seconds until an open breaker lets probes through.
    pub open_for_s: Option<f64>,
    /// Failure fraction of the calls in the breaker's window.
    pub recent_failure_rate: f64,
    /// Seconds until the vendor's rate limit lets calls through again.
    pub vendor_pause_s: Option<f64>,
    /// Configured requests per second (0 = none).
    pub rate_per_s: u32,
    /// Median of the recent call durations, ms.
    pub p50_ms: Option<f64>,
    /// 99th percentile of the recent call durations, ms.
    pub p99_ms: Option<f64>,
    /// Calls the percentiles are computed from.
    pub samples: usize,
    /// Calls in flight now (when a limit is configured).
    pub in_flight: Option<usize>,
}

/// The policy of one integration (per process).
pub struct Policy {
    name: String,
    throttle: ThrottleSettings,
    limiter: Option<RateLimiter<NotKeyed, InMemoryState, DefaultClock>>,
    in_flight: Option<Arc<Semaphore>>,
    paused_until: Mutex<Option<Instant>>,
    breaker: Arc<Mutex<Breaker>>,
    /// Durations of the most recent calls (at most [`LATENCY_SAMPLES`]).
    latencies: Mutex<VecDeque<Duration>>,
}

/// Recent call durations kept per integration for the p50/p99 diagnostics.
const LATENCY_SAMPLES: usize = 1024;

impl Policy {
    /// A fresh policy (breaker closed, no pause) for `settings`.
    pub fn new(name: &str, settings: &IntegrationSettings) -> Self {
        let throttle = settings.throttle.clone();
        let limiter = NonZeroU32::new(throttle.rate_per_s).map(|rate| {
            let burst = NonZeroU32::new(throttle.burst).unwrap_or(NonZeroU32::MIN);
            RateLimiter::direct(Quota::per_second(rate).allow_burst(burst))
        });
        let in_flight =
            (throttle.max_in_flight > 0).then(|| Arc::new(Semaphore::new(throttle.max_in_flight)));
        Policy {
            name: name.to_owned(),
            throttle,
            limiter,
            in_flight,
            paused_until: Mutex::new(None),
            breaker: Arc::new(Mutex::new(Breaker::new(settings.breaker.clone()))),
            latencies: Mutex::new(VecDeque::with_capacity(LATENCY_SAMPLES)),
        }
    }

    fn log(&self, changes: Vec<Transition>) {
        for t in changes {
            match t.to {
                BreakerState::Open => {
                    tracing::warn!(target: "hookrelay::command", integration = %self.name, from = t.from.as_str(), to = "open", "circuit breaker opened")
                }
                _ => {
                    tracing::info!(target: "hookrelay::command", integration = %self.name, from = t.from.as_str(), to = t.to.as_str(), "circuit breaker state changed")
                }
            }
            crate::telemetry::metrics::breaker_transition(
                &self.name,
                t.from.as_str(),
                t.to.as_str(),
            );
            crate::telemetry::metrics::breaker_state(&self.name, t.to.as_str());
        }
    }

    /// Decides whether a call may start now (see the module docs).
    pub async fn admit(&self) -> Admission {
        let mut changes = Vec::new();
        let probe = {
            let Ok(mut breaker) = self.breaker.lock() else {
                return Admission::Wait {
                    delay: SHORT_WAIT,
                    reason: "in_flight",
                };
            };
            breaker.admit(Instant::now(), &mut changes)
        };
        self.log(changes);
        let probe = match probe {
            Ok(p) => p,
            Err(remaining) => return Admission::Open { remaining },
        };
        let refuse = |delay: Duration, reason: &'static str| {
            if probe {
                release_probe(&self.breaker);
            }
            Admission::Wait { delay, reason }
        };
        // Vendor pause.
        let pause = self
            .paused_until
            .lock()
            .ok()
            .and_then(|p| *p)
            .and_then(|until| until.checked_duration_since(Instant::now()));
        if let Some(wait) = pause {
            if wait > SHORT_WAIT {
                return refuse(wait, "vendor");
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
                            return refuse(wait, "rate");
                        }
                        tokio::time::sleep(wait).await;
                    }
                }
            }
        }
        // In-flight limit.
        let slot = match &self.in_flight {
            None => None,
            Some(sem) => {
                match tokio::time::timeout(SHORT_WAIT, sem.clone().acquire_owned()).await {
                    Ok(Ok(permit)) => Some(permit),
                    _ => return refuse(SHORT_WAIT * 2, "in_flight"),
                }
            }
        };
        Admission::Go(Ticket {
            _slot: slot,
            probe: probe.then(|| self.breaker.clone()),
        })
    }

    /// Records a finished call: `failed` is `Some(true)` for a vendor failure
    /// (5xx, 408, timeout, connection error), `Some(false)` for a success or a
    /// caller error, `None` for throttling (429) which the breaker ignores.
    pub fn record(&self, ticket: Ticket, failed: Option<bool>, vendor: Option<VendorLimit>) {
        self.record_call(ticket, failed, vendor, None);
    }

    /// [`Policy::record`] with the call's duration, kept for p50/p99.
    pub fn record_call(
        &self,
        mut ticket: Ticket,
        failed: Option<bool>,
        vendor: Option<VendorLimit>,
        duration: Option<Duration>,
    ) {
        if let (Some(d), Ok(mut l)) = (duration, self.latencies.lock()) {
            if l.len() == LATENCY_SAMPLES {
                l.pop_front();
            }
            l.push_back(d);
        }
        let mut changes = Vec::new();
        // Recorded here, so the ticket's drop must not give the probe back again.
        let probe = ticket.probe.take().is_some();
        if let Ok(mut b) = self.breaker.lock() {
            b.record(Instant::now(), probe, failed, &mut changes);
        }
        self.log(changes);
        if self.throttle.adaptive {
            if let Some(wait) = vendor.and_then(|v| v.pause()) {
                let wait = wait.min(Duration::from_secs(self.throttle.max_pause_s));
                if let (Ok(mut p), Some(until)) =
                    (self.paused_until.lock(), Instant::now().checked_add(wait))
                {
                    if p.is_none_or(|cur| cur < until) {
                        *p = Some(until);
                    }
                }
                tracing::debug!(target: "hookrelay::command", integration = %self.name, wait_ms = wait.as_millis() as u64, "vendor rate limit: pausing calls");
            }
        }
    }

    /// The current state, for diagnostics.
    pub fn snapshot(&self) -> PolicySnapshot {
        let now = Instant::now();
        let (breaker, open_for_s, recent_failure_rate) = match self.breaker.lock() {
            Ok(b) => (
                b.state.as_str().to_owned(),
                (b.state == BreakerState::Open)
                    .then(|| b.open_until.saturating_duration_since(now).as_secs_f64()),
                b.failure_rate(now),
            ),
            Err(_) => ("unknown".to_owned(), None, 0.0),
        };
        let mut recent: Vec<Duration> = self
            .latencies
            .lock()
            .map(|l| l.iter().copied().collect())
            .unwrap_or_default();
        recent.sort();
        let pct = |p: f64| {
            (!recent.is_empty()).then(|| {
                let i = ((recent.len() - 1) as f64 * p).round() as usize;
                recent[i.min(recent.len() - 1)].as_secs_f64() * 1e3
            })
        };
        PolicySnapshot {
            p50_ms: pct(0.5),
            p99_ms: pct(0.99),
            samples: recent.len(),
            breaker,
            open_for_s,
            recent_failure_rate,
            vendor_pause_s: self
                .paused_until
                .lock()
                .ok()
                .and_then(|p| *p)
                .and_then(|u| u.checked_duration_since(now))
                .map(|d| d.as_secs_f64()),
            rate_per_s: self.throttle.rate_per_s,
            in_flight: self
                .in_flight
                .as_ref()
                .map(|s| self.throttle.max_in_flight - s.available_permits()),
        }
    }
}

/// Global retry budget (per process): retries may use at most `ratio` of the
/// calls made, plus `min_per_s` so a quiet system can still retry. Stops retry
/// storms against a failing vendor (after Finagle's `RetryBudget`).
pub struct RetryBudget {
    ratio: f64,
    min_per_s: f64,
    state: Mutex<(f64, Instant)>,
}

impl RetryBudget {
    /// Most tokens the budget can hold.
    const CAP: f64 = 1000.0;

    /// A budget allowing `ratio` retries per call plus `min_per_s` per second.
    pub fn new(ratio: f64, min_per_s: f64) -> Self {
        RetryBudget {
            ratio,
            min_per_s,
            state: Mutex::new((min_per_s, Instant::now())),
        }
    }

    fn refill(&self, state: &mut (f64, Instant)) {
        let now = Instant::now();
        state.0 =
            (state.0 + now.duration_since(state.1).as_secs_f64() * self.min_per_s).min(Self::CAP);
        state.1 = now;
    }

    /// A first attempt deposits `ratio` of a retry.
    pub fn deposit(&self) {
        if let Ok(mut s) = self.state.lock() {
            self.refill(&mut s);
            s.0 = (s.0 + self.ratio).min(Self::CAP);
        }
    }

    /// Takes one retry from the budget; `false` when it is spent.
    pub fn try_withdraw(&self) -> bool {
        let Ok(mut s) = self.state.lock() else {
            return true;
        };
        self.refill(&mut s);
        // Tolerate float rounding (ten deposits of 0.2 are 1.999…).
        if s.0 >= 1.0 - 1e-9 {
            s.0 = (s.0 - 1.0).max(0.0);
            true
        } else {
            false
        }
    }
}

/// Policies of all integrations.
pub struct Policies(HashMap<String, Policy>);

impl Policies {
    /// One policy per configured integration.
    pub fn from_settings(
        settings: &std::collections::BTreeMap<String, IntegrationSettings>,
    ) -> Self {
        Policies(
            settings
                .iter()
                .map(|(n, s)| (n.clone(), Policy::new(n, s)))
                .collect(),
        )
    }

    /// The policy of `integration`.
    pub fn get(&self, integration: &str) -> Option<&Policy> {
        self.0.get(integration)
    }

    /// Snapshots by integration name, sorted.
    pub fn snapshots(&self) -> Vec<(String, PolicySnapshot)> {
        let mut v: Vec<_> = self
            .0
            .iter()
            .map(|(n, p)| (n.clone(), p.snapshot()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(min_calls: usize, cool_down_s: f64, probes: usize) -> Breaker {
        Breaker::new(BreakerSettings {
            enabled: true,
            failure_rate: 0.5,
            min_calls,
            window_s: 60,
            cool_down_s,
            half_open_probes: probes,
        })
    }

    #[test]
    fn breaker_opens_half_opens_and_closes() {
        let mut b = breaker(4, 0.05, 1);
        let mut ch = Vec::new();
        let t0 = Instant::now();
        for failed in [false, true, true] {
            assert_eq!(b.admit(t0, &mut ch), Ok(false));
            b.record(t0, false, Some(failed), &mut ch);
        }
        assert_eq!(b.state, BreakerState::Closed, "below min_calls");
        b.record(t0, false, Some(true), &mut ch);
        assert_eq!(b.state, BreakerState::Open, "3 of 4 failed");
        assert!(b.admit(t0, &mut ch).is_err(), "open refuses");
        let later = t0 + Duration::from_millis(60);
        assert_eq!(b.admit(later, &mut ch), Ok(true), "cool-down over: a probe");
        assert!(b.admit(later, &mut ch).is_err(), "only one probe at a time");
        b.record(later, true, Some(false), &mut ch);
        assert_eq!(b.state, BreakerState::Closed);
        let states: Vec<_> = ch.iter().map(|t| t.to).collect();
        assert_eq!(
            states,
            vec![
                BreakerState::Open,
                BreakerState::HalfOpen,
                BreakerState::Closed
            ]
        );
    }

    #[test]
    fn failed_probe_reopens() {
        let mut b = breaker(1, 0.01, 2);
        let mut ch = Vec::new();
        let t0 = Instant::now();
        b.record(t0, false, Some(true), &mut ch);
        assert_eq!(b.state, BreakerState::Open);
        let later = t0 + Duration::from_millis(20);
        assert_eq!(b.admit(later, &mut ch), Ok(true));
        b.record(later, true, Some(true), &mut ch);
        assert_eq!(b.state, BreakerState::Open);
    }

    #[test]
    fn a_probe_ticket_dropped_unrecorded_gives_its_probe_back() {
        let b = Arc::new(Mutex::new(breaker(1, 0.01, 1)));
        let mut ch = Vec::new();
        let t0 = Instant::now();
        b.lock()
            .expect("lock")
            .record(t0, false, Some(true), &mut ch);
        let later = t0 + Duration::from_millis(20);
        assert_eq!(b.lock().expect("lock").admit(later, &mut ch), Ok(true));
        // The call's task is cancelled: its ticket is dropped, never recorded.
        drop(Ticket {
            _slot: None,
            probe: Some(b.clone()),
        });
        assert_eq!(
            b.lock().expect("lock").admit(later, &mut ch),
            Ok(true),
            "the only probe must be free again"
        );
    }

    #[test]
    fn throttling_does_not_trip_the_breaker() {
        let mut b = breaker(2, 1.0, 1);
        let mut ch = Vec::new();
        let t0 = Instant::now();
        for _ in 0..10 {
            b.record(t0, false, None, &mut ch);
        }
        assert_eq!(b.state, BreakerState::Closed);
    }

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

    #[test]
    fn retry_budget_limits_retries_to_a_fraction_of_calls() {
        let budget = RetryBudget::new(0.2, 0.0);
        for _ in 0..10 {
            budget.deposit();
        }
        assert!(budget.try_withdraw());
        assert!(budget.try_withdraw());
        assert!(!budget.try_withdraw(), "10 calls at 20% allow 2 retries");
    }

    #[tokio::test]
    async fn rate_limit_spaces_calls() {
        let mut s: IntegrationSettings = serde_json::from_value(serde_json::json!({
            "base_url": "http://127.0.0.1:1"
        }))
        .expect("settings");
        s.throttle.rate_per_s = 20;
        s.throttle.burst = 1;
        let p = Policy::new("v", &s);
        let start = Instant::now();
        for _ in 0..5 {
            match p.admit().await {
                Admission::Go(t) => p.record(t, Some(false), None),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(
            start.elapsed() >= Duration::from_millis(190),
            "{:?}",
            start.elapsed()
        );
    }
}
