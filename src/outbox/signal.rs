//! Wake-ups after a commit, without `NOTIFY` inside the durable writes.
//!
//! Postgres serialises the commits of transactions that sent a `NOTIFY` (a
//! database-wide lock held through the commit's WAL flush), which defeats
//! group commit. So no write transaction of the hot path notifies (the
//! migration `20261202000010_no_notify_in_writes.sql` took `pg_notify` out of
//! the triggers). Instead, whoever commits new work or new events tells the
//! [`Signals`] of its process, after the commit:
//!
//! - tasks of the same process are woken at once through a tokio [`Notify`]
//!   ([`Signals::jobs`] for the outbox runner, [`Signals::events`] for the
//!   event tailer);
//! - other processes are told by the announcer task ([`Signals::start`]): at
//!   most one `SELECT pg_notify(…)` per [`ANNOUNCE_EVERY`] per process, in a
//!   transaction of its own that writes nothing else, coalescing every commit
//!   since the last one. Its payload is the process's [`Signals::origin`], so a
//!   process ignores its own announcements (it was woken directly).
//!
//! A notification is only ever a hint: the database is the truth, and each
//! waiter also polls (`dispatcher.poll_interval_ms`, `events.poll_interval_ms`),
//! so a lost hint delays, never loses, work.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The `LISTEN` channel that announces new ready jobs.
pub const JOBS_CHANNEL: &str = "hookrelay_jobs";
/// The `LISTEN` channel that announces new rows in the event log.
pub const EVENTS_CHANNEL: &str = "hookrelay_events";

/// The shortest time between two announcements of one process to the others
/// (the longest a worker process waits to hear of an API process's commit,
/// beyond the announcing round trip).
pub const ANNOUNCE_EVERY: Duration = Duration::from_millis(5);

const JOBS: u8 = 1;
const EVENTS: u8 = 2;

/// The wake-ups of one process (see the module docs). Shared as `Arc`.
pub struct Signals {
    jobs: Arc<Notify>,
    events: Arc<Notify>,
    /// Channels to announce to other processes at the next announcement.
    pending: AtomicU8,
    kick: Notify,
    origin: String,
}

impl Default for Signals {
    fn default() -> Self {
        Signals {
            jobs: Arc::new(Notify::new()),
            events: Arc::new(Notify::new()),
            pending: AtomicU8::new(0),
            kick: Notify::new(),
            origin: Uuid::new_v4().simple().to_string(),
        }
    }
}

impl Signals {
    /// Signals whose announcements are not sent (until [`Signals::start`]).
    pub fn new() -> Arc<Signals> {
        Arc::new(Signals::default())
    }

    /// New signals and their announcer task, which sends on `pool` until
    /// `cancel` fires.
    pub fn start(pool: PgPool, cancel: CancellationToken) -> (Arc<Signals>, JoinHandle<()>) {
        let signals = Signals::new();
        let task = tokio::spawn(announce(signals.clone(), pool, cancel));
        (signals, task)
    }

    /// New ready jobs were committed: wakes this process's runner and
    /// announces them to the others.
    pub fn jobs_committed(&self) {
        self.jobs.notify_one();
        self.pending.fetch_or(JOBS, Ordering::Relaxed);
        self.kick.notify_one();
    }

    /// New event-log rows were committed (any status change of a command or
    /// delivery): wakes this process's event tailer and announces them.
    pub fn events_committed(&self) {
        self.events.notify_one();
        self.pending.fetch_or(EVENTS, Ordering::Relaxed);
        self.kick.notify_one();
    }

    /// Wakes this process's runner only (it rescheduled or deferred a job of
    /// its own; other processes find it by their timers and polls).
    pub fn wake_runner(&self) {
        self.jobs.notify_one();
    }

    /// What the runner waits on (also woken by other processes' announcements
    /// that its `LISTEN` receives).
    pub fn jobs(&self) -> Arc<Notify> {
        self.jobs.clone()
    }

    /// What the event tailer waits on.
    pub fn events(&self) -> Arc<Notify> {
        self.events.clone()
    }

    /// The payload of this process's announcements: a listener ignores a
    /// notification that carries its own origin.
    pub fn origin(&self) -> &str {
        &self.origin
    }
}

/// The announcer: waits for a commit to announce, sends one `pg_notify` per
/// pending channel in one statement, then rests [`ANNOUNCE_EVERY`] so that
/// the commits meanwhile share the next one.
async fn announce(signals: Arc<Signals>, pool: PgPool, cancel: CancellationToken) {
    loop {
        tokio::select! {
            () = signals.kick.notified() => {}
            () = cancel.cancelled() => return,
        }
        let pending = signals.pending.swap(0, Ordering::Relaxed);
        if pending != 0 {
            let channels: Vec<&str> = [(JOBS, JOBS_CHANNEL), (EVENTS, EVENTS_CHANNEL)]
                .into_iter()
                .filter(|(bit, _)| pending & bit != 0)
                .map(|(_, c)| c)
                .collect();
            if let Err(e) = notify(&pool, &channels, &signals.origin).await {
                tracing::debug!(target: "hookrelay::jobs", error = %e, "announcing new work failed; the others poll");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(ANNOUNCE_EVERY) => {}
            () = cancel.cancelled() => return,
        }
    }
}

/// Sends `NOTIFY` on each of `channels` with `payload`, in one transaction of
/// its own (autocommit) that writes nothing else.
///
/// # Errors
/// Database errors.
pub async fn notify(pool: &PgPool, channels: &[&str], payload: &str) -> sqlx::Result<()> {
    sqlx::query("SELECT pg_notify(c, $2) FROM UNNEST($1::text[]) AS c")
        .bind(channels)
        .bind(payload)
        .execute(pool)
        .await?;
    Ok(())
}
