//! Admission control: bounded queues for `POST /v1/commands`.
//!
//! Intake can accept commands faster than the workers can start them; without
//! a bound, the outbox grows and every command waits longer. Each API process
//! runs one sampler task that, every `admission.sample_interval_ms`, reads the
//! outbox with one statement — the number of ready jobs (`run_at <= now()`, so
//! not leased; counted up to `admission.max_ready_backlog` + 1, an index-only
//! walk of `jobs_run_at_idx` that never reads more) and the age of the oldest
//! one (one index probe) — and stores the decision in atomics. The handler
//! only reads them ([`Admission::check`]): no database round trip per request.
//!
//! While a bound is passed, a new command is answered 503 with `Retry-After`
//! (`admission.retry_after_s`) and the problem type
//! `urn:hookrelay:problem:overloaded`, whose `detail` names the bound
//! (`ready backlog` or `outbox lag`). A request carrying an `Idempotency-Key`
//! that is already stored for the client is still answered as usual (replay
//! or 409): it adds no work; finding that out costs one unique-index probe,
//! made only while shedding. A sample older than ten intervals (sampler
//! failing, database down) admits: the intake's own errors answer then.
//!
//! Metrics: `hookrelay_intake_shed_total{reason}` and the sampled
//! `hookrelay_ready_backlog` gauge ([`crate::telemetry::metrics`]).

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::config::AdmissionSettings;
use crate::http::error::ApiError;

/// Why commands are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShedReason {
    /// More ready jobs than `admission.max_ready_backlog`.
    ReadyBacklog,
    /// The oldest ready job is older than `admission.max_outbox_lag_ms`.
    OutboxLag,
}

impl ShedReason {
    /// The `reason` label of `hookrelay_intake_shed_total`.
    pub fn label(self) -> &'static str {
        match self {
            ShedReason::ReadyBacklog => "ready_backlog",
            ShedReason::OutboxLag => "outbox_lag",
        }
    }
}

const OPEN: u8 = 0;
const BACKLOG: u8 = 1;
const LAG: u8 = 2;

/// The admission decision of one API process, updated by its sampler.
pub struct Admission {
    settings: AdmissionSettings,
    /// `OPEN`, `BACKLOG` or `LAG`.
    decision: AtomicU8,
    /// Last sampled ready backlog (capped at the bound + 1).
    backlog: AtomicU64,
    /// Last sampled outbox lag, ms.
    lag_ms: AtomicU64,
    /// When the last sample was taken, ms since `epoch`.
    sampled_at_ms: AtomicU64,
    epoch: Instant,
}

/// One sample of the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxSample {
    /// Ready jobs, counted up to the bound + 1.
    pub ready: u64,
    /// Age of the oldest ready job.
    pub lag: Duration,
}

impl Admission {
    /// An admission gate for `settings`; call [`Admission::start`] to sample.
    pub fn new(settings: &AdmissionSettings) -> Arc<Self> {
        Arc::new(Admission {
            settings: settings.clone(),
            decision: AtomicU8::new(OPEN),
            backlog: AtomicU64::new(0),
            lag_ms: AtomicU64::new(0),
            sampled_at_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        })
    }

    /// A gate for `settings` whose sampler runs on `pool` until `cancel`
    /// fires. With both bounds at 0 nothing is sampled and every command is
    /// admitted.
    pub fn start(
        pool: PgPool,
        settings: &AdmissionSettings,
        cancel: CancellationToken,
    ) -> Arc<Self> {
        let admission = Admission::new(settings);
        if settings.enabled() {
            tokio::spawn(admission.clone().sample_until(pool, cancel));
        }
        admission
    }

    async fn sample_until(self: Arc<Self>, pool: PgPool, cancel: CancellationToken) {
        let every = Duration::from_millis(self.settings.sample_interval_ms);
        loop {
            match sample(&pool, self.settings.max_ready_backlog).await {
                Ok(s) => self.record(s),
                Err(e) => tracing::debug!(
                    target: "hookrelay::command",
                    error = %e,
                    "sampling the outbox for admission failed"
                ),
            }
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = cancel.cancelled() => return,
            }
        }
    }

    /// Stores a sample and the decision it implies.
    pub fn record(&self, s: OutboxSample) {
        let lag_ms = u64::try_from(s.lag.as_millis()).unwrap_or(u64::MAX);
        let decision = if self.settings.max_ready_backlog > 0
            && s.ready > self.settings.max_ready_backlog
        {
            BACKLOG
        } else if self.settings.max_outbox_lag_ms > 0 && lag_ms > self.settings.max_outbox_lag_ms {
            LAG
        } else {
            OPEN
        };
        self.backlog.store(s.ready, Ordering::Relaxed);
        self.lag_ms.store(lag_ms, Ordering::Relaxed);
        self.decision.store(decision, Ordering::Relaxed);
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.sampled_at_ms.store(now.max(1), Ordering::Release);
        crate::telemetry::metrics::ready_backlog(s.ready as f64);
    }

    /// Whether a new command may be accepted now: `Ok`, or the 503 to answer
    /// (counted in `hookrelay_intake_shed_total`). Reads atomics only.
    ///
    /// # Errors
    /// [`ApiError::Overloaded`] naming the bound that is passed.
    pub fn check(&self) -> Result<(), ApiError> {
        let reason = match self.decision.load(Ordering::Relaxed) {
            BACKLOG => ShedReason::ReadyBacklog,
            LAG => ShedReason::OutboxLag,
            _ => return Ok(()),
        };
        let sampled_at = self.sampled_at_ms.load(Ordering::Acquire);
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        if now.saturating_sub(sampled_at) > 10 * self.settings.sample_interval_ms {
            return Ok(());
        }
        let detail = match reason {
            ShedReason::ReadyBacklog => format!(
                "ready backlog over its bound: more than {} jobs wait for a worker (admission.max_ready_backlog); retry later",
                self.settings.max_ready_backlog
            ),
            ShedReason::OutboxLag => format!(
                "outbox lag over its bound: the oldest ready job has waited {} ms, more than {} ms (admission.max_outbox_lag_ms); retry later",
                self.lag_ms.load(Ordering::Relaxed),
                self.settings.max_outbox_lag_ms
            ),
        };
        Err(ApiError::Overloaded {
            detail,
            retry_after_s: self.settings.retry_after_s,
        })
        .inspect_err(|_| crate::telemetry::metrics::intake_shed(reason.label()))
    }

    /// [`Admission::check`], except that a command whose `Idempotency-Key`
    /// is already stored for `client_id` is admitted (its answer is the
    /// existing command or a 409; it adds no work). The key lookup (one
    /// unique-index probe) is made only while shedding.
    ///
    /// # Errors
    /// [`ApiError::Overloaded`]; a database error of the lookup.
    pub async fn admit(
        &self,
        pool: &PgPool,
        client_id: &str,
        idempotency_key: Option<&str>,
    ) -> Result<(), ApiError> {
        let Err(refused) = self.check() else {
            return Ok(());
        };
        let Some(key) = idempotency_key else {
            return Err(refused);
        };
        let stored: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM commands WHERE client_id = $1 AND idempotency_key = $2)",
        )
        .bind(client_id)
        .bind(key)
        .fetch_one(pool)
        .await?;
        if stored {
            Ok(())
        } else {
            Err(refused)
        }
    }
}

/// Samples the outbox: ready jobs counted up to `max_ready_backlog + 1` (none
/// when it is 0) and the age of the oldest ready job, in one statement.
///
/// # Errors
/// Database errors.
pub async fn sample(pool: &PgPool, max_ready_backlog: u64) -> sqlx::Result<OutboxSample> {
    let cap = if max_ready_backlog == 0 {
        0
    } else {
        i64::try_from(max_ready_backlog.saturating_add(1)).unwrap_or(i64::MAX)
    };
    let (ready, lag) = crate::outbox::ready_backlog(pool, cap).await?;
    Ok(OutboxSample { ready, lag })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(backlog: u64, lag_ms: u64) -> AdmissionSettings {
        AdmissionSettings {
            max_ready_backlog: backlog,
            max_outbox_lag_ms: lag_ms,
            sample_interval_ms: 250,
            retry_after_s: 3,
        }
    }

    #[test]
    fn decides_by_the_bound_that_is_passed() {
        let a = Admission::new(&settings(10, 1000));
        assert!(a.check().is_ok(), "no sample yet: open");
        a.record(OutboxSample {
            ready: 10,
            lag: Duration::from_millis(1000),
        });
        assert!(a.check().is_ok(), "at the bounds: open");
        a.record(OutboxSample {
            ready: 11,
            lag: Duration::ZERO,
        });
        let err = a.check().expect_err("backlog");
        let p = err.problem();
        assert_eq!(p.type_, "urn:hookrelay:problem:overloaded");
        assert_eq!(p.status, 503);
        assert!(p.detail.contains("ready backlog"), "{}", p.detail);
        assert!(matches!(
            err,
            ApiError::Overloaded {
                retry_after_s: 3,
                ..
            }
        ));
        a.record(OutboxSample {
            ready: 0,
            lag: Duration::from_millis(1500),
        });
        let p = a.check().expect_err("lag").problem();
        assert!(p.detail.contains("outbox lag"), "{}", p.detail);
        a.record(OutboxSample {
            ready: 0,
            lag: Duration::ZERO,
        });
        assert!(a.check().is_ok());
    }

    #[test]
    fn zero_means_no_bound() {
        let a = Admission::new(&settings(0, 0));
        assert!(!settings(0, 0).enabled());
        a.record(OutboxSample {
            ready: 1_000_000,
            lag: Duration::from_secs(3600),
        });
        assert!(a.check().is_ok());
    }
}
