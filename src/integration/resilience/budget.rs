//! The global retry budget for upstream calls (`[resilience]`).

use std::sync::Mutex;
use std::time::Instant;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
