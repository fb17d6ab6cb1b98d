//! `GET /v1/dead-letters`: deliveries that ran out of attempts (or failed
//! their integrity check), newest first, filterable and keyset-paged; the
//! replay that sends them again is the write side's (`crate::command::replay`).

use std::time::Instant;

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::Principal;
use crate::db::ReadPool;
use crate::http::error::{ApiError, Problem};
use crate::http::state::Shared;

use super::*;

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
