//! The circuit breaker of one integration: **closed** (calls flow; a
//! sliding window of `breaker.window_s` counts retryable failures), **open**
//! (calls are refused until `breaker.cool_down_s` has passed) and
//! **half-open** (`breaker.half_open_probes` probe calls at a time decide:
//! that many successes close it, one failure opens it again). Throttling
//! (429) and caller errors never count as failures.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::SHORT_WAIT;
use crate::config::BreakerSettings;

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

/// One integration's circuit breaker: a sliding window of recent call
/// outcomes (closed), a cool-down (open), and a count of probes in flight
/// (half-open).
#[derive(Debug)]
pub(super) struct Breaker {
    settings: BreakerSettings,
    /// The current state.
    pub(super) state: BreakerState,
    /// (when, failed) of recent calls, oldest first.
    window: VecDeque<(Instant, bool)>,
    /// When an open breaker lets probes through.
    pub(super) open_until: Instant,
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
    pub(super) fn new(settings: BreakerSettings) -> Self {
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
    pub(super) fn admit(
        &mut self,
        now: Instant,
        changes: &mut Vec<Transition>,
    ) -> Result<bool, Duration> {
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

    pub(super) fn record(
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

    pub(super) fn failure_rate(&self, now: Instant) -> f64 {
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::super::Ticket;
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
}
