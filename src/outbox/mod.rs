//! The outbox: every access to the `jobs` table.
//!
//! A job is work still to do: `execute` (call the upstream for a command) or
//! `deliver` (send its callback). Workers claim a batch with
//! `FOR UPDATE SKIP LOCKED`, which moves each job's `run_at` to the lease end
//! and stamps a fresh `lease_token`; the slow HTTP work then happens outside any
//! transaction. Outcomes of concurrent jobs are written together by the
//! [`Outcomes`] group writer, one statement per kind and batch, each row first
//! matching `(id, lease_token)`: a worker whose lease expired (and whose job another
//! worker re-claimed) writes nothing. Finished jobs are deleted, so the
//! `run_at` index only covers live work. An expired lease needs no reaper: its
//! `run_at` is in the past, so the job is simply ready again.
//!
//! Inserting into `jobs` fires `NOTIFY hookrelay_jobs` (a statement trigger, see
//! the migrations), which wakes idle dispatchers at once.

use std::time::Duration;

use sqlx::PgPool;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::db::batch::{with_single_fallback, Batcher};

use crate::delivery::AttemptOutcome;
use crate::domain::{CommandStatus, DeliveryStatus, JobKind};
use crate::integration::UpstreamResult;

/// The `LISTEN/NOTIFY` channel that announces new jobs.
pub const CHANNEL: &str = "hookrelay_jobs";

/// A claimed job with everything needed to run it (one round trip).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ClaimedJob {
    /// Job id.
    pub id: i64,
    /// `execute` or `deliver`, parsed when the row is decoded.
    pub kind: JobKind,
    /// The command.
    pub command_id: Uuid,
    /// The delivery (deliver jobs).
    pub delivery_id: Option<Uuid>,
    /// Claims of this job so far, this one included (1-based attempt number).
    pub attempts: i32,
    /// This claim's lease token.
    pub lease_token: Uuid,
    /// Why a deliver job runs: `scheduled` or `replay`.
    pub trigger: String,
    /// Command owner.
    pub client_id: String,
    /// Integration name.
    pub integration: String,
    /// Operation name.
    pub operation: String,
    /// Resolved HTTP method.
    pub method: String,
    /// Resolved path.
    pub path: String,
    /// Command body: the stored JSON text, sent upstream as it is.
    pub body: Option<String>,
    /// Client's idempotency key.
    pub idempotency_key: Option<String>,
    /// Command params, the stored JSON text (for a fallback operation's path).
    pub params: String,
    /// When the command was accepted (for the retry horizon).
    pub command_created_at: chrono::DateTime<chrono::Utc>,
    /// Command status at claim time (before the claim's own update).
    pub command_status: CommandStatus,
    /// Callback URL (deliver jobs).
    pub url: Option<String>,
    /// Signed body (deliver jobs).
    pub payload: Option<String>,
    /// Delivery status (deliver jobs).
    pub delivery_status: Option<DeliveryStatus>,
    /// Active signing secrets, newest first (deliver jobs; empty if none yet).
    pub secrets: Option<Vec<String>>,
    /// The command's callback URL (covered by the execute seal).
    pub callback_url: String,
    /// The command's seal (`commands.seal`; `None` once the command finished).
    pub command_seal: Option<String>,
    /// The delivery's seal (`deliveries.seal`, deliver jobs).
    pub delivery_seal: Option<String>,
    /// Set when a column of this job's rows could not be decoded: which one
    /// and why. The job is then failed on its own (never run, never retried
    /// in a loop); the columns that did decode are filled in, the others hold
    /// empty defaults.
    #[sqlx(skip)]
    pub undecodable: Option<String>,
}

impl ClaimedJob {
    /// The fields an execute job acts on, as covered by its command's seal.
    pub fn execute_seal(&self) -> crate::security::seal::ExecuteSeal<'_> {
        crate::security::seal::ExecuteSeal {
            command_id: self.command_id,
            client_id: &self.client_id,
            integration: &self.integration,
            operation: &self.operation,
            method: &self.method,
            path: &self.path,
            params: &self.params,
            body: self.body.as_deref(),
            callback_url: &self.callback_url,
            idempotency_key: self.idempotency_key.as_deref(),
        }
    }

    /// The fields a deliver job acts on, as covered by its delivery's seal
    /// (`None` when the delivery row is missing).
    pub fn deliver_seal(&self) -> Option<crate::security::seal::DeliverSeal<'_>> {
        Some(crate::security::seal::DeliverSeal {
            delivery_id: self.delivery_id?,
            command_id: self.command_id,
            client_id: &self.client_id,
            url: self.url.as_deref()?,
            payload: self.payload.as_deref()?,
        })
    }
}

/// Claims up to `limit` ready jobs for `lease`. Execute jobs' commands move
/// from `accepted` to `in_progress` in the same statement.
///
/// # Errors
/// Database errors.
pub async fn claim(pool: &PgPool, limit: usize, lease: Duration) -> sqlx::Result<Vec<ClaimedJob>> {
    let token = Uuid::new_v4();
    let rows = sqlx::query(
        r#"
        WITH claimed AS (
            UPDATE jobs
               SET run_at = now() + make_interval(secs => $2),
                   locked_until = now() + make_interval(secs => $2),
                   lease_token = $3,
                   attempts = attempts + 1
             WHERE id IN (SELECT id FROM jobs
                           WHERE run_at <= now()
                           ORDER BY run_at
                           LIMIT $1
                           FOR UPDATE SKIP LOCKED)
         RETURNING id, kind, command_id, delivery_id, attempts, lease_token, trigger
        ), started AS (
            UPDATE commands SET status = 'in_progress', updated_at = now()
             WHERE id IN (SELECT command_id FROM claimed WHERE kind = 'execute')
               AND status = 'accepted'
        )
        SELECT cl.id, cl.kind, cl.command_id, cl.delivery_id, cl.attempts, cl.lease_token, cl.trigger,
               c.client_id, c.integration, c.operation, c.method, c.path, c.body,
               c.idempotency_key, c.params, c.created_at AS command_created_at,
               c.status AS command_status,
               d.url, d.payload, d.status AS delivery_status,
               c.callback_url, c.seal AS command_seal, d.seal AS delivery_seal,
               CASE WHEN cl.kind = 'deliver' THEN
                   ARRAY(SELECT s.secret FROM signing_secrets s
                          WHERE s.client_id = c.client_id
                            AND (s.expires_at IS NULL OR s.expires_at > now())
                          ORDER BY s.created_at DESC)
               END AS secrets
          FROM claimed cl
          JOIN commands c ON c.id = cl.command_id
          LEFT JOIN deliveries d ON d.id = cl.delivery_id
        "#,
    )
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .bind(lease.as_secs_f64())
    .bind(token)
    .fetch_all(pool)
    .await?;
    // Each row is decoded on its own: a row that does not decode must not
    // take the rest of the batch (claimed, leased, and so stuck until their
    // leases run out) with it.
    Ok(rows.iter().map(decode_claimed).collect())
}

/// Decodes one claimed row; when that fails, decodes column by column and
/// marks the job [`ClaimedJob::undecodable`], naming the columns that failed.
/// A decoder that panics instead of failing (sqlx's chrono decoding panics on
/// a timestamp of `infinity`) counts as failing: it must not take the
/// dispatcher with it.
fn decode_claimed(row: &sqlx::postgres::PgRow) -> ClaimedJob {
    use sqlx::{FromRow, Row};
    let error = match decoded(|| ClaimedJob::from_row(row)) {
        Ok(job) => return job,
        Err(e) => e,
    };
    let mut failed: Vec<String> = Vec::new();
    macro_rules! col {
        ($name:literal) => {
            match decoded(|| row.try_get($name)) {
                Ok(v) => v,
                Err(e) => {
                    failed.push(format!("{}: {e}", $name));
                    Default::default()
                }
            }
        };
    }
    let job = ClaimedJob {
        id: col!("id"),
        kind: col!("kind"),
        command_id: col!("command_id"),
        delivery_id: col!("delivery_id"),
        attempts: col!("attempts"),
        lease_token: col!("lease_token"),
        trigger: col!("trigger"),
        client_id: col!("client_id"),
        integration: col!("integration"),
        operation: col!("operation"),
        method: col!("method"),
        path: col!("path"),
        body: col!("body"),
        idempotency_key: col!("idempotency_key"),
        params: col!("params"),
        command_created_at: col!("command_created_at"),
        command_status: col!("command_status"),
        url: col!("url"),
        payload: col!("payload"),
        delivery_status: col!("delivery_status"),
        secrets: col!("secrets"),
        callback_url: col!("callback_url"),
        command_seal: col!("command_seal"),
        delivery_seal: col!("delivery_seal"),
        undecodable: None,
    };
    // A column only the other kind of job uses does not stop this one (a
    // deliver job never reads the command's body or creation time).
    let unused: &[&str] = if job.kind == JobKind::Deliver {
        &[
            "method",
            "path",
            "body",
            "idempotency_key",
            "params",
            "command_created_at",
            "command_status",
            "command_seal",
        ]
    } else {
        &[
            "url",
            "payload",
            "delivery_status",
            "secrets",
            "delivery_seal",
        ]
    };
    let relevant: Vec<String> = failed
        .into_iter()
        .filter(|f| !unused.iter().any(|u| f.split(':').next() == Some(*u)))
        .collect();
    if relevant.is_empty() {
        // Every column this job reads decoded on its own.
        tracing::debug!(job_id = job.id, %error, "a claimed row decodes only column by column");
        return job;
    }
    let why = relevant.join("; ");
    tracing::error!(job_id = job.id, command_id = %job.command_id, reason = %why, "a claimed job does not decode; failing it on its own");
    ClaimedJob {
        undecodable: Some(why),
        ..job
    }
}

/// Runs a decoder, turning both its error and its panic into a message.
fn decoded<T>(decode: impl FnOnce() -> sqlx::Result<T>) -> Result<T, String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(decode)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(panic) => Err(panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "the decoder panicked".to_owned())),
    }
}

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
/// verify against it again), and its sealed delivery plus a `deliver` job are created —
/// only for jobs whose lease is still held. Returns, per input, whether it was
/// written (`false`: the lease was lost, nothing written for that job).
///
/// # Errors
/// Database errors (nothing is written then).
pub async fn finish_batch(pool: &PgPool, rows: Vec<&Finish>) -> sqlx::Result<Vec<bool>> {
    // Inputs are matched by (job, lease token), never by job alone: one
    // process can hold a job twice (its lease lapsed and it claimed the job
    // again), and the stale outcome must not be applied with the fresh one's
    // job row.
    let written: Vec<(i64, Uuid)> = sqlx::query_as(
        r#"
        WITH input AS (
            SELECT * FROM UNNEST($1::bigint[], $2::uuid[], $3::text[], $4::text[], $5::uuid[], $6::text[],
                                 $7::text[], $8::text[])
                AS t(job_id, lease_token, status, result, delivery_id, payload, url, seal)
        ), j AS (
            DELETE FROM jobs USING input i
             WHERE jobs.id = i.job_id AND jobs.lease_token = i.lease_token
         RETURNING jobs.id AS job_id, jobs.command_id, i.lease_token
        ), c AS (
            UPDATE commands SET status = i.status, result = i.result, seal = NULL, updated_at = now()
              FROM j JOIN input i ON i.job_id = j.job_id AND i.lease_token = j.lease_token
             WHERE commands.id = j.command_id
         RETURNING j.job_id, j.lease_token, commands.id AS command_id, commands.client_id,
                   i.delivery_id, i.payload, i.url, i.seal
        ), d AS (
            INSERT INTO deliveries (id, command_id, client_id, url, payload, seal)
            SELECT delivery_id, command_id, client_id, url, payload, seal FROM c
         RETURNING id, command_id
        ), n AS (
            INSERT INTO jobs (kind, command_id, delivery_id)
            SELECT 'deliver', command_id, id FROM d
        )
        SELECT job_id, lease_token FROM c
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
        .map(|r| written.contains(&(r.job_id, r.lease_token)))
        .collect())
}

/// [`finish_batch`] for one job, leaving the delivery unsealed (tools and
/// tests; the dispatcher seals). Returns `false` when the lease was lost.
///
/// # Errors
/// Database errors.
pub async fn finish_execute(
    pool: &PgPool,
    job: &ClaimedJob,
    status: CommandStatus,
    result: &UpstreamResult,
    delivery_id: Uuid,
    payload: &str,
) -> sqlx::Result<bool> {
    let row = Finish {
        job_id: job.id,
        lease_token: job.lease_token,
        status,
        result: result.clone(),
        delivery_id,
        payload: payload.to_owned(),
        url: job.callback_url.clone(),
        seal: None,
    };
    Ok(finish_batch(pool, vec![&row])
        .await?
        .first()
        .copied()
        .unwrap_or(false))
}

/// Puts an execute job back for another try after `delay`, recording the error
/// on the command. Returns `false` when the lease was lost.
///
/// # Errors
/// Database errors.
pub async fn retry_execute(
    pool: &PgPool,
    job: &ClaimedJob,
    delay: Duration,
    error: &str,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        r#"
        WITH j AS (
            UPDATE jobs SET run_at = now() + make_interval(secs => $3),
                            locked_until = NULL, lease_token = NULL, last_error = $4
             WHERE id = $1 AND lease_token = $2
         RETURNING command_id
        )
        UPDATE commands SET last_error = $4, updated_at = now()
         WHERE id IN (SELECT command_id FROM j)
        "#,
    )
    .bind(job.id)
    .bind(job.lease_token)
    .bind(delay.as_secs_f64())
    .bind(error)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(done == 1)
}

/// Deletes a job that has nothing left to do (its command or delivery already
/// finished). Returns `false` when the lease was lost.
///
/// # Errors
/// Database errors.
pub async fn drop_job(pool: &PgPool, job: &ClaimedJob) -> sqlx::Result<bool> {
    let done = sqlx::query("DELETE FROM jobs WHERE id = $1 AND lease_token = $2")
        .bind(job.id)
        .bind(job.lease_token)
        .execute(pool)
        .await?
        .rows_affected();
    Ok(done == 1)
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
    /// `scheduled` or `replay` (from the job).
    pub trigger: String,
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

/// Group writer for job outcomes: concurrent job tasks' outcomes share one
/// statement (and commit) per kind and batch — see [`crate::db::batch`].
#[derive(Clone)]
pub struct Outcomes(Batcher<Outcome, sqlx::Result<bool>>);

impl Outcomes {
    /// Starts `writers` writer tasks writing up to `max` outcomes per statement.
    pub fn start(pool: PgPool, writers: usize, max: usize) -> (Outcomes, Vec<JoinHandle<()>>) {
        let (batcher, handles) =
            Batcher::start(writers, max, Duration::ZERO, move |items: Vec<Outcome>| {
                let pool = pool.clone();
                async move { write_outcomes(&pool, items).await }
            });
        (Outcomes(batcher), handles)
    }

    /// Records `outcome` and returns once it is committed: `Ok(true)` written,
    /// `Ok(false)` lease lost (nothing written).
    ///
    /// # Errors
    /// Database errors, or `WorkerCrashed` when the writers are gone (not a
    /// database outage: trying again cannot help).
    pub async fn record(&self, outcome: Outcome) -> sqlx::Result<bool> {
        self.0
            .submit(outcome)
            .await
            .unwrap_or(Err(sqlx::Error::WorkerCrashed))
    }
}

async fn write_outcomes(pool: &PgPool, items: Vec<Outcome>) -> Vec<sqlx::Result<bool>> {
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
        with_single_fallback(&finishes, |rows| finish_batch(pool, rows)).await
    }
    .into_iter();
    let mut attempted = if attempts.is_empty() {
        Vec::new()
    } else {
        with_single_fallback(&attempts, |rows| attempt_batch(pool, rows)).await
    }
    .into_iter();
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

/// Extends a running job's lease (heartbeat for long calls). Returns `false`
/// when the lease is no longer this worker's.
///
/// # Errors
/// Database errors.
pub async fn renew_lease(
    pool: &PgPool,
    job_id: i64,
    lease_token: Uuid,
    lease: Duration,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE jobs SET run_at = now() + make_interval(secs => $3),
                         locked_until = now() + make_interval(secs => $3)
          WHERE id = $1 AND lease_token = $2",
    )
    .bind(job_id)
    .bind(lease_token)
    .bind(lease.as_secs_f64())
    .execute(pool)
    .await?
    .rows_affected();
    Ok(done == 1)
}

/// Puts a job back for `delay` without counting this claim as an attempt
/// (used when a callback host is at its concurrency limit). Returns `false`
/// when the lease was lost.
///
/// # Errors
/// Database errors.
pub async fn defer(pool: &PgPool, job: &ClaimedJob, delay: Duration) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE jobs SET run_at = now() + make_interval(secs => $3), attempts = attempts - 1,
                         locked_until = NULL, lease_token = NULL
          WHERE id = $1 AND lease_token = $2",
    )
    .bind(job.id)
    .bind(job.lease_token)
    .bind(delay.as_secs_f64())
    .execute(pool)
    .await?
    .rows_affected();
    Ok(done == 1)
}

/// Which dead letters a replay (or its "more remain" check) matches: `d` is
/// the delivery, `c` its command; `$1` an optional delivery id, `$2`–`$5` the
/// [`ReplayFilter`] fields in order. Dead letters quarantined for `integrity`
/// never match: their rows failed seal verification, so replaying them would
/// only quarantine them again (docs/security.md).
const DEAD_LETTER_MATCH: &str = "d.status = 'dead_lettered'
               AND ($1::uuid IS NULL OR d.id = $1)
               AND ($2::text IS NULL OR c.integration = $2)
               AND ($3::text IS NULL OR d.client_id = $3)
               AND ($4::timestamptz IS NULL OR d.dead_lettered_at >= $4)
               AND ($5::timestamptz IS NULL OR d.dead_lettered_at < $5)
               AND d.dead_letter_reason IS DISTINCT FROM 'integrity'";

/// Whether any dead letter still matches `filter` (after a capped bulk replay).
///
/// # Errors
/// Database errors.
pub async fn dead_letters_remain(pool: &PgPool, filter: &ReplayFilter) -> sqlx::Result<bool> {
    sqlx::query_scalar(&format!(
        "SELECT EXISTS (SELECT 1 FROM deliveries d JOIN commands c ON c.id = d.command_id
          WHERE {DEAD_LETTER_MATCH})"
    ))
    .bind(None::<Uuid>)
    .bind(filter.integration.as_deref())
    .bind(filter.client_id.as_deref())
    .bind(filter.since)
    .bind(filter.until)
    .fetch_one(pool)
    .await
}

/// Filter of a bulk replay; `None` fields match everything.
#[derive(Debug, Clone, Default)]
pub struct ReplayFilter {
    /// Only commands of this integration.
    pub integration: Option<String>,
    /// Only this client's deliveries.
    pub client_id: Option<String>,
    /// Dead-lettered at or after this time.
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Dead-lettered before this time.
    pub until: Option<chrono::DateTime<chrono::Utc>>,
}

/// Re-enqueues dead-lettered deliveries matching `filter` (or exactly
/// `delivery_id`): each goes back to `pending` with a new `deliver` job whose
/// trigger is `replay` — one statement, so the whole replay is durable (or
/// not done) at once, and a restart afterwards loses nothing. A delivery that
/// is not dead-lettered is untouched (so concurrent replays enqueue it once).
/// At most `limit` deliveries (oldest dead letters first); returns how many.
///
/// # Errors
/// Database errors (nothing is replayed then).
pub async fn replay_dead_letters(
    pool: &PgPool,
    delivery_id: Option<Uuid>,
    filter: &ReplayFilter,
    limit: i64,
) -> sqlx::Result<i64> {
    sqlx::query_scalar(&format!(
        r#"
        WITH pick AS (
            SELECT d.id
              FROM deliveries d
              JOIN commands c ON c.id = d.command_id
             WHERE {DEAD_LETTER_MATCH}
             ORDER BY d.dead_lettered_at
             LIMIT $6
               FOR UPDATE OF d SKIP LOCKED
        ), d AS (
            UPDATE deliveries
               SET status = 'pending', dead_letter_reason = NULL, dead_lettered_at = NULL,
                   updated_at = now()
              FROM pick
             WHERE deliveries.id = pick.id
         RETURNING deliveries.id, deliveries.command_id
        ), j AS (
            INSERT INTO jobs (kind, command_id, delivery_id, trigger)
            SELECT 'deliver', command_id, id, 'replay' FROM d
            ON CONFLICT (delivery_id) WHERE kind = 'deliver' DO NOTHING
        )
        SELECT count(*) FROM d
        "#
    ))
    .bind(delivery_id)
    .bind(filter.integration.as_deref())
    .bind(filter.client_id.as_deref())
    .bind(filter.since)
    .bind(filter.until)
    .bind(limit)
    .fetch_one(pool)
    .await
}

/// Quarantines a job that failed seal verification, in one statement and only
/// while its lease is held: the job is deleted without being run; for an
/// execute job the command becomes `failed` (result `{"status_code": null,
/// "body": null, "error": "integrity: …"}`, seal cleared) and its delivery is
/// created already dead-lettered; for a deliver job the delivery is
/// dead-lettered. Reason `integrity`, `last_error` = `why`. Nothing is sent
/// and no attempt is recorded. A delivery that is already `delivered` keeps
/// its status. Returns `false` when the lease was lost.
///
/// # Errors
/// Database errors (nothing is written then; the job is quarantined again
/// when it is next claimed).
pub async fn quarantine(pool: &PgPool, job: &ClaimedJob, why: &str) -> sqlx::Result<bool> {
    let result = UpstreamResult::no_response(format!("integrity: {why}; not executed"));
    let done: Option<i64> = sqlx::query_scalar(
        r#"
        WITH j AS (
            DELETE FROM jobs WHERE id = $1 AND lease_token = $2
         RETURNING id, kind, command_id, delivery_id
        ), c AS (
            UPDATE commands SET status = 'failed', result = $4, seal = NULL, updated_at = now()
              FROM j
             WHERE j.kind = 'execute' AND commands.id = j.command_id
               AND commands.status IN ('accepted', 'in_progress')
         RETURNING commands.id, commands.client_id, commands.callback_url
        ), new_delivery AS (
            INSERT INTO deliveries (id, command_id, client_id, url, payload, status, last_error,
                                    dead_letter_reason, dead_lettered_at)
            SELECT $5, c.id, c.client_id, c.callback_url, '', 'dead_lettered', $3, 'integrity', now()
              FROM c
            ON CONFLICT (command_id) DO NOTHING
        ), d AS (
            UPDATE deliveries
               SET status = 'dead_lettered', dead_letter_reason = 'integrity', last_error = $3,
                   dead_lettered_at = now(), updated_at = now()
              FROM j
             WHERE j.kind = 'deliver' AND deliveries.id = j.delivery_id
               AND deliveries.status = 'pending'
        )
        SELECT id FROM j
        "#,
    )
    .bind(job.id)
    .bind(job.lease_token)
    .bind(why)
    .bind(result.to_text())
    .bind(Uuid::now_v7())
    .fetch_optional(pool)
    .await?;
    Ok(done.is_some())
}

/// Releases leases (graceful shutdown) given as `(job id, lease token,
/// hold)`: each job becomes ready again `hold` after now — the time its
/// aborted call may still be running at the vendor or receiver — and the
/// interrupted claim does not count as an attempt. A job whose lease is no
/// longer this token's is left alone. Returns how many were released.
///
/// # Errors
/// Database errors.
pub async fn release(pool: &PgPool, jobs: &[(i64, Uuid, Duration)]) -> sqlx::Result<u64> {
    let ids: Vec<i64> = jobs.iter().map(|j| j.0).collect();
    let tokens: Vec<Uuid> = jobs.iter().map(|j| j.1).collect();
    let holds: Vec<f64> = jobs.iter().map(|j| j.2.as_secs_f64()).collect();
    Ok(sqlx::query(
        r#"
        UPDATE jobs SET run_at = now() + make_interval(secs => r.hold_s),
                        locked_until = NULL, lease_token = NULL,
                        attempts = GREATEST(attempts - 1, 0)
          FROM UNNEST($1::bigint[], $2::uuid[], $3::float8[]) AS r(id, token, hold_s)
         WHERE jobs.id = r.id AND jobs.lease_token = r.token
        "#,
    )
    .bind(&ids)
    .bind(&tokens)
    .bind(&holds)
    .execute(pool)
    .await?
    .rows_affected())
}

/// How long until the earliest job becomes ready (zero if one is ready now),
/// or `None` when the outbox is empty.
///
/// # Errors
/// Database errors.
pub async fn time_to_next_job(pool: &PgPool) -> sqlx::Result<Option<Duration>> {
    let secs: Option<f64> = sqlx::query_scalar(
        "SELECT GREATEST(0, EXTRACT(EPOCH FROM (min(run_at) - now())))::float8 FROM jobs",
    )
    .fetch_one(pool)
    .await?;
    Ok(secs.map(Duration::from_secs_f64))
}

/// Age of the oldest ready job — `run_at <= now()`; a claimed job's `run_at`
/// is its lease end, so leased jobs are not ready until the lease expires —
/// or zero when nothing is ready. One index probe on `jobs_run_at_idx`.
///
/// # Errors
/// Database errors.
pub async fn oldest_ready_age(pool: &PgPool) -> sqlx::Result<Duration> {
    let secs: Option<f64> = sqlx::query_scalar(
        "SELECT EXTRACT(EPOCH FROM (now() - min(run_at)))::float8 FROM jobs WHERE run_at <= now()",
    )
    .fetch_one(pool)
    .await?;
    Ok(Duration::from_secs_f64(secs.unwrap_or(0.0).max(0.0)))
}
