//! The job runner: claims jobs from the outbox and runs them, knowing no job
//! kind (modelled on crates.io's runner, `swirl`).
//!
//! One loop per worker process keeps up to `concurrency` jobs in flight. It
//! claims as many jobs as it has free slots (at most `claim_batch` per
//! statement); when the outbox has nothing ready it sleeps until the first of:
//! new work (committed by this process: [`Signals::jobs_committed`]; by
//! another: its `NOTIFY hookrelay_jobs`, see [`super::signal`]), the next
//! scheduled retry's `run_at`, or the safety-net poll interval. While a job runs, its lease is renewed
//! every third of its length; a job whose lease turns out to be someone
//! else's is abandoned to its new owner.
//!
//! On cancellation (SIGTERM) it stops claiming, lets in-flight jobs finish for
//! the shutdown grace, then aborts the rest and releases their leases. An
//! aborted call may still be running at the other end, so a released job
//! becomes claimable only once that call's timeout could have passed
//! ([`BackgroundJob::release_hold`]); another worker then repeats it. A job
//! whose outcome is queued for writing ([`Outcomes::is_recording`]) keeps its
//! lease.
//!
//! What a job is, how its claimed row decodes, what it does and how a row
//! that does not decode is ended — all of that comes from the
//! [`BackgroundJob`] implementation (the `jobs` module). The runner's log
//! lines use the stable target `hookrelay::jobs`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::postgres::{PgListener, PgRow};
use sqlx::PgPool;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use super::outcomes::Outcomes;
use super::signal::Signals;
use super::store;

/// A claimed job: its lease (kind-independent columns of `jobs`) and the job
/// itself, decoded once at claim.
#[derive(Debug, Clone)]
pub struct Claimed<J> {
    /// Job id (`jobs.id`).
    pub id: i64,
    /// This claim's lease token: every write of this claim matches it.
    pub lease_token: Uuid,
    /// Claims of this job so far, this one included (1-based attempt number).
    pub attempts: i32,
    /// The job, with typed fields.
    pub job: J,
    /// Set when a column of this job's row could not be decoded: which one
    /// and why. The job is then ended by [`BackgroundJob::on_undecodable`]
    /// (never run, never retried in a loop); the columns that did decode are
    /// filled in, the others hold empty defaults.
    pub undecodable: Option<String>,
}

/// A kind (or a closed set of kinds) of background job the runner can drive.
///
/// The `Future`s returned must be `Send`: each job runs on its own task.
/// Every method that ends a job returns `Ok(true)` when its outcome was
/// written, `Ok(false)` when the lease was lost first (another worker owns
/// the job), `Err` on a database error (the lease then expires and the job
/// runs again: at-least-once).
pub trait BackgroundJob: Sized + Send + Sync + 'static {
    /// What every job shares (pools, clients, settings).
    type Context: Send + Sync + 'static;

    /// The rest of the claim statement after the generic `claimed` CTE: see
    /// [`store::claim`]. The jobs' own SQL (which tables to join, what a claim
    /// starts) lives with the jobs, so the store and the runner stay generic.
    const CLAIM_SELECT: &'static str;

    /// Decodes one claimed row. Never fails: a row that does not decode is
    /// returned with [`Claimed::undecodable`] set, so it cannot take the rest
    /// of the batch (claimed, leased, and so stuck until their leases run
    /// out) with it.
    fn decode(row: &PgRow) -> Claimed<Self>;

    /// The tracing span the job runs in.
    fn span(claimed: &Claimed<Self>) -> tracing::Span;

    /// How long the job stays unclaimable when it is released at shutdown:
    /// the longest call it may have had in flight when it was aborted.
    fn release_hold(&self, ctx: &Self::Context) -> Duration;

    /// Runs the job to its outcome.
    fn run(
        claimed: Claimed<Self>,
        ctx: &Self::Context,
    ) -> impl Future<Output = sqlx::Result<bool>> + Send;

    /// Ends a job whose row did not decode (`why`: which columns and why),
    /// without running it and without retrying it.
    fn on_undecodable(
        claimed: Claimed<Self>,
        why: String,
        ctx: &Self::Context,
    ) -> impl Future<Output = sqlx::Result<bool>> + Send;
}

/// Claims up to `limit` ready jobs for `lease` and decodes them (see
/// [`store::claim`] and [`BackgroundJob::decode`]).
///
/// # Errors
/// Database errors.
pub async fn claim<J: BackgroundJob>(
    pool: &PgPool,
    limit: usize,
    lease: Duration,
) -> sqlx::Result<Vec<Claimed<J>>> {
    let rows = store::claim(pool, limit, lease, J::CLAIM_SELECT).await?;
    // Each row is decoded on its own (see `BackgroundJob::decode`).
    Ok(rows.iter().map(J::decode).collect())
}

/// The runner's knobs (`dispatcher.*` in the configuration).
#[derive(Debug, Clone, Copy)]
pub struct RunnerSettings {
    /// Jobs in flight at most.
    pub concurrency: usize,
    /// Jobs claimed per statement at most.
    pub claim_batch: usize,
    /// Lease length of a claim.
    pub lease: Duration,
    /// Safety-net poll interval when no NOTIFY arrives.
    pub poll: Duration,
    /// How long in-flight jobs may finish after cancellation.
    pub grace: Duration,
}

/// The job runner of one worker process.
pub struct Runner<J: BackgroundJob> {
    ctx: Arc<J::Context>,
    pool: PgPool,
    settings: RunnerSettings,
    outcomes: Outcomes,
    signals: Arc<Signals>,
    /// Running jobs: lease token and how long to hold the job back if it is
    /// released at shutdown ([`BackgroundJob::release_hold`]).
    in_flight: Arc<Mutex<HashMap<i64, (Uuid, Duration)>>>,
}

impl<J: BackgroundJob> Runner<J> {
    /// A runner of jobs `J` over `ctx`. `outcomes` is the group writer the
    /// jobs record with (the runner asks it which jobs are recording at
    /// shutdown); `signals` wake it (work committed by this process, other
    /// processes' announcements that its `LISTEN` receives, jobs that
    /// rescheduled themselves), and it tells them when a claim changed
    /// commands' status (events).
    pub fn new(
        ctx: Arc<J::Context>,
        pool: PgPool,
        settings: RunnerSettings,
        outcomes: Outcomes,
        signals: Arc<Signals>,
    ) -> Self {
        Runner {
            ctx,
            pool,
            settings,
            outcomes,
            signals,
            in_flight: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Runs until `cancel` fires, then drains as described in the module docs.
    ///
    /// # Errors
    /// Only if the `LISTEN` connection cannot be opened at start.
    pub async fn run(self, cancel: CancellationToken) -> anyhow::Result<()> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(store::CHANNEL).await?;
        let listen_task = tokio::spawn(listen(listener, self.signals.clone(), cancel.clone()));
        let lag_task = tokio::spawn(sample_outbox_lag(self.pool.clone(), cancel.clone()));

        let RunnerSettings {
            concurrency,
            claim_batch: batch,
            lease,
            poll,
            grace,
        } = self.settings;
        let slots = Arc::new(Semaphore::new(concurrency));
        let wake = self.signals.jobs();
        let mut tasks = JoinSet::new();
        tracing::info!(target: "hookrelay::jobs", concurrency, batch, "dispatcher started");

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
            let jobs = match claim::<J>(&self.pool, wanted, lease).await {
                Ok(jobs) => jobs,
                Err(e) => {
                    tracing::error!(target: "hookrelay::jobs", error = %e, "claiming jobs failed; retrying in 1 s");
                    drop(permits);
                    sleep_or_cancel(Duration::from_secs(1), &cancel).await;
                    continue;
                }
            };
            let got = jobs.len();
            if got > 0 {
                // The claim moved commands to `in_progress` (event rows).
                self.signals.events_committed();
            }
            for job in jobs {
                let Some(permit) = permits.pop() else { break };
                self.spawn_job(&mut tasks, job, permit);
            }
            drop(permits);
            while let Some(done) = tasks.try_join_next() {
                if let Err(e) = done {
                    tracing::error!(target: "hookrelay::jobs", error = %e, "job task panicked; its lease will expire");
                }
            }
            if got < wanted {
                let wait = match store::time_to_next_job(&self.pool).await {
                    // A ready job we could not claim is locked by another
                    // claimer: do not spin on it.
                    Ok(Some(d)) => d.min(poll).max(Duration::from_millis(20)),
                    Ok(None) => poll,
                    Err(e) => {
                        tracing::warn!(target: "hookrelay::jobs", error = %e, "reading the next run time failed");
                        poll
                    }
                };
                tokio::select! {
                    () = wake.notified() => {}
                    () = tokio::time::sleep(wait) => {}
                    () = cancel.cancelled() => break,
                }
            }
        }

        let in_flight = self.in_flight.lock().map(|m| m.len()).unwrap_or(0);
        tracing::info!(target: "hookrelay::jobs", in_flight, "dispatcher draining");
        let drained =
            tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
            let held: Vec<(i64, Uuid, Duration)> = self
                .in_flight
                .lock()
                .map(|m| {
                    m.iter()
                        .filter(|(k, _)| !self.outcomes.is_recording(**k))
                        .map(|(k, (token, hold))| (*k, *token, *hold))
                        .collect()
                })
                .unwrap_or_default();
            match store::release(&self.pool, &held).await {
                Ok(n) => {
                    tracing::info!(target: "hookrelay::jobs", released = n, "released leases of unfinished jobs")
                }
                Err(e) => {
                    tracing::error!(target: "hookrelay::jobs", error = %e, "releasing leases failed; they expire on their own")
                }
            }
        }
        listen_task.abort();
        lag_task.abort();
        tracing::info!(target: "hookrelay::jobs", "dispatcher stopped");
        Ok(())
    }

    fn spawn_job(&self, tasks: &mut JoinSet<()>, job: Claimed<J>, permit: OwnedSemaphorePermit) {
        let hold = job.job.release_hold(&self.ctx);
        let (id, token) = (job.id, job.lease_token);
        if let Ok(mut m) = self.in_flight.lock() {
            m.insert(id, (token, hold));
        }
        let ctx = self.ctx.clone();
        let pool = self.pool.clone();
        let lease = self.settings.lease;
        let in_flight = self.in_flight.clone();
        tasks.spawn(async move {
            tokio::select! {
                () = run_job::<J>(&ctx, job) => {}
                () = keep_lease(&pool, id, token, lease) => {
                    tracing::warn!(target: "hookrelay::jobs", job_id = id, "lease taken over while running; abandoning the job to its new owner");
                }
            }
            if let Ok(mut m) = in_flight.lock() {
                m.remove(&id);
            }
            drop(permit);
        });
    }
}

/// Runs one claimed job in its span: a job whose row did not decode goes to
/// [`BackgroundJob::on_undecodable`], any other to [`BackgroundJob::run`].
/// Outcome writes are retried while the lease is held (see
/// [`Outcomes::record`]); other database errors are logged, and the lease
/// then expires and the job runs again (at-least-once).
async fn run_job<J: BackgroundJob>(ctx: &J::Context, mut job: Claimed<J>) {
    let span = J::span(&job);
    async move {
        let result = match job.undecodable.take() {
            Some(why) => J::on_undecodable(job, why, ctx).await,
            None => J::run(job, ctx).await,
        };
        match result {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                target: "hookrelay::jobs",
                "lease lost before the outcome was recorded; another worker owns the job"
            ),
            Err(e) => {
                tracing::error!(target: "hookrelay::jobs", error = %e, "recording the job outcome failed; the job will run again after its lease")
            }
        }
    }
    .instrument(span)
    .await;
}

/// Renews a running job's lease every third of its length; returns only when
/// the lease turned out to be someone else's (a database error is retried at
/// the next beat: the remaining two thirds of the lease are the margin).
async fn keep_lease(pool: &PgPool, job_id: i64, token: Uuid, lease: Duration) {
    loop {
        tokio::time::sleep(lease / 3).await;
        match store::renew_lease(pool, job_id, token, lease).await {
            Ok(true) => tracing::debug!(target: "hookrelay::jobs", job_id, "lease renewed"),
            Ok(false) => return,
            Err(e) => {
                tracing::warn!(target: "hookrelay::jobs", job_id, error = %e, "renewing a lease failed; retrying at the next beat")
            }
        }
    }
}

/// Wakes the runner on other processes' announcements (its own are skipped:
/// the runner was woken directly).
async fn listen(mut listener: PgListener, signals: Arc<Signals>, cancel: CancellationToken) {
    let wake = signals.jobs();
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            n = listener.recv() => match n {
                Ok(n) if n.payload() == signals.origin() => {}
                Ok(_) => wake.notify_one(),
                Err(e) => {
                    tracing::warn!(target: "hookrelay::jobs", error = %e, "LISTEN connection failed; the poll covers until it is back");
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
        match store::oldest_ready_age(&pool).await {
            Ok(age) => crate::telemetry::metrics::outbox_lag(age.as_secs_f64()),
            Err(e) => {
                tracing::debug!(target: "hookrelay::jobs", error = %e, "sampling the outbox lag failed")
            }
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
