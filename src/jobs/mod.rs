//! The dispatcher: claims jobs from the outbox and runs them.
//!
//! One loop per worker process keeps up to `dispatcher.concurrency` jobs in
//! flight. It claims as many jobs as it has free slots (at most
//! `dispatcher.claim_batch` per statement); when the outbox has nothing ready it
//! sleeps until the first of: a `NOTIFY hookrelay_jobs` (new work), the next
//! scheduled retry's `run_at`, or the safety-net poll interval.
//!
//! On cancellation (SIGTERM) it stops claiming, lets in-flight jobs finish for
//! `dispatcher.shutdown_grace_s`, then aborts the rest and releases their
//! leases. An aborted call may still be running at the other end, so a
//! released job becomes claimable only once that call's timeout could have
//! passed (see `release_hold`); another worker then repeats it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::FallbackSettings;
use crate::config::Settings;
use crate::delivery::{next_delay, AttemptOutcome, Sender, WebhookBody, WebhookData};
use crate::domain::{CommandStatus, DeliveryStatus, JobKind, JsonText};
use crate::integration::resilience::{Admission, Policies, RetryBudget};
use crate::integration::{backoff, CallOutcome, Integrations, UpstreamRequest, UpstreamResult};
use crate::outbox::{self, AfterAttempt, AttemptRecord, ClaimedJob, Finish, Outcome};
use crate::security::redact::Redactor;
use crate::security::seal::{DeliverSeal, JobSealer, SealError};
use crate::security::{ensure_signing_secrets, SecretSealer, SecretStoreError};

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
    /// Group writer for job outcomes.
    pub outcomes: outbox::Outcomes,
    /// Jobs whose outcome is queued for writing: shutdown must not release
    /// their leases, or the queued outcome would find no lease and be lost.
    pub recording: Mutex<std::collections::HashSet<i64>>,
    /// Wakes the dispatcher loop: NOTIFY arrivals, and job tasks that
    /// rescheduled a retry (an UPDATE fires no NOTIFY).
    pub wake: Arc<Notify>,
    /// Opens the sealed signing secrets that the claim returns.
    pub sealer: Arc<SecretSealer>,
    /// Verifies job seals before a job acts, and seals new deliveries.
    pub job_sealer: Arc<JobSealer>,
    /// Masks secrets in stored upstream results, receiver answers, errors and logs.
    pub redactor: Arc<Redactor>,
}

/// The outbox dispatcher of one worker process.
pub struct Dispatcher {
    ctx: Arc<DispatchContext>,
    /// Running jobs: lease token and how long to hold the job back if it is
    /// released at shutdown ([`release_hold`]).
    in_flight: Arc<Mutex<HashMap<i64, (Uuid, Duration)>>>,
}

impl Dispatcher {
    /// A dispatcher over `ctx`.
    pub fn new(ctx: DispatchContext) -> Self {
        Dispatcher {
            ctx: Arc::new(ctx),
            in_flight: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Runs until `cancel` fires, then drains as described in the module docs.
    ///
    /// # Errors
    /// Only if the `LISTEN` connection cannot be opened at start.
    pub async fn run(self, cancel: CancellationToken) -> anyhow::Result<()> {
        let settings = self.ctx.settings.clone();
        let mut listener = PgListener::connect_with(&self.ctx.pool).await?;
        listener.listen(outbox::CHANNEL).await?;
        let listen_task = tokio::spawn(listen(listener, self.ctx.wake.clone(), cancel.clone()));
        let lag_task = tokio::spawn(sample_outbox_lag(self.ctx.pool.clone(), cancel.clone()));

        let concurrency = settings.dispatcher.concurrency;
        let batch = settings.dispatcher.claim_batch;
        let lease = Duration::from_secs(settings.dispatcher.lease_s);
        let poll = Duration::from_millis(settings.dispatcher.poll_interval_ms);
        let slots = Arc::new(Semaphore::new(concurrency));
        let mut tasks = JoinSet::new();
        tracing::info!(concurrency, batch, "dispatcher started");

        loop {
            let first = tokio::select! {
                p = slots.clone().acquire_owned() => p?,
                () = cancel.cancelled() => break,
            };
            let mut permits = vec![first];
            while permits.len() < batch {
                match slots.clone().try_acquire_owned() {
                    Ok(p) => permits.push(p),
                    Err(_) => break,
                }
            }
            let wanted = permits.len();
            let jobs = match outbox::claim(&self.ctx.pool, wanted, lease).await {
                Ok(jobs) => jobs,
                Err(e) => {
                    tracing::error!(error = %e, "claiming jobs failed; retrying in 1 s");
                    drop(permits);
                    sleep_or_cancel(Duration::from_secs(1), &cancel).await;
                    continue;
                }
            };
            let got = jobs.len();
            for job in jobs {
                let Some(permit) = permits.pop() else { break };
                self.spawn_job(&mut tasks, job, permit);
            }
            drop(permits);
            while let Some(done) = tasks.try_join_next() {
                if let Err(e) = done {
                    tracing::error!(error = %e, "job task panicked; its lease will expire");
                }
            }
            if got < wanted {
                let wait = match outbox::time_to_next_job(&self.ctx.pool).await {
                    // A ready job we could not claim is locked by another
                    // claimer: do not spin on it.
                    Ok(Some(d)) => d.min(poll).max(Duration::from_millis(20)),
                    Ok(None) => poll,
                    Err(e) => {
                        tracing::warn!(error = %e, "reading the next run time failed");
                        poll
                    }
                };
                tokio::select! {
                    () = self.ctx.wake.notified() => {}
                    () = tokio::time::sleep(wait) => {}
                    () = cancel.cancelled() => break,
                }
            }
        }

        let in_flight = self.in_flight.lock().map(|m| m.len()).unwrap_or(0);
        tracing::info!(in_flight, "dispatcher draining");
        let grace = settings.shutdown_grace();
        let drained =
            tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
            let recording = self
                .ctx
                .recording
                .lock()
                .map(|r| r.clone())
                .unwrap_or_default();
            let held: Vec<(i64, Uuid, Duration)> = self
                .in_flight
                .lock()
                .map(|m| {
                    m.iter()
                        .filter(|(k, _)| !recording.contains(k))
                        .map(|(k, (token, hold))| (*k, *token, *hold))
                        .collect()
                })
                .unwrap_or_default();
            match outbox::release(&self.ctx.pool, &held).await {
                Ok(n) => tracing::info!(released = n, "released leases of unfinished jobs"),
                Err(e) => {
                    tracing::error!(error = %e, "releasing leases failed; they expire on their own")
                }
            }
        }
        listen_task.abort();
        lag_task.abort();
        tracing::info!("dispatcher stopped");
        Ok(())
    }

    fn spawn_job(&self, tasks: &mut JoinSet<()>, job: ClaimedJob, permit: OwnedSemaphorePermit) {
        let hold = release_hold(&self.ctx, &job);
        if let Ok(mut m) = self.in_flight.lock() {
            m.insert(job.id, (job.lease_token, hold));
        }
        let ctx = self.ctx.clone();
        let in_flight = self.in_flight.clone();
        tasks.spawn(async move {
            let (id, token) = (job.id, job.lease_token);
            let lease = Duration::from_secs(ctx.settings.dispatcher.lease_s);
            tokio::select! {
                () = run_job(&ctx, job) => {}
                () = keep_lease(&ctx.pool, id, token, lease) => {
                    tracing::warn!(job_id = id, "lease taken over while running; abandoning the job to its new owner");
                }
            }
            if let Ok(mut m) = in_flight.lock() {
                m.remove(&id);
            }
            drop(permit);
        });
    }
}

/// How long a job released at shutdown stays unclaimable: the longest call
/// it may have had in flight when it was aborted — its integration's
/// `timeout_ms` (or its fallback integration's, if longer) for an execute
/// job, `delivery.timeout_ms` for a deliver job. Until then the vendor or
/// receiver may still be working on the aborted call, and repeating it at
/// once would run it twice concurrently.
fn release_hold(ctx: &DispatchContext, job: &ClaimedJob) -> Duration {
    match job.kind {
        JobKind::Execute => {
            let Some(integration) = ctx.integrations.get(&job.integration) else {
                return Duration::ZERO;
            };
            let fallback = integration
                .operation(&job.operation)
                .and_then(|op| op.fallback.as_ref())
                .and_then(|fb| fb.integration.as_deref())
                .and_then(|name| ctx.integrations.get(name))
                .map_or(0, |fb| fb.settings.timeout_ms);
            Duration::from_millis(integration.settings.timeout_ms.max(fallback))
        }
        JobKind::Deliver => Duration::from_millis(ctx.settings.delivery.timeout_ms),
    }
}

/// Renews a running job's lease every third of its length; returns only when
/// the lease turned out to be someone else's (a database error is retried at
/// the next beat: the remaining two thirds of the lease are the margin).
async fn keep_lease(pool: &PgPool, job_id: i64, token: Uuid, lease: Duration) {
    loop {
        tokio::time::sleep(lease / 3).await;
        match outbox::renew_lease(pool, job_id, token, lease).await {
            Ok(true) => tracing::debug!(job_id, "lease renewed"),
            Ok(false) => return,
            Err(e) => {
                tracing::warn!(job_id, error = %e, "renewing a lease failed; retrying at the next beat")
            }
        }
    }
}

/// Per-callback-host concurrency limit (`delivery.max_in_flight_per_host`), so
/// one slow partner cannot occupy every dispatcher slot.
pub struct HostLimits {
    limit: usize,
    hosts: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl HostLimits {
    /// How long a delivery waits for a slot of its host before it is deferred.
    const WAIT: Duration = Duration::from_millis(250);

    /// Limits of `limit` concurrent attempts per `host:port`.
    pub fn new(limit: usize) -> Self {
        HostLimits {
            limit,
            hosts: Mutex::new(HashMap::new()),
        }
    }

    /// A slot for `url`'s host, waiting up to [`Self::WAIT`]; `None` when the
    /// host stays at its limit.
    async fn acquire(&self, url: &str) -> Option<OwnedSemaphorePermit> {
        let key = url::Url::parse(url)
            .ok()
            .map(|u| {
                format!(
                    "{}:{}",
                    u.host_str().unwrap_or(""),
                    u.port_or_known_default().unwrap_or(0)
                )
            })
            .unwrap_or_default();
        let semaphore = {
            let mut hosts = self.hosts.lock().ok()?;
            if hosts.len() > 10_000 {
                // Forget idle hosts so the map cannot grow without bound.
                hosts.retain(|_, s| s.available_permits() < self.limit);
            }
            hosts
                .entry(key)
                .or_insert_with(|| Arc::new(Semaphore::new(self.limit)))
                .clone()
        };
        tokio::time::timeout(Self::WAIT, semaphore.acquire_owned())
            .await
            .ok()?
            .ok()
    }
}

async fn listen(mut listener: PgListener, wake: Arc<Notify>, cancel: CancellationToken) {
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            n = listener.recv() => match n {
                Ok(_) => wake.notify_one(),
                Err(e) => {
                    tracing::warn!(error = %e, "LISTEN connection failed; the poll covers until it is back");
                    wake.notify_one();
                    sleep_or_cancel(Duration::from_secs(1), &cancel).await;
                }
            }
        }
    }
}

/// How often a worker samples `hookrelay_outbox_lag_seconds`.
const LAG_SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// Samples the age of the oldest ready job into its gauge until `cancel`.
async fn sample_outbox_lag(pool: PgPool, cancel: CancellationToken) {
    loop {
        match outbox::oldest_ready_age(&pool).await {
            Ok(age) => crate::telemetry::metrics::outbox_lag(age.as_secs_f64()),
            Err(e) => tracing::debug!(error = %e, "sampling the outbox lag failed"),
        }
        tokio::select! {
            () = tokio::time::sleep(LAG_SAMPLE_EVERY) => {}
            () = cancel.cancelled() => return,
        }
    }
}

async fn sleep_or_cancel(d: Duration, cancel: &CancellationToken) {
    tokio::select! {
        () = tokio::time::sleep(d) => {}
        () = cancel.cancelled() => {}
    }
}

/// Runs one claimed job. Outcome writes are retried while the lease is held
/// (see [`record`]); other database errors are logged, and the lease then
/// expires and the job runs again (at-least-once).
#[tracing::instrument(
    name = "job",
    skip_all,
    fields(job_id = job.id, kind = %job.kind, command_id = %job.command_id, attempt = job.attempts)
)]
async fn run_job(ctx: &DispatchContext, job: ClaimedJob) {
    let claims = u32::try_from(job.attempts).unwrap_or(u32::MAX);
    let result = if nothing_to_do(&job) {
        // A duplicate or late job for a finished command or delivery (the
        // command's state, not the job row, decides): never act twice.
        outbox::drop_job(&ctx.pool, &job).await
    } else if let Some(why) = job.undecodable.clone() {
        fail_undecodable(ctx, &job, &why).await
    } else if let Err(error) = verify_seal(ctx, &job) {
        quarantine(ctx, &job, &error).await
    } else if claims > ctx.settings.dispatcher.max_claims {
        give_up(ctx, &job).await
    } else {
        match job.kind {
            JobKind::Execute => execute(ctx, &job).await,
            JobKind::Deliver => deliver(ctx, &job).await,
        }
    };
    match result {
        Ok(true) => {}
        Ok(false) => tracing::warn!(
            "lease lost before the outcome was recorded; another worker owns the job"
        ),
        Err(e) => {
            tracing::error!(error = %e, "recording the job outcome failed; the job will run again after its lease")
        }
    }
}

/// Whether the job's command (execute) or delivery (deliver) has already
/// finished, so the job has nothing left to do.
fn nothing_to_do(job: &ClaimedJob) -> bool {
    match job.kind {
        JobKind::Execute => job.command_status.is_terminal(),
        JobKind::Deliver => job.delivery_status != Some(DeliveryStatus::Pending),
    }
}

/// Checks the seal of the row the job acts on (see [`crate::security::seal`]).
fn verify_seal(ctx: &DispatchContext, job: &ClaimedJob) -> Result<(), SealError> {
    match job.kind {
        JobKind::Execute => ctx
            .job_sealer
            .verify_execute(job.command_seal.as_deref(), &job.execute_seal()),
        JobKind::Deliver => match job.deliver_seal() {
            Some(fields) => ctx
                .job_sealer
                .verify_deliver(job.delivery_seal.as_deref(), &fields),
            None => Err(SealError::Missing),
        },
    }
}

/// Ends a job whose rows fail seal verification without running it (no
/// upstream call, no callback): dead letter `integrity`, logged at error,
/// counted in `hookrelay_jobs_quarantined_total`.
async fn quarantine(
    ctx: &DispatchContext,
    job: &ClaimedJob,
    error: &SealError,
) -> sqlx::Result<bool> {
    tracing::error!(
        job_id = job.id,
        kind = %job.kind,
        command_id = %job.command_id,
        delivery_id = ?job.delivery_id,
        %error,
        "job failed seal verification; quarantined without being executed"
    );
    let done = outbox::quarantine(&ctx.pool, job, &error.to_string()).await?;
    if done {
        crate::telemetry::metrics::job_quarantined(job.kind.as_str());
    }
    Ok(done)
}

/// Ends a job whose rows did not decode at claim ([`ClaimedJob::undecodable`])
/// on its own, without running it and without retrying it: an execute job's
/// command fails with the reason in its result (`error`: `undecodable: …`),
/// which its callback carries like any failure — if the seal over what did
/// decode still verifies, else it is quarantined; a deliver job is
/// dead-lettered with reason `undecodable`.
async fn fail_undecodable(
    ctx: &DispatchContext,
    job: &ClaimedJob,
    why: &str,
) -> sqlx::Result<bool> {
    crate::telemetry::metrics::job_quarantined(job.kind.as_str());
    let why = format!("undecodable: {why}; not executed");
    if job.kind == JobKind::Execute {
        if let Err(error) = verify_seal(ctx, job) {
            tracing::error!(job_id = job.id, %error, "an undecodable job's seal does not verify either");
            return outbox::quarantine(&ctx.pool, job, &format!("{why}; {error}")).await;
        }
        return finish(
            ctx,
            job,
            CommandStatus::Failed,
            &UpstreamResult::no_response(why),
        )
        .await;
    }
    dead_letter_unsent(ctx, job, why, "undecodable").await
}

/// Dead-letters a deliver job with `reason` without sending anything; the
/// attempt log records why (`error` = `why`, no response).
async fn dead_letter_unsent(
    ctx: &DispatchContext,
    job: &ClaimedJob,
    why: String,
    reason: &'static str,
) -> sqlx::Result<bool> {
    record(
        ctx,
        job.id,
        Outcome::Attempt(AttemptRecord {
            job_id: job.id,
            lease_token: job.lease_token,
            outcome: crate::delivery::AttemptOutcome::not_sent(why),
            next: AfterAttempt::DeadLettered(reason),
            trigger: job.trigger.clone(),
        }),
    )
    .await
}

/// First wait before writing a failed outcome again; doubled per failure up
/// to [`RECORD_RETRY_MAX`].
const RECORD_RETRY_FIRST: Duration = Duration::from_millis(50);
/// Longest wait between two tries of an outcome write.
const RECORD_RETRY_MAX: Duration = Duration::from_secs(2);
/// Tries of an outcome write that failed for a reason other than the database
/// being unavailable (`batch::is_transient`), which retrying rarely fixes.
const RECORD_TRIES_NON_TRANSIENT: u32 = 3;

/// Queues an outcome with the group writer and waits for its commit, marking
/// the job as recording meanwhile (see [`DispatchContext::recording`]).
///
/// The outcome is the only record that the call happened: if it is not
/// written, the lease runs out and another claim repeats the call. So a
/// failed write is tried again with backoff (50 ms doubling to 2 s) for as
/// long as this worker holds the lease: the job task renews it meanwhile and
/// drops this future once the lease turns out to be someone else's (or the
/// shutdown grace is over). Every try is matched by lease token, so a late
/// try never overwrites a new owner's work, and a try whose commit succeeded
/// but whose answer was lost finds the job gone and returns `Ok(false)`.
/// Each try is its own item of the group writer, so a retrying job never
/// holds back other jobs' outcomes. A failure other than the database being
/// unavailable is tried [`RECORD_TRIES_NON_TRANSIENT`] times, then returned.
async fn record(ctx: &DispatchContext, job_id: i64, outcome: Outcome) -> sqlx::Result<bool> {
    if let Ok(mut r) = ctx.recording.lock() {
        r.insert(job_id);
    }
    let mut delay = RECORD_RETRY_FIRST;
    let mut non_transient = 0;
    let done = loop {
        match ctx.outcomes.record(outcome.clone()).await {
            Ok(done) => break Ok(done),
            Err(e) => {
                if !crate::db::batch::is_transient(&e) {
                    non_transient += 1;
                    if non_transient >= RECORD_TRIES_NON_TRANSIENT {
                        break Err(e);
                    }
                }
                tracing::warn!(job_id, error = %e, retry_in_ms = delay.as_millis() as u64,
                    "recording the job outcome failed; retrying while the lease is held");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(RECORD_RETRY_MAX);
            }
        }
    };
    if let Ok(mut r) = ctx.recording.lock() {
        r.remove(&job_id);
    }
    done
}

/// Ends a poison job: claimed more than `dispatcher.max_claims` times without
/// an outcome (its worker keeps dying on it, or its outcome cannot be stored).
/// Nothing of what the job produced is written, only the verdict.
async fn give_up(ctx: &DispatchContext, job: &ClaimedJob) -> sqlx::Result<bool> {
    let why = format!(
        "abandoned after {} claims without a recorded outcome",
        job.attempts - 1
    );
    tracing::error!(job_id = job.id, kind = %job.kind, "{why}");
    if job.kind == JobKind::Deliver {
        return dead_letter_unsent(ctx, job, why, "abandoned").await;
    }
    let result = UpstreamResult::no_response(why);
    finish(ctx, job, CommandStatus::Failed, &result).await
}

/// Runs an execute job. A job for a finished command never gets here
/// ([`nothing_to_do`] drops it first): the upstream is never called twice.
async fn execute(ctx: &DispatchContext, job: &ClaimedJob) -> sqlx::Result<bool> {
    let (Some(integration), Some(policy)) = (
        ctx.integrations.get(&job.integration),
        ctx.policies.get(&job.integration),
    ) else {
        let result = UpstreamResult::no_response(format!(
            "integration `{}` is no longer configured",
            job.integration
        ));
        return finish(ctx, job, CommandStatus::Failed, &result).await;
    };
    let ticket = match policy.admit().await {
        Admission::Go(ticket) => ticket,
        Admission::Wait { delay, reason } => {
            crate::telemetry::metrics::throttled(&job.integration, reason);
            crate::telemetry::metrics::upstream_call(
                &job.integration,
                &job.operation,
                "throttled",
                0.0,
            );
            return defer(ctx, job, delay).await;
        }
        Admission::Open { remaining } => {
            crate::telemetry::metrics::upstream_call(&job.integration, &job.operation, "open", 0.0);
            let fallback = integration
                .operation(&job.operation)
                .and_then(|op| op.fallback.as_ref());
            return match fallback {
                Some(fb) => run_fallback(ctx, job, fb, remaining).await,
                None => defer(ctx, job, remaining).await,
            };
        }
    };
    let attempt = u32::try_from(job.attempts).unwrap_or(u32::MAX);
    if attempt > 1 && !ctx.retry_budget.try_withdraw() {
        // Retries may use only a fraction of all calls: wait for the budget.
        policy.record(ticket, None, None);
        crate::telemetry::metrics::throttled(&job.integration, "budget");
        return defer(ctx, job, Duration::from_secs(1)).await;
    }
    if attempt <= 1 {
        ctx.retry_budget.deposit();
    }
    let request = UpstreamRequest {
        command_id: job.command_id,
        operation: &job.operation,
        method: &job.method,
        path: &job.path,
        body: job.body.as_deref(),
    };
    let called = integration.call(&request).await;
    policy.record_call(
        ticket,
        called.vendor_failed(),
        called.vendor,
        Some(called.duration),
    );
    match called.outcome {
        CallOutcome::Succeeded(result) => finish(ctx, job, CommandStatus::Succeeded, &result).await,
        CallOutcome::Rejected(result) => finish(ctx, job, CommandStatus::Failed, &result).await,
        CallOutcome::Retryable {
            result,
            retry_after,
        } => {
            let horizon = Duration::from_secs(integration.settings.retry_horizon_s);
            let age = (chrono::Utc::now() - job.command_created_at)
                .to_std()
                .unwrap_or_default();
            if attempt >= integration.settings.max_attempts || age >= horizon {
                return finish(ctx, job, CommandStatus::Failed, &result).await;
            }
            let mut delay = backoff(attempt, integration.settings.retry_backoff_ms);
            if let Some(ra) = retry_after {
                delay =
                    delay.max(ra.min(Duration::from_secs(ctx.settings.delivery.max_retry_after_s)));
            }
            let error = result
                .error
                .clone()
                .or_else(|| result.status_code.map(|s| format!("HTTP {s}")))
                .unwrap_or_default();
            let error = ctx.redactor.text(&error).into_owned();
            tracing::info!(target: "hookrelay::command", %error, delay_ms = delay.as_millis() as u64, "upstream call failed; retrying");
            crate::telemetry::metrics::upstream_retry(&job.integration, &job.operation);
            let done = outbox::retry_execute(&ctx.pool, job, delay, &error).await?;
            ctx.wake.notify_one();
            Ok(done)
        }
    }
}

/// Puts the job back for `delay` without spending an attempt, and wakes the
/// loop so it reconsiders when to claim next.
async fn defer(ctx: &DispatchContext, job: &ClaimedJob, delay: Duration) -> sqlx::Result<bool> {
    tracing::debug!(
        delay_ms = delay.as_millis() as u64,
        "job deferred without spending an attempt"
    );
    let done = outbox::defer(&ctx.pool, job, delay).await?;
    ctx.wake.notify_one();
    Ok(done)
}

/// Answers a command from its operation's fallback while the primary's breaker
/// is open: a static response, or the fallback integration's operation (through
/// that integration's own policy). The result is marked `fallback: true`. If the
/// fallback cannot answer now, the command waits for the primary's cool-down.
async fn run_fallback(
    ctx: &DispatchContext,
    job: &ClaimedJob,
    fallback: &FallbackSettings,
    remaining: Duration,
) -> sqlx::Result<bool> {
    crate::telemetry::metrics::fallback_used(&job.integration, &job.operation);
    if let Some(status) = fallback.status {
        let result = UpstreamResult {
            status_code: Some(status),
            body: fallback
                .body
                .as_ref()
                .map_or_else(JsonText::null, JsonText::from_value),
            truncated: false,
            error: None,
            fallback: true,
        };
        let outcome = if (200..300).contains(&status) {
            CommandStatus::Succeeded
        } else {
            CommandStatus::Failed
        };
        return finish(ctx, job, outcome, &result).await;
    }
    let (Some(name), Some(op_name)) = (&fallback.integration, &fallback.operation) else {
        return defer(ctx, job, remaining).await;
    };
    let (Some(target), Some(policy)) = (ctx.integrations.get(name), ctx.policies.get(name)) else {
        return defer(ctx, job, remaining).await;
    };
    let Some(op) = target.operation(op_name) else {
        return defer(ctx, job, remaining).await;
    };
    let path = match op
        .path
        .fill_subset(&serde_json::from_str(&job.params).unwrap_or_default())
    {
        Ok(p) => p,
        _ => return defer(ctx, job, remaining).await,
    };
    let Admission::Go(ticket) = policy.admit().await else {
        return defer(ctx, job, remaining).await;
    };
    let request = UpstreamRequest {
        command_id: job.command_id,
        operation: op_name,
        method: op.method.as_str(),
        path: &path,
        body: job.body.as_deref(),
    };
    let called = target.call(&request).await;
    policy.record_call(
        ticket,
        called.vendor_failed(),
        called.vendor,
        Some(called.duration),
    );
    tracing::info!(target: "hookrelay::command", integration = %job.integration, fallback = %name, "answered by the fallback");
    match called.outcome {
        CallOutcome::Succeeded(mut result) => {
            result.fallback = true;
            finish(ctx, job, CommandStatus::Succeeded, &result).await
        }
        CallOutcome::Rejected(mut result) => {
            result.fallback = true;
            finish(ctx, job, CommandStatus::Failed, &result).await
        }
        CallOutcome::Retryable { .. } => defer(ctx, job, remaining).await,
    }
}

/// Ends a command: stores its result and creates its delivery with the body
/// signed on every attempt (serialised once here).
async fn finish(
    ctx: &DispatchContext,
    job: &ClaimedJob,
    status: CommandStatus,
    result: &UpstreamResult,
) -> sqlx::Result<bool> {
    let event = match status {
        CommandStatus::Succeeded => "command.succeeded",
        _ => "command.failed",
    };
    // What the upstream said is outside text: masked before it is stored
    // (commands.result) and before it becomes the callback's data.result.
    let mut result = result.clone();
    result.body = ctx.redactor.json_text(&result.body);
    result.error = ctx.redactor.opt_text(result.error);
    let result = &result;
    let body = WebhookBody {
        type_: event,
        timestamp: chrono::Utc::now(),
        data: WebhookData {
            command_id: job.command_id,
            integration: &job.integration,
            operation: &job.operation,
            status: status.as_str(),
            result,
        },
    };
    let payload = serde_json::to_string(&body).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    let delivery_id = Uuid::now_v7();
    let seal = ctx.job_sealer.seal_deliver(&DeliverSeal {
        delivery_id,
        command_id: job.command_id,
        client_id: &job.client_id,
        url: &job.callback_url,
        payload: &payload,
    });
    let done = record(
        ctx,
        job.id,
        Outcome::Finish(Finish {
            job_id: job.id,
            lease_token: job.lease_token,
            status,
            result: result.clone(),
            delivery_id,
            payload,
            url: job.callback_url.clone(),
            seal: Some(seal),
        }),
    )
    .await?;
    if done {
        tracing::debug!(target: "hookrelay::command", status = %status, "command finished");
    }
    Ok(done)
}

async fn deliver(ctx: &DispatchContext, job: &ClaimedJob) -> sqlx::Result<bool> {
    let (Some(delivery_id), Some(url), Some(payload)) = (job.delivery_id, &job.url, &job.payload)
    else {
        tracing::error!("deliver job without its delivery row; dropping it");
        return outbox::drop_job(&ctx.pool, job).await;
    };
    // Only pending deliveries get here ([`nothing_to_do`]).
    let secrets = match &job.secrets {
        // Newest first; older rows than the current secret and the one it
        // replaced never sign (rows left from before rotation retired them).
        Some(sealed) if !sealed.is_empty() => ctx.sealer.open_all(
            &job.client_id,
            &sealed[..sealed.len().min(crate::security::MAX_SIGNING_SECRETS)],
        ),
        _ => match ensure_signing_secrets(&ctx.pool, &ctx.sealer, &job.client_id).await {
            Ok(secrets) => secrets,
            Err(SecretStoreError::Database(e)) => return Err(e),
            Err(e) => {
                tracing::error!(error = %e, "creating the client's first signing secret failed");
                Vec::new()
            }
        },
    };
    let Some(host_slot) = ctx.hosts.acquire(url).await else {
        // The host is at its limit: try again shortly, without spending an attempt.
        let delay = Duration::from_millis(rand::random_range(500..1500));
        tracing::debug!(
            delay_ms = delay.as_millis() as u64,
            "callback host at its limit; deferring"
        );
        let done = outbox::defer(&ctx.pool, job, delay).await?;
        ctx.wake.notify_one();
        return Ok(done);
    };
    let webhook_id = delivery_id.to_string();
    let mut outcome = if secrets.is_empty() {
        // Never send an unsigned webhook: record a failed attempt without
        // contacting the receiver; the schedule retries (and dead-letters).
        AttemptOutcome::not_sent(
            "not sent: no signing secret of this client could be opened (server configuration)",
        )
    } else {
        ctx.sender
            .attempt(url, &webhook_id, &secrets, payload)
            .await
    };
    drop(host_slot);
    // The receiver's answer is outside text: masked before it reaches the
    // audit log, last_error or a log line.
    outcome.response_body = ctx.redactor.opt_text(outcome.response_body);
    outcome.error = ctx.redactor.opt_text(outcome.error);
    let settings = &ctx.settings.delivery;
    let next = if outcome.delivered() {
        AfterAttempt::Delivered
    } else if outcome.gone() {
        AfterAttempt::DeadLettered("gone")
    } else {
        let attempt = u32::try_from(job.attempts).unwrap_or(u32::MAX);
        match next_delay(
            &settings.retry_schedule_s,
            settings.jitter,
            attempt,
            outcome.retry_after,
            Duration::from_secs(settings.max_retry_after_s),
        ) {
            Some(d) => AfterAttempt::RetryIn(d),
            None => AfterAttempt::DeadLettered("exhausted"),
        }
    };
    tracing::debug!(webhook_id = %webhook_id, status = ?outcome.response_status, next = ?next, "callback attempt");
    crate::telemetry::metrics::delivery_attempt(
        next.metric_outcome(),
        f64::from(outcome.duration_ms) / 1000.0,
    );
    if let AfterAttempt::DeadLettered(reason) = next {
        tracing::warn!(webhook_id = %webhook_id, reason, error = ?outcome.error, "delivery dead-lettered");
    }
    let done = record(
        ctx,
        job.id,
        Outcome::Attempt(AttemptRecord {
            job_id: job.id,
            lease_token: job.lease_token,
            outcome,
            next,
            trigger: job.trigger.clone(),
        }),
    )
    .await?;
    if matches!(next, AfterAttempt::RetryIn(_)) {
        ctx.wake.notify_one();
    }
    if done && next == AfterAttempt::Delivered && job.trigger == "scheduled" {
        // Accepted → delivered, as the database clock saw the acceptance. A
        // replayed delivery's latency would include its time as a dead letter.
        let latency = (chrono::Utc::now() - job.command_created_at)
            .to_std()
            .unwrap_or_default();
        crate::telemetry::metrics::command_delivery_latency(
            &job.integration,
            latency.as_secs_f64(),
        );
    }
    Ok(done)
}
