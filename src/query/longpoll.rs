//! Long-poll waiters (`GET /v1/commands/{id}?wait=SECONDS`), re-read together.
//!
//! A waiting request registers the command and the ETag it waits to change
//! from. One task per pool ([`LongPoll::run`]) re-reads the status documents
//! of every waited-on command in one query each [`TICK`] and wakes the
//! waiters whose document now has another ETag. So N concurrent long-polls
//! cost one indexed query per tick (per 1,000 commands), not N, and a change
//! is still seen within one tick plus that read: the "answers within 200 ms
//! of completion" bound of `docs/queries.md`.
//!
//! The truth is always the database, never a notification: a wake-up comes
//! only from a read of the row, so nothing depends on the event log's
//! visibility rule (`docs/events.md`), which can hold events back while an
//! older transaction is open. The task sleeps while nobody waits.
//!
//! A waiter whose request ended (its wait elapsed, or the client went away
//! and actix dropped the handler) is removed at the next tick.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{oneshot, Notify};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::StatusDocument;

/// How often the documents of waited-on commands are re-read.
pub const TICK: Duration = Duration::from_millis(50);

/// Most command ids read by one query (a tick with more waiters runs several).
const IDS_PER_READ: usize = 1_000;

/// The long-poll waiters of one pool in this process (app data, in
/// [`super::QueryState`]).
pub struct LongPoll {
    pool: PgPool,
    waiters: Mutex<HashMap<Uuid, Vec<Waiter>>>,
    /// Wakes the task when the first waiter arrives.
    arrived: Notify,
}

struct Waiter {
    /// The ETag the caller waits to change from.
    baseline: String,
    /// Receives the changed document with its ETag.
    tx: oneshot::Sender<(StatusDocument, String)>,
}

/// Keeps `hookrelay_long_poll_waiters` true however a wait ends.
struct Registered;

impl Registered {
    fn new() -> Self {
        crate::telemetry::metrics::long_poll_waiters(1.0);
        Registered
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        crate::telemetry::metrics::long_poll_waiters(-1.0);
    }
}

impl LongPoll {
    /// Waiters reading through `pool`; nothing runs until [`LongPoll::run`].
    pub fn new(pool: PgPool) -> Self {
        LongPoll {
            pool,
            waiters: Mutex::new(HashMap::new()),
            arrived: Notify::new(),
        }
    }

    fn waiters(&self) -> MutexGuard<'_, HashMap<Uuid, Vec<Waiter>>> {
        // A panic while holding the lock leaves the map consistent (every
        // change is a single insert or remove), so poisoning is ignored.
        self.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until the status document of command `id` has an ETag other
    /// than `baseline`, or until `deadline`. Returns the new document and its
    /// ETag, or `None` when the deadline passed first (or the process is
    /// shutting down). The caller has already checked that it may read `id`.
    pub async fn changed(
        &self,
        id: Uuid,
        baseline: String,
        deadline: tokio::time::Instant,
    ) -> Option<(StatusDocument, String)> {
        let (tx, rx) = oneshot::channel();
        let _registered = Registered::new();
        self.waiters()
            .entry(id)
            .or_default()
            .push(Waiter { baseline, tx });
        self.arrived.notify_one();
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(changed)) => Some(changed),
            _ => None,
        }
    }

    /// Re-reads the waited-on documents every [`TICK`] until `cancel`.
    /// Database errors are logged and retried at the next tick; waiters
    /// then keep waiting (at worst until their deadline). At `cancel` every
    /// waiter is answered at once (with the document it has), so open
    /// long-polls do not hold a graceful shutdown for up to a minute.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            if self.waiters().is_empty() {
                tokio::select! {
                    () = self.arrived.notified() => {}
                    () = cancel.cancelled() => break,
                }
            }
            tokio::select! {
                () = tokio::time::sleep(TICK) => {}
                () = cancel.cancelled() => break,
            }
            self.tick().await;
        }
        // Dropping the senders ends each wait with `None`.
        self.waiters().clear();
    }

    /// One round: drops waiters whose request ended, reads the documents of
    /// the rest, wakes those whose ETag changed.
    async fn tick(&self) {
        let ids: Vec<Uuid> = {
            let mut waiters = self.waiters();
            waiters.retain(|_, list| {
                list.retain(|w| !w.tx.is_closed());
                !list.is_empty()
            });
            waiters.keys().copied().collect()
        };
        for chunk in ids.chunks(IDS_PER_READ) {
            crate::telemetry::metrics::long_poll_read();
            let docs = match super::load_statuses(&self.pool, chunk).await {
                Ok(docs) => docs,
                Err(e) => {
                    tracing::warn!(error = %e, waiting = chunk.len(), "long-poll read failed; retrying next tick");
                    continue;
                }
            };
            let mut waiters = self.waiters();
            for doc in docs {
                let tag = super::status::etag(&doc);
                let Some(list) = waiters.get_mut(&doc.id) else {
                    continue;
                };
                let (woken, kept): (Vec<Waiter>, Vec<Waiter>) =
                    list.drain(..).partition(|w| w.baseline != tag);
                *list = kept;
                if list.is_empty() {
                    waiters.remove(&doc.id);
                }
                for w in woken {
                    // The receiver may have timed out meanwhile; nothing to do.
                    let _ = w.tx.send((doc.clone(), tag.clone()));
                }
            }
        }
    }
}
