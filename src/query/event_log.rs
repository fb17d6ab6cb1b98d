//! The event log and its live feed: what the SSE push stream serves.
//!
//! Postgres triggers (migration `20261121000007_events.sql`) append one row to
//! `command_events` for every status change of a command (`command.accepted`,
//! `command.in_progress`, `command.succeeded`, `command.failed`) and of its
//! callback (`callback.delivered`, `callback.dead_lettered`, and
//! `callback.replayed` when an admin replays a dead letter), in the same
//! transaction as the change. The writers wake the tailer after their commit
//! (see [`crate::outbox::signal`]): directly within a process, by a coalesced
//! `NOTIFY hookrelay_events` outside the write across processes.
//!
//! # Order without gaps
//!
//! Events are ordered by their [`Cursor`] `(xid, id)`: the writing
//! transaction's id (`xid8`), then the row's `bigserial`. Only events with
//! `xid < pg_snapshot_xmin(pg_current_snapshot())` are ever read: every
//! transaction below the snapshot's xmin has ended, and every later
//! transaction gets a larger xid, so once a reader has passed a cursor nothing
//! can appear behind it. The price: a transaction that stays open (and has
//! written something) holds back every event of later transactions until it
//! ends — events are delayed, never lost.
//!
//! # The feed
//!
//! One [`EventFeed`] per API process: a tailer task that `LISTEN`s on the
//! primary (notifications are not replicated), reads new events in pages from
//! the read pool after its cursor (when its process's writers wake it, on
//! another process's notification, or every `events.poll_interval_ms`), and broadcasts them in order
//! ([`EventFeed::subscribe`]). [`EventFeed::follow`] gives one consumer (an SSE
//! stream) every matching event after a cursor, exactly once and in order: it
//! subscribes first, reads the table from its cursor (catch-up), then switches
//! to the broadcast, skipping what catch-up already returned. A consumer that
//! falls behind the broadcast buffer catches up from the table again.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::{broadcast, mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::EventSettings;
use crate::outbox::Signals;

/// The `LISTEN/NOTIFY` channel that announces new events (sent by
/// [`crate::outbox::signal`] after the writes, never by them).
pub const CHANNEL: &str = crate::outbox::signal::EVENTS_CHANNEL;

/// Events read per statement (tailer and catch-up).
const PAGE: i64 = 500;

/// Events the broadcast keeps for slow subscribers; one that falls further
/// behind catches up from the table.
const BROADCAST_CAPACITY: usize = 4096;

/// A position in the event log: `(xid, id)` of an event. Displayed and parsed
/// as `"{xid}-{id}"` (the SSE `id:`); `0-0` is before every event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Cursor {
    /// The writing transaction (`xid8`, epoch-extended, never wraps).
    pub xid: i64,
    /// The event's `bigserial` id.
    pub id: i64,
}

impl Cursor {
    /// Before every event.
    pub const START: Cursor = Cursor { xid: 0, id: 0 };
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.xid, self.id)
    }
}

/// A string that is not a [`Cursor`].
#[derive(Debug, thiserror::Error)]
#[error("is not an event id from this API (expected \"<xid>-<id>\", e.g. \"1234-56\")")]
pub struct BadCursor;

impl FromStr for Cursor {
    type Err = BadCursor;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (xid, id) = s.trim().split_once('-').ok_or(BadCursor)?;
        let digits = |p: &str| {
            (!p.is_empty() && p.len() <= 19 && p.bytes().all(|b| b.is_ascii_digit()))
                .then(|| p.parse::<i64>().ok())
                .flatten()
        };
        Ok(Cursor {
            xid: digits(xid).ok_or(BadCursor)?,
            id: digits(id).ok_or(BadCursor)?,
        })
    }
}

/// One event of the log.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Its position (the SSE `id:`).
    pub cursor: Cursor,
    /// The command it is about.
    pub command_id: Uuid,
    /// The command's owner.
    pub client_id: String,
    /// `command.accepted`, `command.in_progress`, `command.succeeded`,
    /// `command.failed`, `callback.delivered`, `callback.dead_lettered` or
    /// `callback.replayed` (the SSE `event:`).
    pub kind: String,
    /// The JSON document (the SSE `data:`), one line: `command_id`,
    /// `client_id`, `type`, `status` (the command's), `integration`,
    /// `operation`, `occurred_at` (RFC 3339); `status_code` on
    /// `command.succeeded`/`failed`; `callback` {`status`, `attempts`,
    /// `webhook_id`, `reason`} on `callback.*`.
    pub data: String,
}

#[derive(sqlx::FromRow)]
struct EventRow {
    xid: i64,
    id: i64,
    command_id: Uuid,
    client_id: String,
    kind: String,
    data: String,
}

impl From<EventRow> for Event {
    fn from(r: EventRow) -> Self {
        Event {
            cursor: Cursor {
                xid: r.xid,
                id: r.id,
            },
            command_id: r.command_id,
            client_id: r.client_id,
            kind: r.kind,
            data: r.data,
        }
    }
}

/// Which events a consumer wants.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// Only this client's commands.
    pub client_id: Option<String>,
    /// Only this command.
    pub command_id: Option<Uuid>,
}

impl EventFilter {
    /// Whether `event` passes.
    pub fn matches(&self, event: &Event) -> bool {
        self.client_id
            .as_deref()
            .is_none_or(|c| c == event.client_id)
            && self.command_id.is_none_or(|c| c == event.command_id)
    }
}

/// Reads up to 500 (`PAGE`) finished events after `after` that match `filter`, in
/// order. Only events below the snapshot's xmin (see the module docs).
///
/// # Errors
/// Database errors.
pub async fn read_after(
    pool: &PgPool,
    after: Cursor,
    filter: &EventFilter,
) -> sqlx::Result<Vec<Event>> {
    // Three statements, so each keeps its own plan (prepared statements may
    // get a generic plan): one command's events through the `command_id`
    // index, one client's through `(client_id, xid, id)`, everything else
    // along the `(xid, id)` primary key. ORDER BY names the
    // table's columns: the output `xid` is the bigint rendering, and sorting
    // by it would not use the index.
    let sql = if filter.command_id.is_some() {
        r#"
        SELECT xid::text::bigint AS xid, id, command_id, client_id, type AS kind, data::text AS data
          FROM command_events
         WHERE command_id = $4
           AND (xid, id) > ($1::bigint::text::xid8, $2)
           AND xid < pg_snapshot_xmin(pg_current_snapshot())
           AND ($3::text IS NULL OR client_id = $3)
         ORDER BY command_events.xid, command_events.id
         LIMIT $5
        "#
    } else if filter.client_id.is_some() {
        // One client's events through `command_events_client_idx`
        // (client_id, xid, id): a resume from an old position reads only
        // this client's rows, not every client's since then.
        r#"
        SELECT xid::text::bigint AS xid, id, command_id, client_id, type AS kind, data::text AS data
          FROM command_events
         WHERE client_id = $3
           AND (xid, id) > ($1::bigint::text::xid8, $2)
           AND xid < pg_snapshot_xmin(pg_current_snapshot())
           AND $4::uuid IS NULL
         ORDER BY command_events.client_id, command_events.xid, command_events.id
         LIMIT $5
        "#
    } else {
        r#"
        SELECT xid::text::bigint AS xid, id, command_id, client_id, type AS kind, data::text AS data
          FROM command_events
         WHERE (xid, id) > ($1::bigint::text::xid8, $2)
           AND xid < pg_snapshot_xmin(pg_current_snapshot())
           AND ($3::text IS NULL OR client_id = $3)
           AND $4::uuid IS NULL
         ORDER BY command_events.xid, command_events.id
         LIMIT $5
        "#
    };
    let rows: Vec<EventRow> = sqlx::query_as(sql)
        .bind(after.xid)
        .bind(after.id)
        .bind(filter.client_id.as_deref())
        .bind(filter.command_id)
        .bind(PAGE)
        .fetch_all(pool)
        .await?;
    Ok(rows.into_iter().map(Event::from).collect())
}

/// The cursor of the newest finished event (or [`Cursor::START`]): where a
/// stream that starts "now" begins.
///
/// # Errors
/// Database errors.
pub async fn head(pool: &PgPool) -> sqlx::Result<Cursor> {
    let row: Option<(i64, i64)> = sqlx::query_as(
        "SELECT xid::text::bigint, id FROM command_events
          WHERE xid < pg_snapshot_xmin(pg_current_snapshot())
          ORDER BY command_events.xid DESC, command_events.id DESC LIMIT 1",
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.map_or(Cursor::START, |(xid, id)| Cursor { xid, id }))
}

struct Shared {
    read: PgPool,
    sender: broadcast::Sender<Arc<Event>>,
    /// Cursor of the last event broadcast.
    head: std::sync::Mutex<Cursor>,
    streams: Arc<Semaphore>,
    cancel: CancellationToken,
}

/// The process's event feed (see the module docs). Cheap to clone.
#[derive(Clone)]
pub struct EventFeed(Arc<Shared>);

impl EventFeed {
    /// Starts the tailer: `LISTEN` on `primary`, reads from `read`, until
    /// `cancel` fires; also woken by `signals` (this process's writers), whose
    /// own announcements it then skips. Its first cursor is the log's head at
    /// start.
    pub fn start(
        primary: PgPool,
        read: PgPool,
        settings: &EventSettings,
        cancel: CancellationToken,
        signals: &Signals,
    ) -> (EventFeed, JoinHandle<()>) {
        Self::start_inner(
            primary,
            read,
            settings,
            cancel,
            BROADCAST_CAPACITY,
            (signals.events(), Some(signals.origin().to_owned())),
        )
    }

    /// [`EventFeed::start`] with a broadcast buffer of `capacity` events
    /// (tests use a tiny one to make subscribers lag and catch up).
    /// It is woken by notifications only.
    pub fn start_with_capacity(
        primary: PgPool,
        read: PgPool,
        settings: &EventSettings,
        cancel: CancellationToken,
        capacity: usize,
    ) -> (EventFeed, JoinHandle<()>) {
        let wake = (Arc::new(tokio::sync::Notify::new()), None);
        Self::start_inner(primary, read, settings, cancel, capacity, wake)
    }

    fn start_inner(
        primary: PgPool,
        read: PgPool,
        settings: &EventSettings,
        cancel: CancellationToken,
        capacity: usize,
        wake: (Arc<tokio::sync::Notify>, Option<String>),
    ) -> (EventFeed, JoinHandle<()>) {
        let (sender, _) = broadcast::channel(capacity.max(1));
        let feed = EventFeed(Arc::new(Shared {
            read,
            sender,
            head: std::sync::Mutex::new(Cursor::START),
            streams: Arc::new(Semaphore::new(settings.max_streams)),
            cancel,
        }));
        let poll = Duration::from_millis(settings.poll_interval_ms);
        let task = tokio::spawn(feed.clone().tail(primary, poll, wake));
        (feed, task)
    }

    /// Every event the tailer reads from now on, in order. A receiver that
    /// falls more than 4096 events behind gets `Lagged` and must catch up from
    /// the table ([`read_after`]) — [`EventFeed::follow`] does that.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.0.sender.subscribe()
    }

    /// The cursor of the last event broadcast.
    pub fn head(&self) -> Cursor {
        self.0.head.lock().map(|h| *h).unwrap_or_default()
    }

    /// The pool events are read from.
    pub fn pool(&self) -> &PgPool {
        &self.0.read
    }

    /// Fires when the process shuts down (streams end then).
    pub fn cancelled(&self) -> CancellationToken {
        self.0.cancel.clone()
    }

    /// A slot for one more open stream, or `None` at `events.max_streams`.
    pub fn stream_slot(&self) -> Option<OwnedSemaphorePermit> {
        self.0.streams.clone().try_acquire_owned().ok()
    }

    async fn tail(
        self,
        primary: PgPool,
        poll: Duration,
        (wake, origin): (Arc<tokio::sync::Notify>, Option<String>),
    ) {
        let cancel = self.0.cancel.clone();
        let mut listener = None;
        let mut cursor = loop {
            match head(&self.0.read).await {
                Ok(c) => break c,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the event log head failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(poll.max(Duration::from_secs(1))) => {}
                        () = cancel.cancelled() => return,
                    }
                }
            }
        };
        if let Ok(mut h) = self.0.head.lock() {
            *h = cursor;
        }
        loop {
            if listener.is_none() {
                listener = match PgListener::connect_with(&primary).await {
                    Ok(mut l) => match l.listen(CHANNEL).await {
                        Ok(()) => Some(l),
                        Err(e) => {
                            tracing::warn!(error = %e, "LISTEN hookrelay_events failed; polling");
                            None
                        }
                    },
                    Err(e) => {
                        tracing::warn!(error = %e, "LISTEN connection for events failed; polling");
                        None
                    }
                };
            }
            // Read everything finished after the cursor, page by page.
            loop {
                match read_after(&self.0.read, cursor, &EventFilter::default()).await {
                    Ok(events) => {
                        let full = events.len() as i64 == PAGE;
                        for event in events {
                            cursor = event.cursor;
                            if let Ok(mut h) = self.0.head.lock() {
                                *h = cursor;
                            }
                            // No receivers is fine: nobody is streaming.
                            let _ = self.0.sender.send(Arc::new(event));
                        }
                        if !full {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "reading the event log failed; retrying at the next poll");
                        break;
                    }
                }
            }
            let notified = async {
                match listener.as_mut() {
                    // This process's own announcements: it was woken directly.
                    Some(l) => loop {
                        match l.recv().await {
                            Ok(n) if Some(n.payload()) == origin.as_deref() => {}
                            r => break r.map(|_| ()),
                        }
                    },
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = notified => {
                    if let Err(e) = r {
                        tracing::warn!(error = %e, "LISTEN connection for events lost; reconnecting");
                        listener = None;
                    }
                }
                () = wake.notified() => {}
                () = tokio::time::sleep(poll) => {}
                () = cancel.cancelled() => return,
            }
        }
    }

    /// Sends every event after `from` that matches `filter` to `out`, in
    /// order, exactly once, until `out` is closed, the process shuts down, or
    /// reading the log fails (the error is returned; the consumer resumes
    /// from the last cursor it got).
    ///
    /// # Errors
    /// Database errors during catch-up.
    pub async fn follow(
        &self,
        from: Cursor,
        filter: &EventFilter,
        out: &mpsc::Sender<Arc<Event>>,
    ) -> sqlx::Result<()> {
        let cancel = self.0.cancel.clone();
        let mut pos = from;
        'catch_up: loop {
            // Subscribe before reading the table: whatever the tailer
            // broadcasts from here on is either read below or received.
            let mut live = self.subscribe();
            loop {
                let events = tokio::select! {
                    r = read_after(&self.0.read, pos, filter) => r?,
                    () = out.closed() => return Ok(()),
                    () = cancel.cancelled() => return Ok(()),
                };
                let full = events.len() as i64 == PAGE;
                for event in events {
                    pos = event.cursor;
                    if out.send(Arc::new(event)).await.is_err() {
                        return Ok(());
                    }
                }
                if !full {
                    break;
                }
            }
            loop {
                let received = tokio::select! {
                    r = live.recv() => r,
                    () = out.closed() => return Ok(()),
                    () = cancel.cancelled() => return Ok(()),
                };
                match received {
                    // Already sent by the catch-up, or before the start.
                    Ok(event) if event.cursor <= pos => {}
                    Ok(event) => {
                        pos = event.cursor;
                        if filter.matches(&event) && out.send(event).await.is_err() {
                            return Ok(());
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::debug!(
                            missed,
                            "event stream fell behind; catching up from the log"
                        );
                        continue 'catch_up;
                    }
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_order() {
        let c: Cursor = "1234-56".parse().expect("parse");
        assert_eq!(c, Cursor { xid: 1234, id: 56 });
        assert_eq!(c.to_string(), "1234-56");
        assert!(Cursor { xid: 1, id: 99 } < Cursor { xid: 2, id: 1 });
        assert!(Cursor { xid: 2, id: 1 } < Cursor { xid: 2, id: 2 });
        assert_eq!("0-0".parse::<Cursor>().expect("zero"), Cursor::START);
        for bad in [
            "",
            "12",
            "-1-2",
            "1--2",
            "a-1",
            "1-2-3",
            "1-",
            "99999999999999999999-1",
        ] {
            assert!(bad.parse::<Cursor>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn filters_match_client_and_command() {
        let id = Uuid::now_v7();
        let e = Event {
            cursor: Cursor::START,
            command_id: id,
            client_id: "acme".into(),
            kind: "command.accepted".into(),
            data: "{}".into(),
        };
        assert!(EventFilter::default().matches(&e));
        let mine = EventFilter {
            client_id: Some("acme".into()),
            command_id: Some(id),
        };
        assert!(mine.matches(&e));
        let other = EventFilter {
            client_id: Some("other".into()),
            command_id: None,
        };
        assert!(!other.matches(&e));
        let other_command = EventFilter {
            client_id: None,
            command_id: Some(Uuid::now_v7()),
        };
        assert!(!other_command.matches(&e));
    }
}
