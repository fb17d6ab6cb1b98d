//! Job outcomes: what a finished call or delivery attempt writes, and the
//! group writer ([`Outcomes`]) that writes concurrent jobs' outcomes together,
//! one statement per kind and batch, each row first matching
//! `(id, lease_token)`: a worker whose lease expired (and whose job another
//! worker re-claimed) writes nothing.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::PgPool;
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::signal::Signals;
use crate::db::batch::{with_single_fallback, Batcher};
use crate::delivery::AttemptOutcome;
use crate::domain::{CommandStatus, DeliveryStatus};
use crate::integration::UpstreamResult;

/// The end of an upstream call, to be recorded by [`finish_batch`].
#[derive(Debug, Clone)]
pub struct Finish {
    /// The execute job.
    pub job_id: i64,
    /// Its lease token at claim time.
    pub lease_token: Uuid,
    /// Final command status.
    pub status: CommandStatus,
    /// Upstream result.
    pub result: UpstreamResult,
    /// Id of the delivery to create (the `webhook-id`).
    pub delivery_id: Uuid,
    /// The webhook body, serialised once.
    pub payload: String,
    /// The callback URL the delivery is created with (the command's, as
    /// claimed and verified).
    pub url: String,
    /// The delivery's seal over (delivery id, command id, client, `url`,
    /// `payload`); `None` leaves it unsealed (its deliver job is then
    /// quarantined).
    pub seal: Option<String>,
}

/// Records ends of upstream calls in one statement: each command gets its
/// final status and result (and loses its execute seal, so no execute job can
/// verify against it again), its sealed delivery is created, and its job
/// becomes that delivery's `deliver` job in place — same row, same lease,
/// `attempts` 1 — so the task that made the call sends the first callback at
/// once under the lease it holds (no second job row, no second claim); if it
/// dies first, the deliver job is claimed again after the lease. Only for
/// jobs whose lease is still held and that are still `execute` jobs. Returns,
/// per input, whether it was written (`false`: the lease was lost, nothing
/// written for that job).
///
/// # Errors
/// Database errors (nothing is written then).
pub async fn finish_batch(pool: &PgPool, rows: Vec<&Finish>) -> sqlx::Result<Vec<bool>> {
    Ok(finish_batch_with_secrets(pool, rows)
        .await?
        .into_iter()
        .map(|w| w.is_some())
        .collect())
}

/// [`finish_batch`], returning per input `None` (lease lost) or the client's
/// active signing secrets, sealed, newest first — what the first callback
/// attempt signs with (read in the same statement, as a claim of a deliver
/// job reads them).
///
/// # Errors
/// Database errors (nothing is written then).
pub async fn finish_batch_with_secrets(
    pool: &PgPool,
    rows: Vec<&Finish>,
) -> sqlx::Result<Vec<Option<Vec<String>>>> {
    // Inputs are matched by (job, lease token), never by job alone: one
    // process can hold a job twice (its lease lapsed and it claimed the job
    // again), and the stale outcome must not be applied with the fresh one's
    // job row. `kind = 'execute'`: a try whose commit succeeded but whose
    // answer was lost finds a deliver job and writes nothing. Kept compact so
    // that `INSERT INTO deliveries` is within the first kilobyte that
    // `pg_stat_activity.query` shows by default (`track_activity_query_size`).
    let written: Vec<(i64, Uuid, Vec<String>)> = sqlx::query_as(
        r#"
WITH input AS (
    SELECT * FROM UNNEST($1::bigint[], $2::uuid[], $3::text[], $4::text[], $5::uuid[],
                         $6::text[], $7::text[], $8::text[])
        AS t(job_id, lease_token, status, result, delivery_id, payload, url, seal)
), j AS (
    UPDATE jobs SET kind = 'deliver', delivery_id = i.delivery_id, attempts = 1,
                    trigger = 'scheduled', last_error = NULL
      FROM input i
     WHERE jobs.id = i.job_id AND jobs.lease_token = i.lease_token AND jobs.kind = 'execute'
 RETURNING jobs.id AS job_id, jobs.command_id, i.lease_token
), c AS (
    UPDATE commands SET status = i.status, result = i.result, seal = NULL, updated_at = now()
      FROM j JOIN input i ON i.job_id = j.job_id AND i.lease_token = j.lease_token
     WHERE commands.id = j.command_id
 RETURNING j.job_id, j.lease_token, commands.client_id, commands.id AS command_id,
           i.delivery_id, i.payload, i.url, i.seal
), d AS (
    INSERT INTO deliveries (id, command_id, client_id, url, payload, seal)
    SELECT delivery_id, command_id, client_id, url, payload, seal FROM c
)
SELECT c.job_id, c.lease_token,
       ARRAY(SELECT s.secret FROM signing_secrets s
              WHERE s.client_id = c.client_id AND (s.expires_at IS NULL OR s.expires_at > now())
              ORDER BY s.created_at DESC) AS secrets
  FROM c
"#,
    )
    .bind(rows.iter().map(|r| r.job_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.lease_token).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.status.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.result.to_text()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.delivery_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.payload.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.url.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.seal.as_deref()).collect::<Vec<_>>())
    .fetch_all(pool)
    .await?;
    Ok(rows
        .iter()
        .map(|r| {
            written
                .iter()
                .find(|(id, token, _)| *id == r.job_id && *token == r.lease_token)
                .map(|(_, _, secrets)| secrets.clone())
        })
        .collect())
}

/// What follows a delivery attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AfterAttempt {
    /// 2xx: done.
    Delivered,
    /// Give up with this reason (`gone`, `exhausted`).
    DeadLettered(&'static str),
    /// Try again after this delay.
    RetryIn(Duration),
}

impl AfterAttempt {
    /// The `outcome` label of `hookrelay_delivery_attempts_total`.
    pub fn metric_outcome(&self) -> &'static str {
        match self {
            AfterAttempt::Delivered => "delivered",
            AfterAttempt::DeadLettered(_) => "dead_lettered",
            AfterAttempt::RetryIn(_) => "retry",
        }
    }
}

/// Why a deliver job runs (`jobs.trigger`, copied to `delivery_attempts.trigger`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The delivery's own schedule (`scheduled`).
    Scheduled,
    /// An admin replayed the dead letter (`replay`).
    Replay,
}

impl Trigger {
    /// The stored value.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Scheduled => "scheduled",
            Trigger::Replay => "replay",
        }
    }

    /// Parses a stored value (`None` for anything else).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "scheduled" => Some(Trigger::Scheduled),
            "replay" => Some(Trigger::Replay),
            _ => None,
        }
    }
}

/// A delivery attempt, to be recorded by [`attempt_batch`].
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    /// The deliver job.
    pub job_id: i64,
    /// Its lease token at claim time.
    pub lease_token: Uuid,
    /// How the attempt went.
    pub outcome: AttemptOutcome,
    /// What follows.
    pub next: AfterAttempt,
    /// Why the attempt ran (from the job).
    pub trigger: Trigger,
}

/// Records delivery attempts in the audit log and moves each delivery and its
/// job on (deleted when done, rescheduled for a retry) — one statement, only
/// for jobs whose lease is still held. Returns, per input, whether it was
/// written.
///
/// # Errors
/// Database errors (nothing is written then).
pub async fn attempt_batch(pool: &PgPool, rows: Vec<&AttemptRecord>) -> sqlx::Result<Vec<bool>> {
    let mut status = Vec::with_capacity(rows.len());
    let mut reason = Vec::with_capacity(rows.len());
    let mut delay = Vec::with_capacity(rows.len());
    for r in &rows {
        let (s, why, d) = match r.next {
            AfterAttempt::Delivered => (DeliveryStatus::Delivered, None, None),
            AfterAttempt::DeadLettered(why) => (DeliveryStatus::DeadLettered, Some(why), None),
            AfterAttempt::RetryIn(d) => (DeliveryStatus::Pending, None, Some(d.as_secs_f64())),
        };
        status.push(s.as_str());
        reason.push(why);
        delay.push(d);
    }
    // Matched by (job, lease token), as in `finish_batch`.
    let written: Vec<(i64, Uuid)> = sqlx::query_as(
        r#"
        WITH input AS (
            SELECT * FROM UNNEST($1::bigint[], $2::uuid[], $3::text[], $4::text[], $5::float8[],
                                 $6::text[], $7::timestamptz[], $8::int4[], $9::int4[], $10::text[],
                                 $11::text[])
                AS t(job_id, lease_token, status, reason, delay_s, trigger, started_at,
                     duration_ms, response_status, response_body, error)
        ), finished AS (
            DELETE FROM jobs USING input i
             WHERE jobs.id = i.job_id AND jobs.lease_token = i.lease_token AND i.delay_s IS NULL
         RETURNING jobs.id AS job_id, jobs.delivery_id, i.lease_token
        ), retried AS (
            UPDATE jobs SET run_at = now() + make_interval(secs => i.delay_s),
                            locked_until = NULL, lease_token = NULL, last_error = i.error
              FROM input i
             WHERE jobs.id = i.job_id AND jobs.lease_token = i.lease_token AND i.delay_s IS NOT NULL
         RETURNING jobs.id AS job_id, jobs.delivery_id, i.lease_token
        ), moved AS (
            SELECT job_id, delivery_id, lease_token FROM finished
            UNION ALL
            SELECT job_id, delivery_id, lease_token FROM retried
        ), d AS (
            UPDATE deliveries
               SET attempts = deliveries.attempts + 1,
                   status = i.status,
                   dead_letter_reason = i.reason,
                   last_error = i.error,
                   updated_at = now(),
                   delivered_at = CASE WHEN i.status = 'delivered' THEN now() ELSE deliveries.delivered_at END,
                   dead_lettered_at = CASE WHEN i.status = 'dead_lettered' THEN now() ELSE NULL END
              FROM moved m JOIN input i ON i.job_id = m.job_id AND i.lease_token = m.lease_token
             WHERE deliveries.id = m.delivery_id
         RETURNING m.job_id, m.lease_token, deliveries.id AS delivery_id, deliveries.attempts, i.trigger,
                   i.started_at, i.duration_ms, i.response_status, i.response_body, i.error
        ), a AS (
            INSERT INTO delivery_attempts
                (delivery_id, attempt, trigger, started_at, duration_ms, response_status, response_body, error)
            SELECT delivery_id, attempts, trigger, started_at, duration_ms, response_status, response_body, error
              FROM d
        )
        SELECT job_id, lease_token FROM d
        "#,
    )
    .bind(rows.iter().map(|r| r.job_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.lease_token).collect::<Vec<_>>())
    .bind(status)
    .bind(reason)
    .bind(delay)
    .bind(rows.iter().map(|r| r.trigger.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.outcome.started_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.outcome.duration_ms).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.outcome.response_status.map(i32::from)).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.outcome.response_body.as_deref()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.outcome.error.as_deref()).collect::<Vec<_>>())
    .fetch_all(pool)
    .await?;
    Ok(rows
        .iter()
        .map(|r| written.contains(&(r.job_id, r.lease_token)))
        .collect())
}

/// A job outcome for the group writer ([`Outcomes`]).
#[derive(Debug, Clone)]
pub enum Outcome {
    /// An upstream call ended.
    Finish(Finish),
    /// A delivery attempt ended.
    Attempt(AttemptRecord),
}

/// First wait before writing a failed outcome again; doubled per failure up
/// to [`RECORD_RETRY_MAX`] (a `backon` exponential schedule, no jitter).
const RECORD_RETRY_FIRST: Duration = Duration::from_millis(50);
/// Longest wait between two tries of an outcome write.
const RECORD_RETRY_MAX: Duration = Duration::from_secs(2);
/// Tries of an outcome write that failed for a reason other than the database
/// being unavailable (`batch::is_transient`), which retrying rarely fixes.
const RECORD_TRIES_NON_TRANSIENT: u32 = 3;

/// Group writer for job outcomes: concurrent job tasks' outcomes share one
/// statement (and commit) per kind and batch — see [`crate::db::batch`].
///
/// It also knows which jobs have an outcome queued or being retried
/// ([`Outcomes::is_recording`]): shutdown must not release their leases, or
/// the queued outcome would find no lease and be lost.
#[derive(Clone)]
pub struct Outcomes {
    writer: Batcher<Outcome, sqlx::Result<Written>>,
    recording: Arc<Mutex<HashSet<i64>>>,
}

impl Outcomes {
    /// Starts `writers` writer tasks writing up to `max` outcomes per
    /// statement; after each commit they tell `signals` (its event rows).
    pub fn start(
        pool: PgPool,
        writers: usize,
        max: usize,
        signals: Arc<Signals>,
    ) -> (Outcomes, Vec<JoinHandle<()>>) {
        let (batcher, handles) =
            Batcher::start(writers, max, Duration::ZERO, move |items: Vec<Outcome>| {
                let pool = pool.clone();
                let signals = signals.clone();
                async move {
                    let written = write_outcomes(&pool, items).await;
                    if written.iter().any(|w| matches!(w, Ok(Some(_)))) {
                        signals.events_committed();
                    }
                    written
                }
            });
        let outcomes = Outcomes {
            writer: batcher,
            recording: Arc::new(Mutex::new(HashSet::new())),
        };
        (outcomes, handles)
    }

    /// Whether job `job_id` has an outcome queued for writing right now.
    pub fn is_recording(&self, job_id: i64) -> bool {
        self.recording
            .lock()
            .map(|r| r.contains(&job_id))
            .unwrap_or(false)
    }

    /// One try: queues `outcome` and returns once it is committed: `Ok(Some)`
    /// written, `Ok(None)` lease lost (nothing written).
    ///
    /// # Errors
    /// Database errors, or `WorkerCrashed` when the writers are gone (not a
    /// database outage: trying again cannot help).
    async fn submit(&self, outcome: Outcome) -> sqlx::Result<Written> {
        self.writer
            .submit(outcome)
            .await
            .unwrap_or(Err(sqlx::Error::WorkerCrashed))
    }

    /// Queues an outcome with the group writer and waits for its commit, marking
    /// the job as recording meanwhile (see [`Outcomes::is_recording`]).
    ///
    /// The outcome is the only record that the call happened: if it is not
    /// written, the lease runs out and another claim repeats the call. So a
    /// failed write is tried again with backoff (50 ms doubling to 2 s) for as
    /// long as this worker holds the lease: the job task renews it meanwhile and
    /// drops this future once the lease turns out to be someone else's (or the
    /// shutdown grace is over). Every try is matched by lease token, so a late
    /// try never overwrites a new owner's work, and a try whose commit succeeded
    /// but whose answer was lost finds the job gone (or, for a finish, no
    /// longer an execute job) and returns `Ok(false)`.
    /// Each try is its own item of the group writer, so a retrying job never
    /// holds back other jobs' outcomes. A failure other than the database being
    /// unavailable is tried 3 times (`RECORD_TRIES_NON_TRANSIENT`), then returned.
    ///
    /// # Errors
    /// The last failure, once retrying is given up as described.
    pub async fn record(&self, job_id: i64, outcome: Outcome) -> sqlx::Result<bool> {
        Ok(self.record_written(job_id, outcome).await?.is_some())
    }

    /// [`Outcomes::record`] of a [`Finish`], returning `None` when the lease
    /// was lost, else the client's active signing secrets (sealed, newest
    /// first) for the first callback attempt the same task sends next.
    ///
    /// # Errors
    /// As [`Outcomes::record`].
    pub async fn record_finish(
        &self,
        job_id: i64,
        finish: Finish,
    ) -> sqlx::Result<Option<Vec<String>>> {
        self.record_written(job_id, Outcome::Finish(finish)).await
    }

    async fn record_written(&self, job_id: i64, outcome: Outcome) -> sqlx::Result<Written> {
        if let Ok(mut r) = self.recording.lock() {
            r.insert(job_id);
        }
        let mut delays = {
            use backon::BackoffBuilder;
            backon::ExponentialBuilder::new()
                .with_min_delay(RECORD_RETRY_FIRST)
                .with_factor(2.0)
                .with_max_delay(RECORD_RETRY_MAX)
                .without_max_times()
                .build()
        };
        let mut non_transient = 0;
        let done = loop {
            match self.submit(outcome.clone()).await {
                Ok(done) => break Ok(done),
                Err(e) => {
                    if !crate::db::batch::is_transient(&e) {
                        non_transient += 1;
                        if non_transient >= RECORD_TRIES_NON_TRANSIENT {
                            break Err(e);
                        }
                    }
                    let delay = delays.next().unwrap_or(RECORD_RETRY_MAX);
                    tracing::warn!(target: "hookrelay::jobs", job_id, error = %e, retry_in_ms = delay.as_millis() as u64,
                        "recording the job outcome failed; retrying while the lease is held");
                    tokio::time::sleep(delay).await;
                }
            }
        };
        if let Ok(mut r) = self.recording.lock() {
            r.remove(&job_id);
        }
        done
    }
}

/// One written outcome: `None` when the lease was lost (nothing written),
/// else the sealed signing secrets a finish read (empty for an attempt).
type Written = Option<Vec<String>>;

async fn write_outcomes(pool: &PgPool, items: Vec<Outcome>) -> Vec<sqlx::Result<Written>> {
    let mut finishes = Vec::new();
    let mut attempts = Vec::new();
    let mut kinds = Vec::with_capacity(items.len());
    for item in items {
        match item {
            Outcome::Finish(f) => {
                kinds.push(true);
                finishes.push(f);
            }
            Outcome::Attempt(a) => {
                kinds.push(false);
                attempts.push(a);
            }
        }
    }
    let mut finished = if finishes.is_empty() {
        Vec::new()
    } else {
        with_single_fallback(&finishes, |rows| finish_batch_with_secrets(pool, rows)).await
    }
    .into_iter();
    let mut attempted = if attempts.is_empty() {
        Vec::new()
    } else {
        with_single_fallback(&attempts, |rows| attempt_batch(pool, rows)).await
    }
    .into_iter()
    .map(|r| r.map(|written| written.then(Vec::new)));
    kinds
        .into_iter()
        .map(|is_finish| {
            let next = if is_finish {
                finished.next()
            } else {
                attempted.next()
            };
            next.unwrap_or(Err(sqlx::Error::RowNotFound))
        })
        .collect()
}
