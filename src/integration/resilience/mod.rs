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
//! The pieces are one file each: [`throttle`] (vendor headers, GCRA,
//! in-flight limit), [`breaker`] (closed/open/half-open) and [`budget`] (the
//! global retry budget); this module composes them into a [`Policy`] per
//! integration ([`Policies`]), with admission tickets and the diagnostics
//! snapshot. Their public items are re-exported here.
//!
//! State is per process (a deployment with N worker processes lets each run at
//! the configured rate; divide accordingly). Sharing it through Redis is future
//! work.

pub mod breaker;
pub mod budget;
pub mod throttle;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::OwnedSemaphorePermit;

use crate::config::IntegrationSettings;
use breaker::Breaker;
use throttle::Throttle;

pub use breaker::{BreakerState, Transition};
pub use budget::RetryBudget;
pub use throttle::{VendorLimit, LOW_WATER};

/// Waits up to this long are slept in the job; longer ones reschedule it.
pub const SHORT_WAIT: Duration = Duration::from_millis(250);

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
    throttle: Throttle,
    breaker: Arc<Mutex<Breaker>>,
    /// Durations of the most recent calls (at most [`LATENCY_SAMPLES`]).
    latencies: Mutex<VecDeque<Duration>>,
}

/// Recent call durations kept per integration for the p50/p99 diagnostics.
const LATENCY_SAMPLES: usize = 1024;

impl Policy {
    /// A fresh policy (breaker closed, no pause) for `settings`.
    pub fn new(name: &str, settings: &IntegrationSettings) -> Self {
        Policy {
            name: name.to_owned(),
            throttle: Throttle::new(settings.throttle.clone()),
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

    /// Decides whether a call may start now (see the module docs): the
    /// breaker first, then the throttle ([`throttle`]).
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
        match self.throttle.admit().await {
            Ok(slot) => Admission::Go(Ticket {
                _slot: slot,
                probe: probe.then(|| self.breaker.clone()),
            }),
            Err((delay, reason)) => {
                if probe {
                    release_probe(&self.breaker);
                }
                Admission::Wait { delay, reason }
            }
        }
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
        self.throttle.observe(&self.name, vendor);
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
            vendor_pause_s: self.throttle.vendor_pause(now).map(|d| d.as_secs_f64()),
            rate_per_s: self.throttle.rate_per_s(),
            in_flight: self.throttle.in_flight(),
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
