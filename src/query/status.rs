//! Status documents: the shape of one command's state ([`StatusDocument`]),
//! loading it ([`load_status`], [`load_statuses`]) and
//! `GET /v1/commands/{id}` ([`get_command`]: cached, conditional with
//! `ETag`/`If-None-Match`, long-poll with `?wait=`).

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
use crate::integration::UpstreamResult;

use super::*;

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
pub(super) struct StatusRow {
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
    pub(super) fn into_doc(self) -> (String, StatusDocument) {
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

pub(super) const STATUS_SELECT: &str = r#"
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

/// Status-cache errors at the HTTP edge: an unknown command is a 404; this
/// caller's failed read follows the database rule; a read shared with other
/// callers that failed is a 503 for them.
impl From<super::cache::StatusCacheError> for ApiError {
    fn from(e: super::cache::StatusCacheError) -> Self {
        use super::cache::StatusCacheError;
        match e {
            StatusCacheError::NotFound => ApiError::NotFound("no such command".into()),
            StatusCacheError::Database(e) => e.into(),
            StatusCacheError::Shared(shared) => ApiError::Unavailable(format!(
                "reading the status failed: {}",
                match &*shared {
                    StatusCacheError::Database(e) => crate::http::error::database_detail(e),
                    _ => "database error",
                }
            )),
        }
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
pub(super) fn etag(doc: &StatusDocument) -> String {
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
