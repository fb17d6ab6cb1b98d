//! The guarded call: every upstream call passes its integration's resilience
//! policy in one sequence, written once here and used by command execution
//! (`crate::jobs::execute`) and by queries (`crate::query::upstream`):
//!
//! 1. **admit** ([`Policy::admit`]): breaker, vendor pause, rate and in-flight
//!    limits; a refusal comes back as [`Guarded::Wait`] or [`Guarded::Open`];
//! 2. **retry budget** (commands only): a retry (attempt > 1) withdraws from
//!    the global [`RetryBudget`], a first attempt deposits into it; a spent
//!    budget gives the ticket back unrecorded as a call and comes back as
//!    [`Guarded::Wait`] of one second;
//! 3. **call**, timed;
//! 4. **record** ([`Policy::record_call`]) what the breaker and the adaptive
//!    throttle need to know.
//!
//! What happens on [`Guarded::Open`] — **fall back** — is the caller's next
//! step, because the fallback's answer has the caller's shape (a command
//! result, a cached query response); a fallback that calls another
//! integration goes through this same guarded call ([`Counting::Fallback`]).
//!
//! Refusals are counted in the metrics as each caller always counted them
//! (see [`Counting`]); the call itself counts `hookrelay_upstream_calls_total`
//! in [`Integration::call`] / [`Integration::query`].

use std::future::Future;
use std::time::{Duration, Instant};

use super::resilience::{Admission, Policy, RetryBudget, VendorLimit};
use super::{Called, Integration, QueryResponse, UpstreamRequest};

/// How a guarded call ended.
#[derive(Debug)]
pub enum Guarded<T> {
    /// The call was made (and recorded); its answer.
    Called(T),
    /// Not now (throttled, or the retry budget is spent): try again after
    /// `delay`, without spending an attempt.
    Wait {
        /// How long to wait.
        delay: Duration,
    },
    /// The breaker is open for `remaining` more: fall back, or wait.
    Open {
        /// Time left of the cool-down.
        remaining: Duration,
    },
}

/// Which metrics a refused call counts: they differ by caller, and are kept
/// exactly as each caller always counted them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counting {
    /// A command's own call: a throttled call counts
    /// `hookrelay_upstream_throttled_total{reason}` and
    /// `hookrelay_upstream_calls_total{outcome="throttled"}`; a spent retry
    /// budget `…_throttled_total{reason="budget"}`; an open breaker
    /// `…_calls_total{outcome="open"}`.
    Command,
    /// A query: throttled counts `…_throttled_total{reason}`; open counts
    /// `…_calls_total{outcome="open"}`.
    Query,
    /// A fallback's call: refusals are not counted (the primary's refusal
    /// already was).
    Fallback,
}

/// What a finished call tells the policy.
#[derive(Debug, Clone, Copy)]
pub struct Report {
    /// `Some(true)` vendor failure (5xx, 408, timeout, connection error),
    /// `Some(false)` success or caller error, `None` throttling (429).
    pub failed: Option<bool>,
    /// The vendor's rate-limit headers, if any.
    pub vendor: Option<VendorLimit>,
    /// Wall time of the call.
    pub duration: Duration,
}

/// One call through an integration's policy (see the module docs).
#[derive(Clone, Copy)]
pub struct GuardedCall<'a> {
    /// The integration's policy.
    pub policy: &'a Policy,
    /// Integration name (metrics label).
    pub integration: &'a str,
    /// Operation or query name (metrics label).
    pub operation: &'a str,
    /// Which refusals the metrics count.
    pub counting: Counting,
    /// The retry budget and the 1-based attempt number, for calls that
    /// retry (commands); `None` for calls that never do (queries, fallbacks).
    pub budget: Option<(&'a RetryBudget, u32)>,
}

impl GuardedCall<'_> {
    /// Admits, calls `call`, records its [`Report`]; see the module docs.
    pub async fn run<T, Fut>(self, call: impl FnOnce() -> Fut) -> Guarded<T>
    where
        Fut: Future<Output = (T, Report)>,
    {
        let counted = self.counting != Counting::Fallback;
        let ticket = match self.policy.admit().await {
            Admission::Go(ticket) => ticket,
            Admission::Wait { delay, reason } => {
                if counted {
                    crate::telemetry::metrics::throttled(self.integration, reason);
                }
                if self.counting == Counting::Command {
                    crate::telemetry::metrics::upstream_call(
                        self.integration,
                        self.operation,
                        "throttled",
                        0.0,
                    );
                }
                return Guarded::Wait { delay };
            }
            Admission::Open { remaining } => {
                if counted {
                    crate::telemetry::metrics::upstream_call(
                        self.integration,
                        self.operation,
                        "open",
                        0.0,
                    );
                }
                return Guarded::Open { remaining };
            }
        };
        if let Some((budget, attempt)) = self.budget {
            if attempt > 1 && !budget.try_withdraw() {
                // Retries may use only a fraction of all calls: wait for the budget.
                self.policy.record(ticket, None, None);
                if counted {
                    crate::telemetry::metrics::throttled(self.integration, "budget");
                }
                return Guarded::Wait {
                    delay: Duration::from_secs(1),
                };
            }
            if attempt <= 1 {
                budget.deposit();
            }
        }
        let (answer, report) = call().await;
        self.policy
            .record_call(ticket, report.failed, report.vendor, Some(report.duration));
        Guarded::Called(answer)
    }
}

impl Integration {
    /// [`Integration::call`] through `guard` (a command's operation).
    pub async fn guarded_call(
        &self,
        guard: GuardedCall<'_>,
        request: &UpstreamRequest<'_>,
    ) -> Guarded<Called> {
        guard
            .run(|| async {
                let called = self.call(request).await;
                let report = Report {
                    failed: called.vendor_failed(),
                    vendor: called.vendor,
                    duration: called.duration,
                };
                (called, report)
            })
            .await
    }

    /// [`Integration::query`] through `guard` (a declared query). A transport
    /// failure counts as a vendor failure; by status, 5xx and 408 are vendor
    /// failures and 429 is throttling.
    pub async fn guarded_query(
        &self,
        guard: GuardedCall<'_>,
        path: &str,
        query_string: &str,
    ) -> Guarded<Result<QueryResponse, String>> {
        guard
            .run(|| async {
                let started = Instant::now();
                let answer = self.query(guard.operation, path, query_string).await;
                let (failed, vendor) = match &answer {
                    Err(_) => (Some(true), None),
                    Ok(resp) => (
                        match resp.status {
                            429 => None,
                            s if s >= 500 || s == 408 => Some(true),
                            _ => Some(false),
                        },
                        resp.vendor,
                    ),
                };
                let report = Report {
                    failed,
                    vendor,
                    duration: started.elapsed(),
                };
                (answer, report)
            })
            .await
    }
}
