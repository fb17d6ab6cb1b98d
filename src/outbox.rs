//! The outbox: every access to the `jobs` table.
//!
//! A job is work still to do: `execute` (call the upstream for a command) or
//! `deliver` (send its callback). Workers claim a batch with
//! `FOR UPDATE SKIP LOCKED`, which moves each job's `run_at` to the lease end
//! and stamps a fresh `lease_token`; the slow HTTP work then happens outside any
//! transaction. Every outcome write is one statement that first matches
//! `(id, lease_token)`: a worker whose lease expired (and whose job another
//! worker re-claimed) writes nothing. Finished jobs are deleted, so the
//! `run_at` index only covers live work. An expired lease needs no reaper: its
//! `run_at` is in the past, so the job is simply ready again.
//!
//! Inserting into `jobs` fires `NOTIFY hookrelay_jobs` (a statement trigger, see
//! the migrations), which wakes idle dispatchers at once.

use std::time::Duration;

use serde_json::Value;
use sqlx::types::Json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::delivery::AttemptOutcome;
use crate::domain::{CommandStatus, DeliveryStatus};
use crate::integration::UpstreamResult;

/// The `LISTEN/NOTIFY` channel that announces new jobs.
pub const CHANNEL: &str = "hookrelay_jobs";

/// A claimed job with everything needed to run it (one round trip).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ClaimedJob {
    /// Job id.
    pub id: i64,
    /// `execute` or `deliver`.
    pub kind: String,
    /// The command.
    pub command_id: Uuid,
    /// The delivery (deliver jobs).
    pub delivery_id: Option<Uuid>,
    /// Claims of this job so far, this one included (1-based attempt number).
    pub attempts: i32,
    /// This claim's lease token.
    pub lease_token: Uuid,
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
    /// Command body.
    pub body: Option<Json<Value>>,
    /// Client's idempotency key.
    pub idempotency_key: Option<String>,
    /// Command status at claim time (before the claim's own update).
    pub command_status: String,
    /// Callback URL (deliver jobs).
    pub url: Option<String>,
    /// Signed body (deliver jobs).
    pub payload: Option<String>,
    /// Delivery status (deliver jobs).
    pub delivery_status: Option<String>,
    /// Active signing secrets, newest first (deliver jobs; empty if none yet).
    pub secrets: Option<Vec<String>>,
}

/// Claims up to `limit` ready jobs for `lease`. Execute jobs' commands move
/// from `accepted` to `in_progress` in the same statement.
///
/// # Errors
/// Database errors.
pub async fn claim(pool: &PgPool, limit: usize, lease: Duration) -> sqlx::Result<Vec<ClaimedJob>> {
    let token = Uuid::new_v4();
    sqlx::query_as::<_, ClaimedJob>(
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
         RETURNING id, kind, command_id, delivery_id, attempts, lease_token
        ), started AS (
            UPDATE commands SET status = 'in_progress', updated_at = now()
             WHERE id IN (SELECT command_id FROM claimed WHERE kind = 'execute')
               AND status = 'accepted'
        )
        SELECT cl.id, cl.kind, cl.command_id, cl.delivery_id, cl.attempts, cl.lease_token,
               c.client_id, c.integration, c.operation, c.method, c.path, c.body,
               c.idempotency_key, c.status AS command_status,
               d.url, d.payload, d.status AS delivery_status,
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
    .await
}

/// Records the end of an upstream call: the command gets its final status and
/// result, and its delivery plus a `deliver` job are created — all in one
/// statement, only if this worker still holds the lease.
///
/// Returns `false` when the lease was lost (nothing written).
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
    let done = sqlx::query(
        r#"
        WITH j AS (
            DELETE FROM jobs WHERE id = $1 AND lease_token = $2 RETURNING command_id
        ), c AS (
            UPDATE commands SET status = $3, result = $4, updated_at = now()
             WHERE id IN (SELECT command_id FROM j)
         RETURNING id, client_id, callback_url
        ), d AS (
            INSERT INTO deliveries (id, command_id, client_id, url, payload)
            SELECT $5, id, client_id, callback_url, $6 FROM c
         RETURNING id, command_id
        )
        INSERT INTO jobs (kind, command_id, delivery_id)
        SELECT 'deliver', command_id, id FROM d
        "#,
    )
    .bind(job.id)
    .bind(job.lease_token)
    .bind(status.as_str())
    .bind(Json(result))
    .bind(delivery_id)
    .bind(payload)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(done == 1)
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

/// Records one delivery attempt in the audit log and moves the delivery and its
/// job on — one statement, only if this worker still holds the lease.
/// Returns `false` when the lease was lost (nothing written).
///
/// # Errors
/// Database errors.
pub async fn record_attempt(
    pool: &PgPool,
    job: &ClaimedJob,
    outcome: &AttemptOutcome,
    next: AfterAttempt,
    trigger: &str,
) -> sqlx::Result<bool> {
    let (status, reason, delay) = match next {
        AfterAttempt::Delivered => (DeliveryStatus::Delivered, None, None),
        AfterAttempt::DeadLettered(r) => (DeliveryStatus::DeadLettered, Some(r), None),
        AfterAttempt::RetryIn(d) => (DeliveryStatus::Pending, None, Some(d.as_secs_f64())),
    };
    let done = sqlx::query(
        r#"
        WITH finished AS (
            DELETE FROM jobs WHERE id = $1 AND lease_token = $2 AND $5::float8 IS NULL
         RETURNING delivery_id
        ), retried AS (
            UPDATE jobs SET run_at = now() + make_interval(secs => $5::float8),
                            locked_until = NULL, lease_token = NULL, last_error = $11
             WHERE id = $1 AND lease_token = $2 AND $5::float8 IS NOT NULL
         RETURNING delivery_id
        ), d AS (
            UPDATE deliveries
               SET attempts = attempts + 1,
                   status = $3,
                   dead_letter_reason = $4,
                   last_error = $11,
                   updated_at = now(),
                   delivered_at = CASE WHEN $3 = 'delivered' THEN now() ELSE delivered_at END,
                   dead_lettered_at = CASE WHEN $3 = 'dead_lettered' THEN now() ELSE NULL END
             WHERE id IN (SELECT delivery_id FROM finished UNION ALL SELECT delivery_id FROM retried)
         RETURNING id, attempts
        )
        INSERT INTO delivery_attempts
            (delivery_id, attempt, trigger, started_at, duration_ms, response_status, response_body, error)
        SELECT id, attempts, $6, $7, $8, $9, $10, $11 FROM d
        "#,
    )
    .bind(job.id)
    .bind(job.lease_token)
    .bind(status.as_str())
    .bind(reason)
    .bind(delay)
    .bind(trigger)
    .bind(outcome.started_at)
    .bind(outcome.duration_ms)
    .bind(outcome.response_status.map(i32::from))
    .bind(outcome.response_body.as_deref())
    .bind(outcome.error.as_deref())
    .execute(pool)
    .await?
    .rows_affected();
    Ok(done == 1)
}

/// Releases leases (graceful shutdown): the jobs are ready again at once.
///
/// # Errors
/// Database errors.
pub async fn release(pool: &PgPool, jobs: &[(i64, Uuid)]) -> sqlx::Result<u64> {
    let (ids, tokens): (Vec<i64>, Vec<Uuid>) = jobs.iter().copied().unzip();
    Ok(sqlx::query(
        r#"
        UPDATE jobs SET run_at = now(), locked_until = NULL, lease_token = NULL
          FROM UNNEST($1::bigint[], $2::uuid[]) AS r(id, token)
         WHERE jobs.id = r.id AND jobs.lease_token = r.token
        "#,
    )
    .bind(&ids)
    .bind(&tokens)
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
