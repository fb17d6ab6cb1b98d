//! Every statement on the `jobs` table that is not an outcome write: the
//! claim, lease renewal and release, deferral, dropping and quarantining a
//! job, and the two timing reads (time to the next job, outbox lag).
//!
//! Only [`quarantine`] reads a job's kind, and only in SQL (it fails the
//! command of an `execute` job, dead-letters the delivery of a `deliver` job);
//! everything else is keyed by `(job id, lease token)` alone.

use std::time::Duration;

use sqlx::postgres::PgRow;
use sqlx::PgPool;
use uuid::Uuid;

use crate::integration::UpstreamResult;

/// The `LISTEN/NOTIFY` channel that announces new jobs (sent by
/// [`super::signal`], never by a write transaction).
pub const CHANNEL: &str = super::signal::JOBS_CHANNEL;

/// Claims up to `limit` ready jobs for `lease` and returns one row per job,
/// read by `select`.
///
/// The claim itself is generic: it moves each ready job's `run_at` to the
/// lease end, stamps a fresh `lease_token` and counts the attempt, with
/// `FOR UPDATE SKIP LOCKED` so concurrent claimers never take the same job.
/// Its result is the CTE `claimed` (all `jobs` columns, after the update).
/// `select` is the rest of the statement, written by whoever knows the job
/// kinds (`BackgroundJob::CLAIM_SELECT`): more CTEs (starting with a comma) and
/// the final `SELECT` over `claimed` with the joins that fetch what the jobs
/// act on — one round trip for the claim and its data. `$1`–`$3` are taken
/// (limit, lease seconds, token); `select` must not bind parameters itself.
///
/// # Errors
/// Database errors.
pub async fn claim(
    pool: &PgPool,
    limit: usize,
    lease: Duration,
    select: &str,
) -> sqlx::Result<Vec<PgRow>> {
    let token = Uuid::new_v4();
    sqlx::query(&format!(
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
         RETURNING jobs.*
        ){select}
        "#
    ))
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .bind(lease.as_secs_f64())
    .bind(token)
    .fetch_all(pool)
    .await
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
pub async fn defer(
    pool: &PgPool,
    job_id: i64,
    lease_token: Uuid,
    delay: Duration,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE jobs SET run_at = now() + make_interval(secs => $3), attempts = attempts - 1,
                         locked_until = NULL, lease_token = NULL
          WHERE id = $1 AND lease_token = $2",
    )
    .bind(job_id)
    .bind(lease_token)
    .bind(delay.as_secs_f64())
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
pub async fn drop_job(pool: &PgPool, job_id: i64, lease_token: Uuid) -> sqlx::Result<bool> {
    let done = sqlx::query("DELETE FROM jobs WHERE id = $1 AND lease_token = $2")
        .bind(job_id)
        .bind(lease_token)
        .execute(pool)
        .await?
        .rows_affected();
    Ok(done == 1)
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
pub async fn quarantine(
    pool: &PgPool,
    job_id: i64,
    lease_token: Uuid,
    why: &str,
) -> sqlx::Result<bool> {
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
    .bind(job_id)
    .bind(lease_token)
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

/// The ready set at a glance, in one statement: jobs ready to run
/// (`run_at <= now()`, so not leased), counted up to `cap` (an index walk of
/// `jobs_run_at_idx` that reads no further; 0 counts nothing), and the age of
/// the oldest of them (zero when none is ready). Admission control samples it.
///
/// # Errors
/// Database errors.
pub async fn ready_backlog(pool: &PgPool, cap: i64) -> sqlx::Result<(u64, Duration)> {
    let (ready, lag): (i64, f64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM (SELECT 1 FROM jobs WHERE run_at <= now() LIMIT $1) r),
                COALESCE(EXTRACT(EPOCH FROM (now() - (SELECT min(run_at) FROM jobs WHERE run_at <= now()))), 0)::float8",
    )
    .bind(cap)
    .fetch_one(pool)
    .await?;
    Ok((
        u64::try_from(ready).unwrap_or(0),
        Duration::from_secs_f64(lag.max(0.0)),
    ))
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
