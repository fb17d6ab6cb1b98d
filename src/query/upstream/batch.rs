//! `POST /v1/queries/batch`: several upstream queries in one request, each
//! as `GET /v1/queries/{integration}/{query}` would answer it.

use std::sync::Arc;
use std::time::Instant;

use actix_web::{web, HttpRequest, HttpResponse};

use super::cache::QueryCache;
use super::handler::{run_query, Answer, QueryContext};
use crate::auth::Principal;
use crate::http::error::{ApiError, Problem};
use crate::integration::resilience::Policies;
use crate::integration::Integrations;

/// One query of a batch.
#[derive(Debug, Clone, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchQuery {
    /// Integration name.
    pub integration: String,
    /// Query name within the integration.
    pub query: String,
    /// Query-string parameters passed to the upstream (string, number or
    /// boolean values).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub params: serde_json::Map<String, serde_json::Value>,
}

/// Body of `POST /v1/queries/batch`.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// The queries, at most `query.batch_max_queries`.
    pub queries: Vec<BatchQuery>,
}

/// One entry of a batch answer: the upstream's response, or a problem document.
#[derive(Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct BatchResult {
    /// HTTP status this query would have answered alone.
    pub status: u16,
    /// `hit`, `miss` or `stale` (as `X-Cache`); absent with a problem.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<String>,
    /// Response headers: `content-type`, `age`, `x-fallback`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub headers: Option<std::collections::BTreeMap<String, String>>,
    /// The body: JSON when the upstream sent JSON, else a string.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub body: Option<serde_json::Value>,
    /// The problem document (RFC 9457) when this query failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<Problem>,
}

/// Answer of `POST /v1/queries/batch`.
#[derive(Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct BatchResponse {
    /// One result per query, in request order.
    pub results: Vec<BatchResult>,
}

impl BatchResult {
    fn from_answer(a: &Answer) -> Self {
        let mut headers = std::collections::BTreeMap::new();
        if let Some(ct) = &a.entry.content_type {
            headers.insert("content-type".to_owned(), ct.clone());
        }
        headers.insert("age".to_owned(), a.entry.age().as_secs().to_string());
        if a.fallback {
            headers.insert("x-fallback".to_owned(), "true".to_owned());
        }
        let is_json = a
            .entry
            .content_type
            .as_deref()
            .is_some_and(|ct| ct.contains("json"));
        let body = is_json
            .then(|| serde_json::from_slice(&a.entry.body).ok())
            .flatten()
            .unwrap_or_else(|| {
                serde_json::Value::String(String::from_utf8_lossy(&a.entry.body).into_owned())
            });
        BatchResult {
            status: a.entry.status,
            cache: Some(a.cache_header().to_owned()),
            headers: Some(headers),
            body: Some(body),
            problem: None,
        }
    }

    fn from_error(e: &ApiError) -> Self {
        let problem = e.problem();
        BatchResult {
            status: problem.status,
            cache: None,
            headers: None,
            body: None,
            problem: Some(problem),
        }
    }
}

/// The query string of a batch entry's `params`, or a 422 naming the parameter.
fn batch_query_string(
    index: usize,
    params: &serde_json::Map<String, serde_json::Value>,
) -> Result<String, ApiError> {
    let mut qs = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        let value = match v {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::Bool(b) => b.to_string(),
            _ => {
                return Err(ApiError::validation(
                    format!("queries[{index}].params.{k}"),
                    "must be a string, number or boolean",
                ))
            }
        };
        qs.append_pair(k, &value);
    }
    Ok(qs.finish())
}

/// Runs several upstream queries in one request, concurrently, each through
/// the same role check, cache, coalescing and resilience policy as
/// `GET /v1/queries/{integration}/{query}`; one result per query, in order.
#[utoipa::path(
    post, path = "/v1/queries/batch", tag = "queries",
    request_body = BatchRequest,
    responses(
        (status = 200, description = "One result (or problem document) per query, in request order", body = BatchResponse),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Token lacks the client, reader or admin role", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "No queries, more than `query.batch_max_queries` (field `queries`), or an invalid entry (named in `field`)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(
    name = "batch_query",
    target = "hookrelay::query",
    skip_all,
    fields(queries)
)]
#[allow(clippy::too_many_arguments)]
pub async fn batch_queries(
    principal: Principal,
    req: HttpRequest,
    payload: web::Payload,
    settings: crate::http::state::Shared<Arc<crate::config::Settings>>,
    integrations: crate::http::state::Shared<Arc<Integrations>>,
    policies: crate::http::state::Shared<Arc<Policies>>,
    cache: crate::http::state::Shared<Arc<QueryCache>>,
) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    let result = async {
        crate::http::body::check_json_content_type(&req)?;
        let bytes =
            crate::http::body::read_limited(payload, settings.server.body_limit_bytes).await?;
        let request = crate::http::body::parse_json::<BatchRequest>(&bytes)?;
        let max = settings.query.batch_max_queries;
        if request.queries.is_empty() || request.queries.len() > max {
            return Err(ApiError::validation(
                "queries",
                format!("must hold 1 to {max} queries"),
            ));
        }
        tracing::Span::current().record("queries", request.queries.len() as u64);
        // The request itself was charged once by the limits middleware; each
        // further entry costs one more request of the client's rate limit.
        if let Some(guard) =
            <Arc<crate::auth::limits::Guard> as crate::http::state::Component>::from_app(&req)
        {
            let extra = u32::try_from(request.queries.len() - 1).unwrap_or(u32::MAX);
            guard.charge_client(&principal.client_id, extra)?;
        }
        let ctx = QueryContext {
            settings: &settings,
            integrations: &integrations,
            policies: &policies,
            cache: &cache,
        };
        let runs = request.queries.iter().enumerate().map(|(i, q)| {
            let ctx = &ctx;
            let principal = &principal;
            async move {
                let entry_started = Instant::now();
                let answer = match batch_query_string(i, &q.params) {
                    Ok(qs) => run_query(ctx, principal, &q.integration, &q.query, &qs).await,
                    Err(e) => Err(e),
                };
                let outcome = answer.as_ref().map_or("bypass", Answer::metric_outcome);
                let status = match &answer {
                    Ok(a) => a.entry.status,
                    Err(e) => e.problem().status,
                };
                crate::telemetry::metrics::query_answered(
                    "upstream",
                    outcome,
                    entry_started.elapsed().as_secs_f64(),
                );
                tracing::info!(
                    target: "hookrelay::query",
                    endpoint = "upstream",
                    batch_index = i,
                    integration = %q.integration,
                    query = %q.query,
                    cache = outcome,
                    status,
                    duration_ms = entry_started.elapsed().as_millis() as u64,
                    "query answered"
                );
                match answer {
                    Ok(a) => BatchResult::from_answer(&a),
                    Err(e) => BatchResult::from_error(&e),
                }
            }
        });
        let results = futures_util::future::join_all(runs).await;
        Ok(HttpResponse::Ok().json(BatchResponse { results }))
    }
    .await;
    crate::query::log_answer("batch", "bypass", started, &result);
    result
}
