//! `GET /v1/commands`: the caller's commands (or all, for readers and
//! admins), newest first, keyset-paged.

use std::sync::Arc;
use std::time::Instant;

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::Principal;
use crate::db::{ReadPool, WritePool};
use crate::domain::CommandStatus;
use crate::http::error::{ApiError, Problem};
use crate::http::state::Shared;

use super::status::{StatusRow, STATUS_SELECT};
use super::*;

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
