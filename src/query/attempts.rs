//! `GET /v1/commands/{id}/attempts`: the delivery audit log of one
//! command, oldest first, keyset-paged.

use std::sync::Arc;
use std::time::Instant;

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::Principal;
use crate::db::{ReadPool, WritePool};
use crate::http::error::{ApiError, Problem};
use crate::http::state::Shared;

use super::*;

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
