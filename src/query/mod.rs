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

pub mod event_log;
pub mod integrations;

pub mod cache;
pub mod events;
pub mod longpoll;
pub mod upstream;

use std::sync::Arc;
use std::time::Instant;

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::Principal;
use crate::db::{ReadPool, WritePool};
use crate::domain::{CommandStatus, DeliveryStatus};
use crate::http::error::{ApiError, Problem};
use crate::http::state::Shared;
use crate::integration::resilience::Policies;
use crate::integration::UpstreamResult;

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

/// Where the callback stands (`docs/reference.md`, "The status document").
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CallbackState {
    /// The callback URL.
    pub url: String,
    /// `pending`, `delivered` or `dead_lettered`.
    pub status: DeliveryStatus,
    /// Attempts made so far.
    pub attempts: i32,
    /// The `webhook-id` once the delivery exists (after the upstream call).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_id: Option<Uuid>,
}

/// The status document of a command (`docs/reference.md`, "The status document").
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StatusDocument {
    /// Command id (UUIDv7).
    pub id: Uuid,
    /// `accepted`, `in_progress`, `succeeded` or `failed`.
    pub status: CommandStatus,
    /// Integration name.
    pub integration: String,
    /// Operation name.
    pub operation: String,
    /// When the command was accepted (RFC 3339).
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// Last status change (RFC 3339).
    pub updated_at: chrono::DateTime<chrono::Utc>,
    /// The upstream result; null until the upstream call has ended.
    pub result: Option<UpstreamResult>,
    /// The callback's state.
    pub callback: CallbackState,
}

#[derive(sqlx::FromRow)]
struct StatusRow {
    id: Uuid,
    client_id: String,
    status: String,
    integration: String,
    operation: String,
    created_at: chrono::DateTime<chrono::Utc>,
    updated_at: chrono::DateTime<chrono::Utc>,
    /// `commands.result`, the stored text ([`UpstreamResult::to_text`]).
    result: Option<String>,
    callback_url: String,
    delivery_id: Option<Uuid>,
    delivery_status: Option<String>,
    delivery_attempts: Option<i32>,
}

impl StatusRow {
    fn into_doc(self) -> (String, StatusDocument) {
        let doc = StatusDocument {
            id: self.id,
            status: CommandStatus::parse(&self.status).unwrap_or(CommandStatus::Accepted),
            integration: self.integration,
            operation: self.operation,
            created_at: self.created_at,
            updated_at: self.updated_at,
            result: self.result.as_deref().map(UpstreamResult::from_text),
            callback: CallbackState {
                url: self.callback_url,
                status: self
                    .delivery_status
                    .as_deref()
                    .and_then(DeliveryStatus::parse)
                    .unwrap_or(DeliveryStatus::Pending),
                attempts: self.delivery_attempts.unwrap_or(0),
                webhook_id: self.delivery_id,
            },
        };
        (self.client_id, doc)
    }
}

const STATUS_SELECT: &str = r#"
    SELECT c.id, c.client_id, c.status, c.integration, c.operation, c.created_at, c.updated_at,
           c.result, c.callback_url,
           d.id AS delivery_id, d.status AS delivery_status, d.attempts AS delivery_attempts
      FROM commands c
      LEFT JOIN deliveries d ON d.command_id = c.id
"#;

/// Loads a command's owner and status document.
///
/// # Errors
/// Database errors.
pub async fn load_status(
    pool: &PgPool,
    id: Uuid,
) -> sqlx::Result<Option<(String, StatusDocument)>> {
    let row: Option<StatusRow> = sqlx::query_as(&format!("{STATUS_SELECT} WHERE c.id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await?;
    Ok(row.map(StatusRow::into_doc))
}

/// Loads the status documents of the commands in `ids` that exist, in no
/// particular order (long-poll re-reads, [`longpoll`]).
///
/// # Errors
/// Database errors.
pub async fn load_statuses(pool: &PgPool, ids: &[Uuid]) -> sqlx::Result<Vec<StatusDocument>> {
    let rows: Vec<StatusRow> = sqlx::query_as(&format!("{STATUS_SELECT} WHERE c.id = ANY($1)"))
        .bind(ids)
        .fetch_all(pool)
        .await?;
    Ok(rows.into_iter().map(|r| r.into_doc().1).collect())
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

/// Query parameters of `GET /v1/commands/{id}`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StatusParams {
    /// Long-poll: wait up to this many seconds (0–60) for the document to
    /// change (from the `If-None-Match` version, else from its state now).
    #[param(value_type = Option<u64>)]
    pub wait: Option<String>,
}

/// Longest long-poll, seconds.
pub const MAX_WAIT_S: u64 = 60;

/// Strong validator of a status document (RFC 9110 §8.8.3): a hash of its JSON.
fn etag(doc: &StatusDocument) -> String {
    use sha2::{Digest, Sha256};
    let bytes = serde_json::to_vec(doc).unwrap_or_default();
    let hash = Sha256::digest(&bytes);
    let hex: String = hash[..12].iter().map(|b| format!("{b:02x}")).collect();
    format!("\"{hex}\"")
}

/// A command's status document (polling; ETag / `If-None-Match` → 304;
/// long-poll with `?wait=SECONDS`).
#[utoipa::path(
    get, path = "/v1/commands/{id}", tag = "commands",
    params(("id" = Uuid, Path, description = "Command id"), StatusParams,
           ("If-None-Match" = Option<String>, Header, description = "ETag of a document you hold: 304 when unchanged; with `wait`, waits for a change")),
    responses(
        (status = 200, description = "The status document", body = StatusDocument, headers(("ETag" = String), ("Retry-After" = u64, description = "Suggested polling delay while not finished, seconds"))),
        (status = 304, description = "Unchanged since the If-None-Match version"),
        (status = 401, description = "No or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Token has none of the roles client, reader, admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such command, not yours, or an id that is not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad `wait` (named in `field`)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable or saturated (retry after `Retry-After` seconds)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(name = "get_command", target = "hookrelay::query", skip_all, fields(command_id = %path))]
#[allow(clippy::too_many_arguments)]
pub async fn get_command(
    principal: Principal,
    path: web::Path<String>,
    params: web::Query<StatusParams>,
    req: actix_web::HttpRequest,
    read: Shared<ReadPool>,
    write: Shared<WritePool>,
    state: Shared<Arc<QueryState>>,
    settings: Shared<Arc<crate::config::Settings>>,
) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    let mut outcome = "bypass";
    let result = status_document(
        &principal,
        &path,
        &params,
        &req,
        &read,
        &write,
        &state,
        &settings,
        &mut outcome,
    )
    .await;
    log_answer("status", outcome, started, &result);
    result
}

#[allow(clippy::too_many_arguments)]
async fn status_document(
    principal: &Principal,
    path: &str,
    params: &StatusParams,
    req: &actix_web::HttpRequest,
    read: &ReadPool,
    write: &WritePool,
    state: &QueryState,
    settings: &crate::config::Settings,
    outcome: &mut &'static str,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(path)?;
    let wait = match params.wait.as_deref() {
        None => 0,
        Some(w) => w
            .parse::<u64>()
            .ok()
            .filter(|w| *w <= MAX_WAIT_S)
            .ok_or_else(|| {
                ApiError::validation("wait", format!("must be 0 to {MAX_WAIT_S} seconds"))
            })?,
    };
    let if_none_match = req
        .headers()
        .get(actix_web::http::header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    // Decided once: the first read and the long-poll wait use the same pool.
    let on_primary = state.reads_primary(principal);
    let fresh = on_primary && state.writers.is_fresh_command(id);
    let pool = if on_primary { &write.0 } else { &read.0 };
    let (mut doc, mut tag) = if wait > 0 || fresh || !state.status.enabled() {
        // Long-poll reads the database directly: a change must be seen
        // within a long-poll tick, not within the cache's staleness bound.
        // So does the writer of a command accepted here within the
        // read-your-writes window: its state changes fastest then.
        let doc = visible_command(pool, principal, id).await?;
        let tag = etag(&doc);
        (doc, tag)
    } else {
        let load = async {
            Ok(load_status(pool, id)
                .await?
                .map(|(owner, doc)| CachedStatus {
                    client_id: owner,
                    etag: etag(&doc),
                    doc,
                }))
        };
        let (cached, hit) = state.status.get_or_load(id, load).await?;
        *outcome = if hit { "hit" } else { "miss" };
        // The same rule as uncached: a document the caller could not read
        // from the database is not served from the cache either.
        if !principal.can_read(&cached.client_id) {
            return Err(ApiError::NotFound("no such command".into()));
        }
        (cached.doc.clone(), cached.etag.clone())
    };
    if wait > 0 {
        let baseline = if_none_match.clone().unwrap_or_else(|| tag.clone());
        if tag == baseline {
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(wait);
            // The same pool as the first read: within the read-your-writes
            // window a replica must not answer a change with an older state.
            let waiters = if on_primary {
                &state.long_poll_primary
            } else {
                &state.long_poll_read
            };
            if let Some((changed, changed_tag)) = waiters.changed(id, baseline, deadline).await {
                doc = changed;
                tag = changed_tag;
            }
        }
    }
    let matches = if_none_match
        .as_deref()
        .is_some_and(|inm| inm.split(',').any(|t| t.trim() == tag || t.trim() == "*"));
    let mut resp = if matches {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    resp.insert_header((actix_web::http::header::ETAG, tag))
        .insert_header(("X-Cache", *outcome));
    if !doc.status.is_terminal() || doc.callback.status == DeliveryStatus::Pending {
        resp.insert_header((
            actix_web::http::header::RETRY_AFTER,
            state
                .suggested_retry_after(&doc.integration, settings.commands.retry_after_s)
                .to_string(),
        ));
    }
    Ok(if matches {
        resp.finish()
    } else {
        resp.json(doc)
    })
}

/// Query parameters of `GET /v1/commands`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Page size, 1 to 200 (default 50).
    #[param(value_type = Option<i64>)]
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Only commands in this status.
    pub status: Option<String>,
    /// Only commands for this integration.
    pub integration: Option<String>,
}

/// A page of status documents.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CommandPage {
    /// Newest first.
    pub data: Vec<StatusDocument>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
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

/// Lists commands, newest first: the caller's own, or all for readers/admins.
#[utoipa::path(
    get, path = "/v1/commands", tag = "commands",
    params(ListParams),
    responses(
        (status = 200, description = "A page of status documents", body = CommandPage),
        (status = 401, description = "No or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Token has none of the roles client, reader, admin", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad `limit`, `cursor`, `status` or `integration` (named in `field`)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable or saturated (retry after `Retry-After` seconds)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(name = "list_commands", target = "hookrelay::query", skip_all)]
pub async fn list_commands(
    principal: Principal,
    params: web::Query<ListParams>,
    read: Shared<ReadPool>,
    write: Shared<WritePool>,
    state: Shared<Arc<QueryState>>,
) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    let result = async {
        let pool = state.pool(&principal, &read, &write);
        let limit = page_limit(params.limit.as_deref())?;
        if let Some(s) = &params.status {
            CommandStatus::parse(s).ok_or_else(|| {
                ApiError::validation(
                    "status",
                    "must be accepted, in_progress, succeeded or failed",
                )
            })?;
        }
        let cursor = params
            .cursor
            .as_deref()
            .map(|c| {
                Uuid::parse_str(c)
                    .map_err(|_| ApiError::validation("cursor", "is not a cursor from this API"))
            })
            .transpose()?;
        crate::http::body::reject_nul_param("integration", params.integration.as_deref())?;
        let owner = (!principal.reads_all()).then(|| principal.client_id.clone());
        let rows: Vec<StatusRow> = sqlx::query_as(&format!(
            r#"{STATUS_SELECT}
             WHERE ($1::text IS NULL OR c.client_id = $1)
               AND ($2::text IS NULL OR c.status = $2)
               AND ($3::text IS NULL OR c.integration = $3)
               AND ($4::uuid IS NULL OR c.id < $4)
             ORDER BY c.id DESC
             LIMIT $5"#
        ))
        .bind(owner)
        .bind(params.status.as_deref())
        .bind(params.integration.as_deref())
        .bind(cursor)
        .bind(limit + 1)
        .fetch_all(pool)
        .await?;
        let mut data: Vec<StatusDocument> = rows.into_iter().map(|r| r.into_doc().1).collect();
        let next_cursor = if data.len() > usize::try_from(limit).unwrap_or(usize::MAX) {
            data.pop();
            data.last().map(|d| d.id.to_string())
        } else {
            None
        };
        Ok::<_, ApiError>(HttpResponse::Ok().json(CommandPage { data, next_cursor }))
    }
    .await;
    log_answer("list", "bypass", started, &result);
    result
}

/// One webhook attempt in the audit log.
#[derive(Debug, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct Attempt {
    /// 1-based attempt number over the delivery's life.
    pub attempt: i32,
    /// The `webhook-id` sent.
    pub webhook_id: Uuid,
    /// `scheduled` or `replay`.
    pub trigger: String,
    /// When the attempt started (RFC 3339).
    pub started_at: chrono::DateTime<chrono::Utc>,
    /// How long it took, ms.
    pub duration_ms: i32,
    /// Receiver's status; null on a network error.
    pub response_status: Option<i32>,
    /// First bytes of the receiver's body (`delivery.response_body_limit_bytes`).
    pub response_body: Option<String>,
    /// Why the attempt failed; null on success.
    pub error: Option<String>,
}

/// A page of attempts.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AttemptPage {
    /// Oldest first.
    pub data: Vec<Attempt>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// Query parameters of `GET /v1/commands/{id}/attempts`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AttemptParams {
    /// Page size, 1 to 200 (default 50).
    #[param(value_type = Option<i64>)]
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// The delivery audit log of a command: every webhook attempt, oldest first.
#[utoipa::path(
    get, path = "/v1/commands/{id}/attempts", tag = "commands",
    params(("id" = Uuid, Path, description = "Command id"), AttemptParams),
    responses(
        (status = 200, description = "A page of attempts", body = AttemptPage),
        (status = 401, description = "No or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Token has none of the roles client, reader, admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such command, not yours, or an id that is not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad `limit` or `cursor` (named in `field`)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable or saturated (retry after `Retry-After` seconds)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(name = "list_attempts", target = "hookrelay::query", skip_all, fields(command_id = %path))]
pub async fn list_attempts(
    principal: Principal,
    path: web::Path<String>,
    params: web::Query<AttemptParams>,
    read: Shared<ReadPool>,
    write: Shared<WritePool>,
    state: Shared<Arc<QueryState>>,
) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    let result = async {
        let pool = state.pool(&principal, &read, &write);
        let id = parse_id(&path)?;
        let limit = page_limit(params.limit.as_deref())?;
        let after: i32 = match params.cursor.as_deref() {
            None => 0,
            Some(c) => c
                .parse()
                .map_err(|_| ApiError::validation("cursor", "is not a cursor from this API"))?,
        };
        visible_command(pool, &principal, id).await?;
        let mut data: Vec<Attempt> = sqlx::query_as(
            r#"
            SELECT a.attempt, a.delivery_id AS webhook_id, a.trigger, a.started_at, a.duration_ms,
                   a.response_status, a.response_body, a.error
              FROM delivery_attempts a
              JOIN deliveries d ON d.id = a.delivery_id
             WHERE d.command_id = $1 AND a.attempt > $2
             ORDER BY a.attempt
             LIMIT $3
            "#,
        )
        .bind(id)
        .bind(after)
        .bind(limit + 1)
        .fetch_all(pool)
        .await?;
        let next_cursor = if data.len() > usize::try_from(limit).unwrap_or(usize::MAX) {
            data.pop();
            data.last().map(|a| a.attempt.to_string())
        } else {
            None
        };
        Ok::<_, ApiError>(HttpResponse::Ok().json(AttemptPage { data, next_cursor }))
    }
    .await;
    log_answer("attempts", "bypass", started, &result);
    result
}

/// A dead-lettered delivery (`docs/reference.md`: `id`, `command_id`, `reason`,
/// `last_error`, `attempts`, `dead_lettered_at`).
#[derive(Debug, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct DeadLetter {
    /// The delivery id (the `webhook-id`), used by replay.
    pub id: Uuid,
    /// The command it reports on.
    pub command_id: Uuid,
    /// The command's owner.
    pub client_id: String,
    /// Integration of the command.
    pub integration: String,
    /// Operation of the command.
    pub operation: String,
    /// Callback URL.
    pub url: String,
    /// `exhausted` (retry schedule used up), `gone` (receiver answered 410),
    /// `abandoned` (its job kept failing without an outcome) or `integrity`
    /// (its job failed seal verification and was quarantined: nothing was
    /// sent, and it cannot be replayed).
    pub reason: Option<String>,
    /// The last attempt's error.
    pub last_error: Option<String>,
    /// Attempts over the delivery's life.
    pub attempts: i32,
    /// When it was dead-lettered (RFC 3339).
    pub dead_lettered_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// A page of dead letters.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DeadLetterPage {
    /// Newest dead letter first.
    pub data: Vec<DeadLetter>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// Query parameters of `GET /v1/dead-letters`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeadLetterParams {
    /// Page size, 1 to 200 (default 50).
    #[param(value_type = Option<i64>)]
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Only commands of this integration.
    pub integration: Option<String>,
    /// Only this client's deliveries.
    pub client_id: Option<String>,
    /// Dead-lettered at or after this time (RFC 3339).
    pub since: Option<String>,
    /// Dead-lettered before this time (RFC 3339).
    pub until: Option<String>,
}

fn parse_time(
    field: &str,
    raw: Option<&str>,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, ApiError> {
    raw.map(|t| {
        chrono::DateTime::parse_from_rfc3339(t)
            .map(|d| d.with_timezone(&chrono::Utc))
            .map_err(|_| {
                ApiError::validation(field, "must be an RFC 3339 time, e.g. 2026-11-21T10:00:00Z")
            })
    })
    .transpose()
}

/// Keyset cursor over `(dead_lettered_at DESC, id DESC)`: `<unix µs>_<id>`.
fn parse_dead_letter_cursor(raw: &str) -> Result<(chrono::DateTime<chrono::Utc>, Uuid), ApiError> {
    let bad = || ApiError::validation("cursor", "is not a cursor from this API");
    let (micros, id) = raw.split_once('_').ok_or_else(bad)?;
    let at = micros
        .parse::<i64>()
        .ok()
        .and_then(chrono::DateTime::from_timestamp_micros)
        .filter(crate::domain::storable_time)
        .ok_or_else(bad)?;
    Ok((at, Uuid::parse_str(id).map_err(|_| bad())?))
}

/// Dead-lettered deliveries, newest first (admin).
#[utoipa::path(
    get, path = "/v1/dead-letters", tag = "dead-letters",
    params(DeadLetterParams),
    responses(
        (status = 200, description = "A page of dead letters", body = DeadLetterPage),
        (status = 401, description = "No or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad `limit`, `cursor`, `since`, `until`, `integration` or `client_id` (named in `field`)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable or saturated (retry after `Retry-After` seconds)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(name = "list_dead_letters", target = "hookrelay::query", skip_all)]
pub async fn list_dead_letters(
    // Role checked by the authz layer; taking it keeps the route fail-closed.
    _principal: Principal,
    params: web::Query<DeadLetterParams>,
    read: Shared<ReadPool>,
) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    let result = async {
        let pool = &read.0;
        let limit = page_limit(params.limit.as_deref())?;
        crate::http::body::reject_nul_param("integration", params.integration.as_deref())?;
        crate::http::body::reject_nul_param("client_id", params.client_id.as_deref())?;
        let since = parse_time("since", params.since.as_deref())?;
        let until = parse_time("until", params.until.as_deref())?;
        let cursor = params
            .cursor
            .as_deref()
            .map(parse_dead_letter_cursor)
            .transpose()?;
        let mut data: Vec<DeadLetter> = sqlx::query_as(
            r#"
            SELECT d.id, d.command_id, d.client_id, c.integration, c.operation, d.url,
                   d.dead_letter_reason AS reason, d.last_error, d.attempts, d.dead_lettered_at
              FROM deliveries d
              JOIN commands c ON c.id = d.command_id
             WHERE d.status = 'dead_lettered'
               AND ($1::text IS NULL OR c.integration = $1)
               AND ($2::text IS NULL OR d.client_id = $2)
               AND ($3::timestamptz IS NULL OR d.dead_lettered_at >= $3)
               AND ($4::timestamptz IS NULL OR d.dead_lettered_at < $4)
               AND ($5::timestamptz IS NULL OR (d.dead_lettered_at, d.id) < ($5, $6))
             ORDER BY d.dead_lettered_at DESC, d.id DESC
             LIMIT $7
            "#,
        )
        .bind(params.integration.as_deref())
        .bind(params.client_id.as_deref())
        .bind(since)
        .bind(until)
        .bind(cursor.map(|c| c.0))
        .bind(cursor.map(|c| c.1))
        .bind(limit + 1)
        .fetch_all(pool)
        .await?;
        let next_cursor = if data.len() > usize::try_from(limit).unwrap_or(usize::MAX) {
            data.pop();
            data.last().and_then(|d| {
                d.dead_lettered_at
                    .map(|at| format!("{}_{}", at.timestamp_micros(), d.id))
            })
        } else {
            None
        };
        Ok::<_, ApiError>(HttpResponse::Ok().json(DeadLetterPage { data, next_cursor }))
    }
    .await;
    log_answer("dead_letters", "bypass", started, &result);
    result
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
