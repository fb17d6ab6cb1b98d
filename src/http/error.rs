//! The API's error policy: every error a client sees is an
//! `application/problem+json` document (RFC 9457) with a stable `type`, the
//! HTTP `status`, a human `title`/`detail` and, for input errors, the `field`
//! at fault. Internal errors are logged with their cause chain and answered
//! with a generic 500; database messages are never shown to users.

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use utoipa::ToSchema;

/// Media type of problem documents (RFC 9457 §3).
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An RFC 9457 problem document as sent on the wire.
#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct Problem {
    /// Stable problem type URI, `urn:hookrelay:problem:<slug>`.
    #[serde(rename = "type")]
    pub type_: String,
    /// Short summary of the problem type.
    pub title: String,
    /// HTTP status code.
    pub status: u16,
    /// What went wrong in this occurrence.
    pub detail: String,
    /// The request field at fault (JSON path such as `params.thing_id`, a query
    /// parameter or a header name), for input errors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// Errors returned by HTTP handlers.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is not well-formed (bad JSON, wrong type).
    #[error("{message}")]
    BadRequest {
        /// Field at fault, when known.
        field: Option<String>,
        /// Description.
        message: String,
    },
    /// 401: missing, malformed, badly signed or expired token.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: valid token, insufficient role.
    #[error("{0}")]
    Forbidden(String),
    /// 404: no such resource (or not visible to this caller).
    #[error("{0}")]
    NotFound(String),
    /// 409: conflicts with existing state (e.g. idempotency key reused with another body).
    #[error("{0}")]
    Conflict(String),
    /// 413: body larger than `server.body_limit_bytes`.
    #[error("request body exceeds {limit} bytes")]
    PayloadTooLarge {
        /// The limit, bytes.
        limit: usize,
    },
    /// 415: body is not JSON.
    #[error("content-type must be application/json")]
    UnsupportedMediaType,
    /// 422: well-formed but invalid input.
    #[error("{message}")]
    Validation {
        /// Field at fault.
        field: String,
        /// Description.
        message: String,
    },
    /// 503: a dependency (database) is unavailable or saturated; retry later.
    #[error("{0}")]
    Unavailable(String),
    /// 503 with `Retry-After`: the upstream's circuit breaker is open.
    #[error("{detail}")]
    UpstreamUnavailable {
        /// Description.
        detail: String,
        /// Seconds until it may work again.
        retry_after: String,
    },
    /// 503 with `Retry-After` (whole seconds): the outbox backlog or lag is
    /// over its `[admission]` bound, so a new command is refused rather than
    /// accepted late.
    #[error("{detail}")]
    Overloaded {
        /// Which bound, with the sampled value.
        detail: String,
        /// Seconds to wait (`admission.retry_after_s`).
        retry_after_s: u64,
    },
    /// 429 with `Retry-After`: calls to the upstream are throttled.
    #[error("{detail}")]
    Throttled {
        /// Description.
        detail: String,
        /// Seconds to wait.
        retry_after: String,
    },
    /// 429 with `Retry-After` (whole seconds, ≥ 1): this caller (IP address or
    /// client) exceeded an API rate limit (`[limits]`).
    #[error("rate limit exceeded ({scope}); retry after {retry_after_s} s")]
    RateLimited {
        /// Which limit: `ip`, `client` or `rotation`.
        scope: &'static str,
        /// Seconds until a request would be admitted.
        retry_after_s: u64,
    },
    /// 431: the request headers together exceed `server.max_header_bytes`.
    #[error("request headers exceed {limit} bytes")]
    HeadersTooLarge {
        /// The limit, bytes.
        limit: usize,
    },
    /// 502: the upstream failed.
    #[error("{0}")]
    BadGateway(String),
    /// 500: anything unexpected; the cause is logged, not shown.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    /// A 422 naming `field`.
    pub fn validation(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::Validation {
            field: field.into(),
            message: message.into(),
        }
    }

    fn slug_and_title(&self) -> (&'static str, &'static str) {
        match self {
            ApiError::BadRequest { .. } => ("bad-request", "Malformed request"),
            ApiError::Unauthorized(_) => ("unauthorized", "Authentication required"),
            ApiError::Forbidden(_) => ("forbidden", "Not allowed"),
            ApiError::NotFound(_) => ("not-found", "Not found"),
            ApiError::Conflict(_) => ("conflict", "Conflict"),
            ApiError::PayloadTooLarge { .. } => ("payload-too-large", "Payload too large"),
            ApiError::UnsupportedMediaType => ("unsupported-media-type", "Unsupported media type"),
            ApiError::Validation { .. } => ("validation", "Invalid request"),
            ApiError::Unavailable(_) => ("unavailable", "Service unavailable"),
            ApiError::UpstreamUnavailable { .. } => {
                ("upstream-unavailable", "Upstream unavailable")
            }
            ApiError::Overloaded { .. } => ("overloaded", "Overloaded"),
            ApiError::Throttled { .. } => ("throttled", "Too many requests"),
            ApiError::RateLimited { .. } => ("rate-limited", "Rate limit exceeded"),
            ApiError::HeadersTooLarge { .. } => {
                ("headers-too-large", "Request header fields too large")
            }
            ApiError::BadGateway(_) => ("bad-gateway", "Upstream failed"),
            ApiError::Internal(_) => ("internal", "Internal server error"),
        }
    }

    /// The problem document for this error.
    pub fn problem(&self) -> Problem {
        let (slug, title) = self.slug_and_title();
        let field = match self {
            ApiError::BadRequest { field, .. } => field.clone(),
            ApiError::Validation { field, .. } => Some(field.clone()),
            _ => None,
        };
        let detail = match self {
            ApiError::Internal(_) => "an unexpected error occurred; it has been logged".to_owned(),
            other => other.to_string(),
        };
        Problem {
            type_: format!("urn:hookrelay:problem:{slug}"),
            title: title.to_owned(),
            status: self.status_code().as_u16(),
            detail,
            field,
        }
    }
}

/// What a client is told about a database error: that it may retry (a
/// transient error: 503) or, for anything else, only that the database
/// failed (the cause is logged, never shown).
pub fn database_detail(e: &sqlx::Error) -> &'static str {
    if crate::db::batch::is_transient(e) {
        "the database is busy or unavailable; retry later"
    } else {
        "database error"
    }
}

/// The database rule: a transient error is a 503 (retry), anything else a
/// 500 whose cause is logged.
impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        if crate::db::batch::is_transient(&e) {
            ApiError::Unavailable(database_detail(&e).into())
        } else {
            let detail = database_detail(&e);
            ApiError::Internal(anyhow::Error::new(e).context(detail))
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Validation { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unavailable(_)
            | ApiError::UpstreamUnavailable { .. }
            | ApiError::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Throttled { .. } | ApiError::RateLimited { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let ApiError::Internal(e) = self {
            tracing::error!(error = ?e, "internal error");
        }
        let mut resp = HttpResponse::build(self.status_code());
        resp.insert_header((header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON)));
        match self {
            ApiError::Unauthorized(_) => {
                resp.insert_header((header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")));
            }
            ApiError::Unavailable(_) => {
                resp.insert_header((header::RETRY_AFTER, HeaderValue::from_static("1")));
            }
            ApiError::UpstreamUnavailable { retry_after, .. }
            | ApiError::Throttled { retry_after, .. } => {
                resp.insert_header((header::RETRY_AFTER, retry_after.as_str()));
            }
            ApiError::RateLimited { retry_after_s, .. }
            | ApiError::Overloaded { retry_after_s, .. } => {
                resp.insert_header((header::RETRY_AFTER, retry_after_s.max(&1).to_string()));
            }
            _ => {}
        }
        resp.json(self.problem())
    }
}

/// Turns actix extractor errors (bad path or query parameters) into problem
/// documents naming the parameter.
pub fn query_error_handler(
    err: actix_web::error::QueryPayloadError,
    _req: &actix_web::HttpRequest,
) -> actix_web::Error {
    let message = err.to_string();
    let field = message
        .split('`')
        .nth(1)
        .map(str::to_owned)
        .unwrap_or_else(|| "query".to_owned());
    ApiError::Validation { field, message }.into()
}

/// Path-parameter errors as problem documents.
pub fn path_error_handler(
    err: actix_web::error::PathError,
    _req: &actix_web::HttpRequest,
) -> actix_web::Error {
    ApiError::NotFound(format!("no such resource ({err})")).into()
}

/// Default service: unknown routes answer a 404 problem document.
pub async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound("no such route".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_errors_do_not_leak_their_cause() {
        let e = ApiError::Internal(anyhow::anyhow!("password=hunter2 relation x"));
        let p = e.problem();
        assert_eq!(p.status, 500);
        assert!(!p.detail.contains("hunter2"));
    }

    #[test]
    fn validation_names_the_field() {
        let p = ApiError::validation("callback_url", "must be http or https").problem();
        assert_eq!(p.status, 422);
        assert_eq!(p.field.as_deref(), Some("callback_url"));
        assert_eq!(p.type_, "urn:hookrelay:problem:validation");
    }
}
