//! The jobs: what the outbox runner runs, one file per kind.
//!
//! A claimed row is decoded once, at claim ([`claim()`]), into a typed [`Job`]:
//! [`Job::Execute`] (call the upstream for a command, [`execute`]) or
//! [`Job::Deliver`] (send its callback, [`deliver`]). [`Job`] implements the
//! runner's [`BackgroundJob`] trait; the runner itself
//! ([`crate::outbox::runner`]) claims, renews leases, drains at shutdown and
//! knows no job kind. [`Dispatcher`] is the runner of these jobs, as a worker
//! process starts it.
//!
//! Every job first passes the same gate, in this order ([`Job::run`]): a job
//! whose command or delivery already finished is dropped (never act twice); a
//! job whose seal does not verify is quarantined; a job claimed more than
//! `dispatcher.max_claims` times is given up; only then does it act. Log lines
//! of jobs use the target `hookrelay::jobs` (and `hookrelay::command` for a
//! command's own story).

pub mod claim;
pub mod deliver;
pub mod execute;

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgRow;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::Settings;
use crate::delivery::host_limits::HostLimits;
use crate::delivery::Sender;
use crate::domain::{CommandStatus, DeliveryStatus, JobKind};
use crate::integration::resilience::{Policies, RetryBudget};
use crate::integration::Integrations;
use crate::outbox::{self, BackgroundJob, Claimed, Runner, RunnerSettings, Signals};
use crate::security::redact::Redactor;
use crate::security::seal::{JobSealer, SealError};
use crate::security::SecretSealer;

pub use deliver::DeliverJob;
pub use execute::ExecuteJob;

/// Everything a job needs, shared by all job tasks.
pub struct DispatchContext {
    /// Primary pool.
    pub pool: PgPool,
    /// Settings.
    pub settings: Arc<Settings>,
    /// Upstream clients.
    pub integrations: Arc<Integrations>,
    /// Webhook sender.
    pub sender: Sender,
    /// Per-callback-host concurrency limits.
    pub hosts: HostLimits,
    /// Per-integration resilience policies (shared with the admin view).
    pub policies: Arc<Policies>,
    /// Global retry budget for upstream calls.
    pub retry_budget: RetryBudget,
    /// Group writer for job outcomes (it also tracks which jobs are
    /// recording, so shutdown keeps their leases).
    pub outcomes: outbox::Outcomes,
    /// The process's wake-ups: job tasks that rescheduled a job wake the
    /// runner's loop; writes that changed a status announce events (see
    /// [`crate::outbox::signal`]).
    pub signals: Arc<Signals>,
    /// Opens the sealed signing secrets that the claim returns.
    pub sealer: Arc<SecretSealer>,
    /// Verifies job seals before a job acts, and seals new deliveries.
    pub job_sealer: Arc<JobSealer>,
    /// Masks secrets in stored upstream results, receiver answers, errors and logs.
    pub redactor: Arc<Redactor>,
}

/// The command a job belongs to, as claimed (both kinds read it).
#[derive(Debug, Clone)]
pub struct JobCommand {
    /// Command id.
    pub id: Uuid,
    /// Command owner.
    pub client_id: String,
    /// Integration name.
    pub integration: String,
    /// Operation name.
    pub operation: String,
    /// When the command was accepted (retry horizon; callback latency).
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// The command's callback URL (covered by the execute seal).
    pub callback_url: String,
}

/// A claimed job, decoded once at claim (see [`claim::decode`]).
#[derive(Debug, Clone)]
pub enum Job {
    /// Call the upstream for a command.
    Execute(ExecuteJob),
    /// Send a command's callback.
    Deliver(DeliverJob),
}

impl Job {
    /// The job's kind (the `jobs.kind` column).
    pub fn kind(&self) -> JobKind {
        match self {
            Job::Execute(_) => JobKind::Execute,
            Job::Deliver(_) => JobKind::Deliver,
        }
    }

    /// The command the job belongs to.
    pub fn command(&self) -> &JobCommand {
        match self {
            Job::Execute(j) => &j.command,
            Job::Deliver(j) => &j.command,
        }
    }

    /// Whether the job's command (execute) or delivery (deliver) has already
    /// finished, so the job has nothing left to do (the command's or
    /// delivery's state, not the job row, decides).
    fn nothing_to_do(&self) -> bool {
        match self {
            Job::Execute(j) => j.status.is_terminal(),
            Job::Deliver(j) => j.status != Some(DeliveryStatus::Pending),
        }
    }

    /// Checks the seal of the row the job acts on (see [`crate::security::seal`]).
    fn verify_seal(&self, ctx: &DispatchContext) -> Result<(), SealError> {
        match self {
            Job::Execute(j) => ctx
                .job_sealer
                .verify_execute(j.seal.as_deref(), &j.execute_seal()),
            Job::Deliver(j) => ctx
                .job_sealer
                .verify_deliver(j.seal.as_deref(), &j.deliver_seal()),
        }
    }
}

/// Claims up to `limit` ready jobs for `lease` and decodes them (the
/// runner's claim for these jobs; tools and tests use it directly).
///
/// # Errors
/// Database errors.
pub async fn claim(
    pool: &PgPool,
    limit: usize,
    lease: Duration,
) -> sqlx::Result<Vec<Claimed<Job>>> {
    outbox::runner::claim::<Job>(pool, limit, lease).await
}

impl BackgroundJob for Job {
    type Context = DispatchContext;

    const CLAIM_SELECT: &'static str = claim::CLAIM_SELECT;

    fn decode(row: &PgRow) -> Claimed<Self> {
        claim::decode(row)
    }

    fn span(claimed: &Claimed<Self>) -> tracing::Span {
        tracing::info_span!(
            target: "hookrelay::jobs",
            "job",
            job_id = claimed.id,
            kind = %claimed.job.kind(),
            command_id = %claimed.job.command().id,
            attempt = claimed.attempts
        )
    }

    /// How long a job released at shutdown stays unclaimable: the longest
    /// call it may have had in flight when it was aborted — its integration's
    /// `timeout_ms` (or its fallback integration's, if longer; at least
    /// `delivery.timeout_ms`, since the same task sends the first callback)
    /// for an execute job, `delivery.timeout_ms` for a deliver job. Until then the vendor or
    /// receiver may still be working on the aborted call, and repeating it at
    /// once would run it twice concurrently.
    fn release_hold(&self, ctx: &DispatchContext) -> Duration {
        match self {
            // An execute job's task goes on to send the first callback.
            Job::Execute(j) => j
                .release_hold(ctx)
                .max(Duration::from_millis(ctx.settings.delivery.timeout_ms)),
            Job::Deliver(_) => Duration::from_millis(ctx.settings.delivery.timeout_ms),
        }
    }

    async fn run(claimed: Claimed<Self>, ctx: &DispatchContext) -> sqlx::Result<bool> {
        let claims = u32::try_from(claimed.attempts).unwrap_or(u32::MAX);
        if claimed.job.nothing_to_do() {
            // A duplicate or late job for a finished command or delivery:
            // never act twice.
            return outbox::store::drop_job(&ctx.pool, claimed.id, claimed.lease_token).await;
        }
        if let Err(error) = claimed.job.verify_seal(ctx) {
            return quarantine(ctx, &claimed, &error).await;
        }
        if claims > ctx.settings.dispatcher.max_claims {
            return give_up(ctx, &claimed).await;
        }
        let Claimed {
            id,
            lease_token,
            attempts,
            job,
            ..
        } = claimed;
        match job {
            Job::Execute(job) => {
                let lease = Lease {
                    id,
                    lease_token,
                    attempts,
                };
                execute::run(ctx, &lease, &job).await
            }
            Job::Deliver(job) => {
                let lease = Lease {
                    id,
                    lease_token,
                    attempts,
                };
                deliver::run(ctx, &lease, &job).await
            }
        }
    }

    /// Ends a job whose row did not decode at claim, without running it and
    /// without retrying it — unless it has nothing left to do anyway (then it
    /// is dropped, as any such job): an execute job's command fails with the
    /// reason in its result (`error`: `undecodable: …`), which its callback
    /// carries like any failure — if the seal over what did decode still
    /// verifies, else it is quarantined; a deliver job is dead-lettered with
    /// reason `undecodable`. Counted in `hookrelay_jobs_quarantined_total`.
    async fn on_undecodable(
        claimed: Claimed<Self>,
        why: String,
        ctx: &DispatchContext,
    ) -> sqlx::Result<bool> {
        if claimed.job.nothing_to_do() {
            return outbox::store::drop_job(&ctx.pool, claimed.id, claimed.lease_token).await;
        }
        crate::telemetry::metrics::job_quarantined(claimed.job.kind().as_str());
        let why = format!("undecodable: {why}; not executed");
        let lease = Lease::of(&claimed);
        match &claimed.job {
            Job::Execute(job) => {
                if let Err(error) = claimed.job.verify_seal(ctx) {
                    tracing::error!(target: "hookrelay::jobs", job_id = claimed.id, %error, "an undecodable job's seal does not verify either");
                    let done = outbox::store::quarantine(
                        &ctx.pool,
                        claimed.id,
                        claimed.lease_token,
                        &format!("{why}; {error}"),
                    )
                    .await?;
                    if done {
                        ctx.signals.events_committed();
                    }
                    return Ok(done);
                }
                execute::finish(
                    ctx,
                    &lease,
                    job,
                    CommandStatus::Failed,
                    &crate::integration::UpstreamResult::no_response(why),
                )
                .await
            }
            Job::Deliver(job) => {
                deliver::dead_letter_unsent(ctx, &lease, job, why, "undecodable").await
            }
        }
    }
}

/// The lease of a running job: what every write of its outcome matches.
#[derive(Debug, Clone, Copy)]
pub struct Lease {
    /// Job id.
    pub id: i64,
    /// This claim's lease token.
    pub lease_token: Uuid,
    /// Claims of this job so far, this one included (1-based attempt number).
    pub attempts: i32,
}

impl Lease {
    fn of<J>(claimed: &Claimed<J>) -> Self {
        Lease {
            id: claimed.id,
            lease_token: claimed.lease_token,
            attempts: claimed.attempts,
        }
    }

    /// The attempt number, for schedules and budgets.
    fn attempt(&self) -> u32 {
        u32::try_from(self.attempts).unwrap_or(u32::MAX)
    }
}

/// Ends a job whose rows fail seal verification without running it (no
/// upstream call, no callback): dead letter `integrity`, logged at error,
/// counted in `hookrelay_jobs_quarantined_total`.
async fn quarantine(
    ctx: &DispatchContext,
    claimed: &Claimed<Job>,
    error: &SealError,
) -> sqlx::Result<bool> {
    let delivery_id = match &claimed.job {
        Job::Deliver(j) => Some(j.delivery_id),
        Job::Execute(_) => None,
    };
    tracing::error!(
        target: "hookrelay::jobs",
        job_id = claimed.id,
        kind = %claimed.job.kind(),
        command_id = %claimed.job.command().id,
        delivery_id = ?delivery_id,
        %error,
        "job failed seal verification; quarantined without being executed"
    );
    let done = outbox::store::quarantine(
        &ctx.pool,
        claimed.id,
        claimed.lease_token,
        &error.to_string(),
    )
    .await?;
    if done {
        ctx.signals.events_committed();
        crate::telemetry::metrics::job_quarantined(claimed.job.kind().as_str());
    }
    Ok(done)
}

/// Ends a poison job: claimed more than `dispatcher.max_claims` times without
/// an outcome (its worker keeps dying on it, or its outcome cannot be stored).
/// Nothing of what the job produced is written, only the verdict.
async fn give_up(ctx: &DispatchContext, claimed: &Claimed<Job>) -> sqlx::Result<bool> {
    let why = format!(
        "abandoned after {} claims without a recorded outcome",
        claimed.attempts - 1
    );
    tracing::error!(target: "hookrelay::jobs", job_id = claimed.id, kind = %claimed.job.kind(), "{why}");
    let lease = Lease::of(claimed);
    match &claimed.job {
        Job::Deliver(job) => deliver::dead_letter_unsent(ctx, &lease, job, why, "abandoned").await,
        Job::Execute(job) => {
            let result = crate::integration::UpstreamResult::no_response(why);
            execute::finish(ctx, &lease, job, CommandStatus::Failed, &result).await
        }
    }
}

/// Puts the job back for `delay` without spending an attempt, and wakes the
/// loop so it reconsiders when to claim next.
async fn defer(ctx: &DispatchContext, lease: &Lease, delay: Duration) -> sqlx::Result<bool> {
    tracing::debug!(
        target: "hookrelay::jobs",
        delay_ms = delay.as_millis() as u64,
        "job deferred without spending an attempt"
    );
    let done = outbox::store::defer(&ctx.pool, lease.id, lease.lease_token, delay).await?;
    ctx.signals.wake_runner();
    Ok(done)
}

/// The outbox runner of one worker process, running [`Job`]s.
pub struct Dispatcher(Runner<Job>);

impl Dispatcher {
    /// A dispatcher over `ctx`, with the runner's knobs from
    /// `ctx.settings.dispatcher`.
    pub fn new(ctx: DispatchContext) -> Self {
        let d = &ctx.settings.dispatcher;
        let settings = RunnerSettings {
            concurrency: d.concurrency,
            claim_batch: d.claim_batch,
            lease: Duration::from_secs(d.lease_s),
            poll: Duration::from_millis(d.poll_interval_ms),
            grace: ctx.settings.shutdown_grace(),
        };
        let (pool, outcomes, signals) =
            (ctx.pool.clone(), ctx.outcomes.clone(), ctx.signals.clone());
        Dispatcher(Runner::new(
            Arc::new(ctx),
            pool,
            settings,
            outcomes,
            signals,
        ))
    }

    /// Runs until `cancel` fires, then drains (see [`crate::outbox::runner`]).
    ///
    /// # Errors
    /// Only if the `LISTEN` connection cannot be opened at start.
    pub async fn run(self, cancel: CancellationToken) -> anyhow::Result<()> {
        self.0.run(cancel).await
    }
}
