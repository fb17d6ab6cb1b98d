//! The read side: command status documents, lists, the delivery audit log and
//! the SSE push stream ([`events`]).
//!
//! Every `GET` handler lives here and reads through the read pool
//! (`database.read_url`, else the primary) and never writes — except for a
//! client that sent a command on this instance within
//! `query.read_your_writes_ms`: its status, list and attempt reads go to the
//! primary, so replica lag never hides its own command from it.
//!
//! Status documents are cached ([`cache::StatusCache`], TTL
//! `query.max_staleness_ms`, moka or Redis); a cached document passes the same
//! visibility rule as an uncached one. Visibility: the owner (role `client`,
//! same `sub`), any `reader` or `admin`; anyone else gets 404 so a command's
//! existence does not leak.
//!
//! Every request is logged once under the target `hookrelay::query` with its
//! endpoint, cache outcome, status and duration, and counted in
//! `hookrelay_cache_requests_total` / `hookrelay_query_duration_seconds`.
//! The consistency model is described in `docs/queries.md`.
//!
//! One file per resource: [`status`] (status documents,
//! `GET /v1/commands/{id}`), [`commands`] (the list), [`attempts`] (the
//! delivery audit log), [`dead_letters`], [`events`] (SSE), [`integrations`]
//! (admin diagnostics) and [`upstream`] (cached third-party queries). This
//! file keeps the routes and what they share: [`QueryState`], visibility,
//! paging limits and the `Retry-After` hints.

pub mod event_log;
pub mod integrations;

pub mod attempts;
pub mod cache;
pub mod commands;
pub mod dead_letters;
pub mod events;
pub mod longpoll;
pub mod status;
pub mod upstream;

pub use attempts::{list_attempts, Attempt, AttemptPage, AttemptParams};
pub use commands::{list_commands, CommandPage, ListParams};
pub use dead_letters::{list_dead_letters, DeadLetter, DeadLetterPage, DeadLetterParams};
pub use status::{
    get_command, load_status, load_statuses, CallbackState, StatusDocument, StatusParams,
    MAX_WAIT_S,
};

use std::sync::Arc;
use std::time::Instant;

use actix_web::{web, HttpResponse};
use sqlx::PgPool;
use uuid::Uuid;

use crate::auth::Principal;
use crate::db::{ReadPool, WritePool};
use crate::http::error::ApiError;
use crate::integration::resilience::Policies;

use cache::{CachedStatus, RecentWriters, StatusCache};
use longpoll::LongPoll;

/// The read side's per-process state (app data): the status-document cache,
/// the read-your-writes window, the long-poll waiters and the latency hints
/// behind `Retry-After`.
pub struct QueryState {
    /// Cached status documents.
    pub status: StatusCache,
    /// Clients that wrote recently on this instance.
    pub writers: RecentWriters,
    /// Long-polls reading from the read pool.
    long_poll_read: Arc<LongPoll>,
    /// Long-polls of writers within their read-your-writes window (primary).
    long_poll_primary: Arc<LongPoll>,
    /// The resilience policies whose observed latency sets `Retry-After`.
    policies: Arc<Policies>,
    /// Median upstream latency per integration (ms), recomputed at most once
    /// per [`LATENCY_HINT_TTL`]: computing it sorts the policy's samples
    /// under its lock, too dear for every `POST /v1/commands`.
    latency: moka::sync::Cache<String, Option<f64>>,
}

/// How long a computed median latency is reused for `Retry-After`.
pub const LATENCY_HINT_TTL: std::time::Duration = std::time::Duration::from_secs(1);

impl QueryState {
    /// The state for `settings`, caching in `redis` when given; long-polls
    /// read from `read` (or `primary` within a writer's read-your-writes
    /// window) once [`QueryState::start_long_poll`] has started their tasks.
    pub fn new(
        settings: &crate::config::Settings,
        redis: Option<Arc<cache::RedisCache>>,
        policies: Arc<Policies>,
        primary: PgPool,
        read: PgPool,
    ) -> Self {
        QueryState {
            status: StatusCache::new(&settings.query, redis),
            writers: RecentWriters::new(&settings.query),
            long_poll_read: Arc::new(LongPoll::new(read)),
            long_poll_primary: Arc::new(LongPoll::new(primary)),
            policies,
            latency: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(LATENCY_HINT_TTL)
                .build(),
        }
    }

    /// Invalidates cached status documents from the event feed until the
    /// feed closes (the tailer stopped at shutdown): every command status or
    /// callback status change is an event (`docs/events.md`), so a cached
    /// document usually lives well under `query.max_staleness_ms`. Events
    /// already waiting are folded into one invalidation (one Redis `DEL`).
    /// A receiver that lagged behind the feed cannot know what it missed; the
    /// TTL (`query.max_staleness_ms`) still bounds those documents.
    pub async fn invalidate_from_events(
        self: Arc<Self>,
        mut events: tokio::sync::broadcast::Receiver<Arc<crate::query::event_log::Event>>,
    ) {
        use tokio::sync::broadcast::error::{RecvError, TryRecvError};
        if !self.status.enabled() {
            return;
        }
        loop {
            let first = match events.recv().await {
                Ok(e) => e,
                Err(RecvError::Lagged(n)) => {
                    tracing::debug!(
                        missed = n,
                        "status cache invalidation lagged behind the event feed"
                    );
                    continue;
                }
                Err(RecvError::Closed) => return,
            };
            let mut ids = vec![first.command_id];
            loop {
                match events.try_recv() {
                    Ok(e) => ids.push(e.command_id),
                    Err(TryRecvError::Lagged(_)) => continue,
                    Err(_) => break,
                }
                if ids.len() >= 512 {
                    break;
                }
            }
            ids.sort_unstable();
            ids.dedup();
            self.status.invalidate(&ids).await;
        }
    }

    /// Starts the long-poll tasks (one per pool); they end with `cancel`.
    pub fn start_long_poll(&self, cancel: &tokio_util::sync::CancellationToken) {
        tokio::spawn(self.long_poll_read.clone().run(cancel.clone()));
        tokio::spawn(self.long_poll_primary.clone().run(cancel.clone()));
    }

    /// Whether `principal` reads from the primary: it wrote on this
    /// instance within its read-your-writes window.
    fn reads_primary(&self, principal: &Principal) -> bool {
        self.writers.contains(&principal.client_id)
    }

    /// The pool `principal` reads from: the primary within its
    /// read-your-writes window, else the read pool.
    fn pool<'a>(
        &self,
        principal: &Principal,
        read: &'a ReadPool,
        write: &'a WritePool,
    ) -> &'a PgPool {
        if self.reads_primary(principal) {
            &write.0
        } else {
            &read.0
        }
    }

    /// The `Retry-After` (seconds) suggested for polling a command of
    /// `integration`: the integration's observed median upstream latency in
    /// this process plus [`RETRY_AFTER_QUEUE_ALLOWANCE_MS`] — or `default_s`
    /// (`commands.retry_after_s`) when this process has made no calls to it
    /// (an API-only process) — with ±25 % jitter, rounded up to whole seconds
    /// and clamped to 1..=30, so polling clients spread out instead of
    /// arriving together.
    pub fn suggested_retry_after(&self, integration: &str, default_s: u64) -> u64 {
        let observed = self.latency.get_with_by_ref(integration, || {
            self.policies
                .get(integration)
                .and_then(|p| p.snapshot().p50_ms)
        });
        retry_after_from(observed, default_s, rand::random::<f64>())
    }
}

/// Records one read-side request: the metrics and one log line under
/// `hookrelay::query` with endpoint, cache outcome, status and duration.
pub(crate) fn log_answer(
    endpoint: &'static str,
    outcome: &'static str,
    started: Instant,
    result: &Result<HttpResponse, ApiError>,
) {
    use actix_web::ResponseError;
    let status = match result {
        Ok(r) => r.status().as_u16(),
        Err(e) => e.status_code().as_u16(),
    };
    let elapsed = started.elapsed();
    crate::telemetry::metrics::query_answered(endpoint, outcome, elapsed.as_secs_f64());
    tracing::info!(
        target: "hookrelay::query",
        endpoint,
        cache = outcome,
        status,
        duration_ms = elapsed.as_millis() as u64,
        "query answered"
    );
}

/// Queue allowance added to the observed upstream latency for `Retry-After`:
/// the time a command typically waits for a dispatcher slot and the outcome
/// commit, ms.
pub const RETRY_AFTER_QUEUE_ALLOWANCE_MS: f64 = 500.0;
/// Bounds of the suggested `Retry-After`, seconds.
pub const RETRY_AFTER_BOUNDS_S: (u64, u64) = (1, 30);
/// Jitter of the suggested `Retry-After` (0.25 = ±25 %).
pub const RETRY_AFTER_JITTER: f64 = 0.25;

/// [`QueryState::suggested_retry_after`] with the median latency (ms) and a uniform
/// random number in `[0, 1)` given.
fn retry_after_from(p50_ms: Option<f64>, default_s: u64, unit: f64) -> u64 {
    #[allow(clippy::cast_precision_loss)]
    let base_ms = match p50_ms {
        Some(ms) if ms.is_finite() && ms >= 0.0 => ms + RETRY_AFTER_QUEUE_ALLOWANCE_MS,
        _ => default_s as f64 * 1000.0,
    };
    let factor = 1.0 + RETRY_AFTER_JITTER * (2.0 * unit.clamp(0.0, 1.0) - 1.0);
    let secs = (base_ms * factor / 1000.0).ceil();
    let (lo, hi) = RETRY_AFTER_BOUNDS_S;
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let secs = if secs.is_finite() {
        secs.max(0.0) as u64
    } else {
        hi
    };
    secs.clamp(lo, hi)
}

/// Routes of the read side (every `GET` of the API's resources, and the
/// batch query endpoint).
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/commands", web::get().to(list_commands))
        .route("/v1/commands/{id}", web::get().to(get_command))
        .route("/v1/commands/{id}/attempts", web::get().to(list_attempts))
        .route(
            "/v1/commands/{id}/events",
            web::get().to(events::stream_command_events),
        )
        .route("/v1/events", web::get().to(events::stream_events))
        .route("/v1/dead-letters", web::get().to(list_dead_letters))
        .configure(upstream::routes);
}

fn parse_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::NotFound("no such command".into()))
}

/// Loads a command the caller may read, or 404.
async fn visible_command(
    pool: &PgPool,
    principal: &Principal,
    id: Uuid,
) -> Result<StatusDocument, ApiError> {
    match load_status(pool, id).await? {
        Some((owner, doc)) if principal.can_read(&owner) => Ok(doc),
        _ => Err(ApiError::NotFound("no such command".into())),
    }
}
/// The `limit` query parameter (parsed here so the problem names it).
fn page_limit(limit: Option<&str>) -> Result<i64, ApiError> {
    let limit = match limit {
        None => 50,
        Some(raw) => raw.parse::<i64>().unwrap_or(0),
    };
    if !(1..=200).contains(&limit) {
        return Err(ApiError::validation("limit", "must be between 1 and 200"));
    }
    Ok(limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_follows_observed_latency_with_jitter_and_bounds() {
        // 8 s median + 0.5 s queue allowance, ±25 %: 6.375 s .. 10.625 s,
        // rounded up: 7 ..= 11.
        let values: std::collections::BTreeSet<u64> = (0..=100)
            .map(|i| retry_after_from(Some(8_000.0), 1, f64::from(i) / 100.0))
            .collect();
        assert_eq!(values.first(), Some(&7));
        assert_eq!(values.last(), Some(&11));
        assert!(values.len() >= 4, "clients spread out: {values:?}");
        // Fast integration: at least 1 s.
        assert_eq!(retry_after_from(Some(3.0), 1, 0.0), 1);
        // Very slow one: at most 30 s.
        assert_eq!(retry_after_from(Some(600_000.0), 1, 0.5), 30);
        // No observations (API-only process): the configured default, jittered.
        for i in 0..=10 {
            let s = retry_after_from(None, 4, f64::from(i) / 10.0);
            assert!((3..=5).contains(&s), "{s}");
        }
        assert_eq!(retry_after_from(Some(f64::NAN), 2, 0.5), 2);
    }
}
