//! Scheduled maintenance: cron expressions in `[maintenance]` enqueue durable
//! runs; worker processes claim and execute them.
//!
//! Every worker process runs a [`Scheduler`]. Each computes the same cron fire
//! times and inserts `(task, scheduled_for)` into `maintenance_runs`; the
//! primary key lets one insert win, so with several processes each run is
//! enqueued once. Runs are claimed with `FOR UPDATE SKIP LOCKED` and a lease,
//! so each is executed by one process, and a run whose process died is claimed
//! again after its lease. Tasks change rows in bounded batches so they never
//! hold long locks on the hot tables.
//!
//! Tasks:
//! - `purge_attempt_bodies`: drop receiver response bodies from the attempt
//!   log after `attempt_body_retention_s` (the attempt rows stay);
//! - `expire_idempotency_keys`: forget idempotency keys of finished commands
//!   after `idempotency_key_ttl_s`, so the key can be used again (a command
//!   still running keeps its key, which is forwarded upstream on every try);
//! - `retire_signing_secrets`: delete rotated secrets whose grace has ended;
//! - `purge_token_jtis`: forget recorded token `jti`s (`auth.require_jti`)
//!   whose token has expired, since an expired token is refused anyway;
//! - `purge_events`: delete event-log rows (`command_events`, the SSE
//!   history) older than `event_retention_s`;
//! - `purge_finished` (cron `retention.purge_cron`): delete finished commands
//!   with their deliveries, attempts and events after `[retention]`
//!   (`finished_days`, `dead_letter_days`), 1,000 commands per statement
//!   ([`retention`]);
//! - run records older than 7 days are dropped hourly by the scheduler; a run
//!   that failed 5 times is not claimed again (its `last_error` says why).
//!
//! Finished outbox jobs need no purge: they are deleted when they finish.

pub mod retention;

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::{MaintenanceSettings, RetentionSettings};

pub use crate::domain::parse_cron;

/// Rows changed per statement by a task.
const BATCH: i64 = 5_000;

/// A maintenance task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// Null out old attempt response bodies.
    PurgeAttemptBodies,
    /// Forget old idempotency keys.
    ExpireIdempotencyKeys,
    /// Delete signing secrets past their rotation grace.
    RetireSigningSecrets,
    /// Delete recorded `jti`s of expired tokens.
    PurgeTokenJtis,
    /// Delete events older than the event retention.
    PurgeEvents,
    /// Delete finished commands past `[retention]`, with their children.
    PurgeFinished,
}

impl Task {
    /// Every task, in scheduling order.
    pub const ALL: [Task; 6] = [
        Task::PurgeAttemptBodies,
        Task::ExpireIdempotencyKeys,
        Task::RetireSigningSecrets,
        Task::PurgeTokenJtis,
        Task::PurgeEvents,
        Task::PurgeFinished,
    ];

    /// Name as stored in `maintenance_runs.task`.
    pub fn name(self) -> &'static str {
        match self {
            Task::PurgeAttemptBodies => "purge_attempt_bodies",
            Task::ExpireIdempotencyKeys => "expire_idempotency_keys",
            Task::RetireSigningSecrets => "retire_signing_secrets",
            Task::PurgeTokenJtis => "purge_token_jtis",
            Task::PurgeEvents => "purge_events",
            Task::PurgeFinished => "purge_finished",
        }
    }

    fn parse(name: &str) -> Option<Task> {
        Task::ALL.into_iter().find(|t| t.name() == name)
    }
}

/// The per-process maintenance scheduler.
pub struct Scheduler {
    pool: PgPool,
    settings: MaintenanceSettings,
    retention: RetentionSettings,
    schedules: Vec<(Task, cron::Schedule)>,
}

impl Scheduler {
    /// A scheduler for `[maintenance]` and `[retention]`, from the schedules
    /// parsed at load ([`MaintenanceSettings::schedule`],
    /// [`RetentionSettings::schedule`]).
    ///
    /// # Errors
    /// Settings that did not go through `Settings::validate` (no schedules).
    pub fn new(
        pool: PgPool,
        settings: MaintenanceSettings,
        retention: RetentionSettings,
    ) -> anyhow::Result<Self> {
        let schedule = |task: Task, name: &str| {
            settings
                .schedule(name)
                .cloned()
                .map(|s| (task, s))
                .ok_or_else(|| anyhow::anyhow!("maintenance.{name} was not parsed at load"))
        };
        let schedules = vec![
            schedule(Task::PurgeAttemptBodies, "purge_attempt_bodies_cron")?,
            schedule(Task::ExpireIdempotencyKeys, "expire_idempotency_keys_cron")?,
            schedule(Task::RetireSigningSecrets, "retire_signing_secrets_cron")?,
            schedule(Task::PurgeTokenJtis, "purge_token_jtis_cron")?,
            schedule(Task::PurgeEvents, "purge_events_cron")?,
            (
                Task::PurgeFinished,
                retention.schedule().cloned().ok_or_else(|| {
                    anyhow::anyhow!("retention.purge_cron was not parsed at load")
                })?,
            ),
        ];
        Ok(Scheduler {
            pool,
            settings,
            retention,
            schedules,
        })
    }

    /// Enqueues due runs and executes pending ones until `cancel` fires.
    pub async fn run(self, cancel: CancellationToken) {
        let mut last_purge: Option<Instant> = None;
        let mut next: Vec<Option<DateTime<Utc>>> = self
            .schedules
            .iter()
            .map(|(_, s)| s.upcoming(Utc).next())
            .collect();
        loop {
            if last_purge.is_none_or(|t| t.elapsed() > Duration::from_secs(3600)) {
                // Run records older than a week go, finished or not (a run that
                // failed 5 times is not claimed again; its record says why).
                let purged = sqlx::query(
                    "DELETE FROM maintenance_runs WHERE created_at < now() - interval '7 days'",
                )
                .execute(&self.pool)
                .await;
                if let Err(e) = purged {
                    tracing::warn!(error = %e, "purging old maintenance runs failed");
                }
                last_purge = Some(Instant::now());
            }
            let now = Utc::now();
            for ((task, schedule), at) in self.schedules.iter().zip(next.iter_mut()) {
                while let Some(due) = at.filter(|t| *t <= now) {
                    if let Err(e) = enqueue(&self.pool, *task, due).await {
                        tracing::warn!(task = task.name(), error = %e, "enqueueing a maintenance run failed");
                    }
                    *at = schedule.after(&due).next();
                }
            }
            loop {
                if cancel.is_cancelled() {
                    return;
                }
                match claim(&self.pool, Duration::from_secs(self.settings.run_lease_s)).await {
                    Ok(Some(run)) => self.execute(run).await,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "claiming a maintenance run failed");
                        break;
                    }
                }
            }
            let soonest = next.iter().flatten().min().copied();
            let wait = soonest
                .and_then(|t| (t - Utc::now()).to_std().ok())
                .unwrap_or(Duration::ZERO)
                .min(Duration::from_secs(30));
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = cancel.cancelled() => return,
            }
        }
    }

    async fn execute(&self, run: ClaimedRun) {
        let result = match Task::parse(&run.task) {
            Some(task) => execute(&self.pool, &self.settings, &self.retention, task).await,
            None => Ok(0),
        };
        let (affected, error) = match &result {
            Ok(n) => (Some(i64::try_from(*n).unwrap_or(i64::MAX)), None),
            Err(e) => (None, Some(e.to_string())),
        };
        match &result {
            Ok(n) => {
                tracing::info!(task = %run.task, scheduled_for = %run.scheduled_for, affected = n, "maintenance run done")
            }
            Err(e) => {
                tracing::error!(task = %run.task, error = %e, "maintenance run failed; it is retried after its lease")
            }
        }
        let finished = sqlx::query(
            "UPDATE maintenance_runs
                SET done_at = CASE WHEN $4::text IS NULL THEN now() END,
                    affected = $3, last_error = $4
              WHERE task = $1 AND scheduled_for = $2 AND lease_token = $5",
        )
        .bind(&run.task)
        .bind(run.scheduled_for)
        .bind(affected)
        .bind(error)
        .bind(run.lease_token)
        .execute(&self.pool)
        .await;
        if let Err(e) = finished {
            tracing::warn!(task = %run.task, error = %e, "recording a maintenance run failed; it runs again after its lease");
        }
    }
}

async fn enqueue(pool: &PgPool, task: Task, at: DateTime<Utc>) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO maintenance_runs (task, scheduled_for) VALUES ($1, $2)
         ON CONFLICT (task, scheduled_for) DO NOTHING",
    )
    .bind(task.name())
    .bind(at)
    .execute(pool)
    .await?;
    Ok(())
}

#[derive(sqlx::FromRow)]
struct ClaimedRun {
    task: String,
    scheduled_for: DateTime<Utc>,
    lease_token: Uuid,
}

async fn claim(pool: &PgPool, lease: Duration) -> sqlx::Result<Option<ClaimedRun>> {
    sqlx::query_as(
        "UPDATE maintenance_runs
            SET locked_until = now() + make_interval(secs => $1), lease_token = $2,
                attempts = attempts + 1
          WHERE (task, scheduled_for) IN (
                SELECT task, scheduled_for FROM maintenance_runs
                 WHERE done_at IS NULL AND attempts < 5
                   AND (locked_until IS NULL OR locked_until < now())
                 ORDER BY scheduled_for
                 LIMIT 1
                 FOR UPDATE SKIP LOCKED)
      RETURNING task, scheduled_for, lease_token",
    )
    .bind(lease.as_secs_f64())
    .bind(Uuid::new_v4())
    .fetch_optional(pool)
    .await
}

/// Runs one task to completion in batches; returns the rows changed.
async fn execute(
    pool: &PgPool,
    settings: &MaintenanceSettings,
    retention: &RetentionSettings,
    task: Task,
) -> sqlx::Result<u64> {
    // (statement, age in seconds): each statement changes at most `$2` rows
    // older than `$1` seconds.
    let (statement, age) = match task {
        Task::PurgeAttemptBodies => (
            "UPDATE delivery_attempts SET response_body = NULL
              WHERE ctid = ANY(ARRAY(
                    SELECT ctid FROM delivery_attempts
                     WHERE response_body IS NOT NULL
                       AND started_at < now() - make_interval(secs => $1)
                     LIMIT $2))",
            settings.attempt_body_retention_s,
        ),
        Task::ExpireIdempotencyKeys => (
            "UPDATE commands SET idempotency_key = NULL
              WHERE ctid = ANY(ARRAY(
                    SELECT ctid FROM commands
                     WHERE idempotency_key IS NOT NULL
                       AND status IN ('succeeded', 'failed')
                       AND created_at < now() - make_interval(secs => $1)
                     LIMIT $2))",
            settings.idempotency_key_ttl_s,
        ),
        Task::RetireSigningSecrets => (
            "DELETE FROM signing_secrets
              WHERE ctid = ANY(ARRAY(
                    SELECT ctid FROM signing_secrets
                     WHERE expires_at IS NOT NULL AND expires_at < now() - make_interval(secs => $1)
                     LIMIT $2))",
            0,
        ),
        Task::PurgeTokenJtis => (
            "DELETE FROM token_jtis
              WHERE ctid = ANY(ARRAY(
                    SELECT ctid FROM token_jtis
                     WHERE expires_at < now() - make_interval(secs => $1)
                     LIMIT $2))",
            // A minute past `exp + leeway`: jsonwebtoken accepts a token until
            // the end of its last whole second, and the API host's clock may run
            // a little behind the database's; a spent jti must outlive both.
            60,
        ),
        Task::PurgeEvents => (
            "DELETE FROM command_events
              WHERE ctid = ANY(ARRAY(
                    SELECT ctid FROM command_events
                     WHERE created_at < now() - make_interval(secs => $1)
                     LIMIT $2))",
            settings.event_retention_s,
        ),
        Task::PurgeFinished => {
            // Its own batched statement (several tables per command).
            return retention::purge_finished(pool, retention, settings.idempotency_key_ttl_s)
                .await;
        }
    };
    let mut total = 0;
    loop {
        let n = sqlx::query(statement)
            .bind(age as f64)
            .bind(BATCH)
            .execute(pool)
            .await?
            .rows_affected();
        total += n;
        if n < BATCH as u64 {
            break;
        }
    }
    // Housekeeping of the run records themselves rides along with any task.
    total += sqlx::query("DELETE FROM maintenance_runs WHERE done_at < now() - interval '7 days'")
        .execute(pool)
        .await?
        .rows_affected();
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cron_expressions_parse_and_fire_in_order() {
        let s = parse_cron("0 */5 * * * *").expect("parse");
        let mut it = s.upcoming(Utc);
        let (a, b) = (it.next().expect("a"), it.next().expect("b"));
        assert_eq!((b - a).num_seconds(), 300);
        assert!(parse_cron("every day").is_err());
    }

    #[test]
    fn task_names_round_trip() {
        for t in Task::ALL {
            assert_eq!(Task::parse(t.name()), Some(t));
        }
    }
}
