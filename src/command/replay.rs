//! Admin replay of dead letters (write side).
//!
//! A replay re-enqueues a dead-lettered delivery as a fresh run: a new
//! `deliver` job (trigger `replay`) whose retry schedule starts again, with the
//! same `webhook-id`, so receivers de-duplicate as usual. Bulk replay selects by
//! filter and re-enqueues every match in one statement: when `202` is answered
//! the whole replay is durable, and a restart midway through the deliveries
//! loses nothing (they are ordinary outbox jobs).

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::Principal;
use crate::delivery::dead_letters::{dead_letters_remain, replay_dead_letters, ReplayFilter};
use crate::http::error::{ApiError, Problem};
use crate::http::state::Shared;

use crate::db::WritePool;

/// Answer of `POST /v1/dead-letters/{id}/replay`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Replayed {
    /// The delivery id (the `webhook-id`, unchanged by the replay).
    pub id: Uuid,
    /// `pending`: a new delivery run is queued.
    pub status: String,
}

/// Body of `POST /v1/dead-letters/replay`; every field optional (an empty body
/// replays every dead letter).
#[derive(Debug, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkReplayRequest {
    /// Only commands of this integration.
    pub integration: Option<String>,
    /// Only this client's deliveries.
    pub client_id: Option<String>,
    /// Dead-lettered at or after this time (RFC 3339).
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Dead-lettered before this time (RFC 3339).
    pub until: Option<chrono::DateTime<chrono::Utc>>,
}

/// Answer of `POST /v1/dead-letters/replay`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BulkReplayed {
    /// How many dead letters were re-enqueued.
    pub replayed: i64,
    /// More dead letters match: repeat the request to replay the next batch
    /// (at most [`MAX_BULK_REPLAY`] per request, oldest first).
    pub more: bool,
}

/// Most dead letters one bulk replay request re-enqueues, so one request never
/// locks millions of rows or floods receivers at once.
pub const MAX_BULK_REPLAY: i64 = 10_000;

/// Re-enqueue one dead-lettered delivery. A dead letter quarantined for
/// `integrity` (failed seal verification) is refused with 409.
#[utoipa::path(
    post, path = "/v1/dead-letters/{id}/replay", tag = "dead-letters",
    params(("id" = Uuid, Path, description = "Delivery id (the webhook-id)")),
    responses(
        (status = 202, description = "Re-enqueued", body = Replayed),
        (status = 401, description = "No or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such delivery, or an id that is not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The delivery is not dead-lettered, was quarantined for integrity, or is being replayed by another request", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable or saturated (retry after `Retry-After` seconds)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(name = "replay_dead_letter", target = "hookrelay::command", skip_all, fields(delivery_id = %path))]
pub async fn replay_one(
    principal: Principal,
    path: web::Path<String>,
    pool: Shared<WritePool>,
) -> Result<HttpResponse, ApiError> {
    let id = Uuid::parse_str(&path).map_err(|_| ApiError::NotFound("no such delivery".into()))?;
    let replayed = replay_dead_letters(&pool.0, Some(id), &ReplayFilter::default(), 1).await?;
    if replayed == 0 {
        let row: Option<(String, Option<String>)> =
            sqlx::query_as("SELECT status, dead_letter_reason FROM deliveries WHERE id = $1")
                .bind(id)
                .fetch_optional(&pool.0)
                .await?;
        return Err(match row {
            None => ApiError::NotFound("no such delivery".into()),
            Some((_, Some(reason))) if reason == "integrity" => ApiError::Conflict(format!(
                "delivery {id} was quarantined (integrity): its rows failed seal verification, \
                 so it is never replayed; see docs/security.md, \"Sealed outbox jobs\""
            )),
            // Still dead-lettered but skipped: another replay holds the row
            // (SKIP LOCKED) and is re-enqueueing it now.
            Some((s, _)) if s == "dead_lettered" => {
                ApiError::Conflict(format!("a replay of delivery {id} is already in progress"))
            }
            Some((s, _)) => ApiError::Conflict(format!(
                "delivery {id} is {s}, not dead_lettered; only dead letters can be replayed"
            )),
        });
    }
    tracing::info!(target: "hookrelay::command", admin = %principal.client_id, "dead letter replayed");
    Ok(HttpResponse::Accepted().json(Replayed {
        id,
        status: "pending".into(),
    }))
}

/// Re-enqueue every dead letter matching the filter.
#[utoipa::path(
    post, path = "/v1/dead-letters/replay", tag = "dead-letters",
    request_body(content = BulkReplayRequest, description = "Optional filter; empty replays all"),
    responses(
        (status = 202, description = "Re-enqueued; how many", body = BulkReplayed),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over `server.body_limit_bytes`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid filter (named in `field`)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable or saturated (retry after `Retry-After` seconds)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(name = "replay_dead_letters", target = "hookrelay::command", skip_all)]
pub async fn replay_bulk(
    principal: Principal,
    payload: web::Payload,
    settings: Shared<std::sync::Arc<crate::config::Settings>>,
    pool: Shared<WritePool>,
) -> Result<HttpResponse, ApiError> {
    // Read like every other body: up to `server.body_limit_bytes`, beyond
    // that a 413 problem document (not actix's own plain-text answer at its
    // 256 KiB default).
    let body = crate::http::body::read_limited(payload, settings.server.body_limit_bytes).await?;
    let request: BulkReplayRequest = if body.iter().all(u8::is_ascii_whitespace) {
        BulkReplayRequest::default()
    } else {
        crate::http::body::parse_json(&body)?
    };
    for (field, value) in [
        ("integration", &request.integration),
        ("client_id", &request.client_id),
    ] {
        crate::http::body::reject_nul_param(field, value.as_deref())?;
    }
    for (field, value) in [("since", request.since), ("until", request.until)] {
        if value.is_some_and(|t| !crate::domain::storable_time(&t)) {
            return Err(ApiError::validation(
                field,
                "must be a time in the years 1 to 9999",
            ));
        }
    }
    if let (Some(since), Some(until)) = (request.since, request.until) {
        if since >= until {
            return Err(ApiError::validation("until", "must be after `since`"));
        }
    }
    let filter = ReplayFilter {
        integration: request.integration,
        client_id: request.client_id,
        since: request.since,
        until: request.until,
    };
    let replayed = replay_dead_letters(&pool.0, None, &filter, MAX_BULK_REPLAY).await?;
    let more = replayed == MAX_BULK_REPLAY && dead_letters_remain(&pool.0, &filter).await?;
    tracing::info!(target: "hookrelay::command", admin = %principal.client_id, count = replayed, more, "dead letters replayed");
    Ok(HttpResponse::Accepted().json(BulkReplayed { replayed, more }))
}
