//! `GET /v1/queries/{integration}/{query}`: one query through the role check,
//! the cache, coalescing and the integration's policy, answered from a stale
//! copy or the fallback when the upstream cannot answer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::future::FutureExt;

use super::cache::{canonical_query, Entry, QueryCache, Retire};
use super::fetch::{answer_from_fallback, fetch, FetchError};
use crate::auth::Principal;
use crate::config::QuerySettings;
use crate::http::error::{ApiError, Problem};
use crate::integration::resilience::Policies;
use crate::integration::Integrations;

/// The HTTP response of a cache entry, with `X-Cache` and `Age`.
pub(super) fn respond(entry: &Entry, cache: &str) -> HttpResponse {
    let status = actix_web::http::StatusCode::from_u16(entry.status)
        .unwrap_or(actix_web::http::StatusCode::BAD_GATEWAY);
    let mut resp = HttpResponse::build(status);
    if let Some(ct) = &entry.content_type {
        resp.insert_header((header::CONTENT_TYPE, ct.as_str()));
    }
    resp.insert_header(("X-Cache", cache))
        .insert_header((header::AGE, entry.age().as_secs().to_string()));
    resp.body(entry.body.clone())
}

/// A `Retry-After` value: whole seconds, at least 1.
pub(super) fn seconds(d: Duration) -> String {
    d.as_secs_f64().ceil().max(1.0).to_string()
}

/// What a query produced: the response, where it came from, and whether a
/// fallback answered.
pub(super) struct Answer {
    /// The response.
    pub(super) entry: Arc<Entry>,
    /// `hit`, `miss`, `stale` or `fallback`.
    pub(super) cache: &'static str,
    /// Whether a fallback answered.
    pub(super) fallback: bool,
}

impl Answer {
    fn into_response(self) -> HttpResponse {
        let mut resp = respond(&self.entry, self.cache_header());
        if self.fallback {
            resp.headers_mut().insert(
                header::HeaderName::from_static("x-fallback"),
                header::HeaderValue::from_static("true"),
            );
        }
        resp
    }

    /// The `X-Cache` value: a fallback's answer is a miss (it was fetched).
    pub(super) fn cache_header(&self) -> &'static str {
        if self.fallback {
            "miss"
        } else {
            self.cache
        }
    }

    /// The `outcome` label of `hookrelay_cache_requests_total`.
    pub(super) fn metric_outcome(&self) -> &'static str {
        match self.cache {
            "hit" => "hit",
            "stale" => "stale",
            _ => "miss",
        }
    }
}

/// What the query handlers share (app data, one per process).
pub(super) struct QueryContext<'a> {
    pub(super) settings: &'a crate::config::Settings,
    pub(super) integrations: &'a Arc<Integrations>,
    pub(super) policies: &'a Arc<Policies>,
    pub(super) cache: &'a QueryCache,
}

/// Reads a declared upstream query through the cache (see the module docs).
#[utoipa::path(
    get, path = "/v1/queries/{integration}/{query}", tag = "queries",
    params(("integration" = String, Path), ("query" = String, Path)),
    responses(
        (status = 200, description = "The upstream's response, with its Content-Type (headers X-Cache: hit|miss|stale, Age; X-Fallback: true when a fallback answered)"),
        (status = "2XX", description = "Another success status of the upstream, passed on with its body and Content-Type"),
        (status = 401, description = "No or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Token lacks a role this query allows (`roles`)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such integration or query (a problem document); or the upstream's own 404, passed on with its body and Content-Type",
         content((Problem = "application/problem+json"), ("*/*"))),
        (status = "4XX", description = "Another client error of the upstream (not 401, 403, 407, 408 or 429, which answer 502 or are retried), passed on with its body and Content-Type"),
        (status = 429, description = "Throttled and no stale copy (Retry-After)", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "Upstream failed (5xx, timeout), redirected (3xx, never followed) or refused the integration's credential (401, 403, 407), and no stale copy", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Circuit breaker open and no stale copy (Retry-After)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(
    name = "upstream_query",
    target = "hookrelay::query",
    skip_all,
    fields(integration, query, cache)
)]
pub async fn get_query(
    principal: Principal,
    path: web::Path<(String, String)>,
    req: HttpRequest,
    settings: crate::http::state::Shared<Arc<crate::config::Settings>>,
    integrations: crate::http::state::Shared<Arc<Integrations>>,
    policies: crate::http::state::Shared<Arc<Policies>>,
    cache: crate::http::state::Shared<Arc<QueryCache>>,
) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    let (name, query) = path.into_inner();
    let span = tracing::Span::current();
    span.record("integration", name.as_str());
    span.record("query", query.as_str());
    let ctx = QueryContext {
        settings: &settings,
        integrations: &integrations,
        policies: &policies,
        cache: &cache,
    };
    let result = run_query(&ctx, &principal, &name, &query, req.query_string()).await;
    let outcome = result.as_ref().map_or("bypass", Answer::metric_outcome);
    if let Ok(a) = &result {
        span.record("cache", a.cache);
    }
    let result = result.map(Answer::into_response);
    crate::query::log_answer("upstream", outcome, started, &result);
    result
}

/// One query through the role check, the cache, coalescing and the policy;
/// shared by `GET /v1/queries/…` and the batch endpoint. `raw_qs` is passed
/// to the upstream as it is.
pub(super) async fn run_query(
    ctx: &QueryContext<'_>,
    principal: &Principal,
    name: &str,
    query: &str,
    raw_qs: &str,
) -> Result<Answer, ApiError> {
    let (settings, integrations, policies, cache) =
        (ctx.settings, ctx.integrations, ctx.policies, ctx.cache);
    let not_found = || ApiError::NotFound(format!("no query `{query}` in integration `{name}`"));
    let qsettings: QuerySettings = settings
        .integrations
        .get(name)
        .and_then(|i| i.queries.get(query))
        .cloned()
        .ok_or_else(not_found)?;
    principal.require(crate::auth::authz::query_roles(&qsettings))?;
    if integrations.get(name).is_none() || policies.get(name).is_none() {
        return Err(not_found());
    }
    let qs = canonical_query(raw_qs);
    let shared_key = format!("{name}/{query}?{qs}");
    let client_key = format!("{shared_key}|{}", principal.client_id);

    // 1. A fresh copy?
    let mut key = shared_key.clone();
    let mut cached = cache.get(&shared_key).await;
    if cached.as_ref().is_some_and(|e| e.private) {
        key = client_key.clone();
        cached = cache.get(&client_key).await;
    }
    if let Some(e) = cached.as_ref().filter(|e| e.is_fresh()) {
        return Ok(Answer {
            entry: e.clone(),
            cache: "hit",
            fallback: false,
        });
    }

    // 2. One upstream call per key at a time.
    let mut initiated = false;
    let make_fetch = || {
        let integration = integrations.get_shared(name);
        let policies = policies.clone();
        let policy_name = name.to_owned();
        let (path, query_name, qs) = (
            qsettings.path.to_string(),
            query.to_owned(),
            raw_qs.to_owned(),
        );
        let cap = Duration::from_secs(qsettings.cache_ttl_s);
        let stale = Duration::from_secs(qsettings.stale_if_error_s);
        async move {
            let (Some(integration), Some(policy)) = (integration, policies.get(&policy_name))
            else {
                return Err(FetchError::Upstream("integration not configured".into()));
            };
            fetch(&integration, policy, &query_name, &path, &qs, cap, stale).await
        }
    };
    // The fetch runs in a task of its own, so it finishes (and gives back its
    // in-flight slot or breaker probe, and leaves `inflight`) even when every
    // request waiting on it has gone away.
    let shared_fetch = {
        let mut inflight = cache
            .inflight
            .lock()
            .map_err(|_| ApiError::Internal(anyhow::anyhow!("query cache lock poisoned")))?;
        inflight
            .entry(key.clone())
            .or_insert_with(|| {
                initiated = true;
                let n = cache
                    .next_fetch
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let fetch = make_fetch();
                let retire = Retire {
                    registry: cache.inflight.clone(),
                    key: key.clone(),
                    n,
                };
                let task = tokio::spawn(async move {
                    // Retired however the task ends (a panic included).
                    let _retire = retire;
                    fetch.await
                });
                let joined = async move {
                    task.await.unwrap_or_else(|e| {
                        Err(FetchError::Upstream(format!("the query task failed: {e}")))
                    })
                };
                (n, joined.boxed().shared())
            })
            .1
            .clone()
    };
    let mut result = shared_fetch.await;
    if !initiated && result.as_ref().is_ok_and(|e| e.private) {
        // Another client's call turned out private: never hand it over;
        // fetch for this client on its own.
        result = make_fetch().await;
    }

    match result {
        Ok(entry) => {
            // Only the caller that started the fetch stores it (coalesced
            // waiters would store the same entry again); a private entry
            // here is this caller's own (fetched again above if need be).
            if initiated || entry.private {
                if entry.private {
                    // Never share: store under this client's key only, with a
                    // marker under the shared key so later lookups go there.
                    if entry.fresh_for > Duration::ZERO {
                        cache.insert(client_key, entry.clone()).await;
                        cache
                            .insert(
                                shared_key,
                                Arc::new(Entry {
                                    status: 0,
                                    content_type: None,
                                    body: web::Bytes::new(),
                                    stored_at: Instant::now(),
                                    fresh_for: Duration::ZERO,
                                    stale_for: Duration::from_secs(86_400),
                                    private: true,
                                }),
                            )
                            .await;
                    }
                } else if entry.fresh_for > Duration::ZERO {
                    cache.insert(shared_key, entry.clone()).await;
                }
            }
            Ok(Answer {
                entry,
                cache: "miss",
                fallback: false,
            })
        }
        Err(e) => {
            if let Some(stale) = cached
                .as_ref()
                .filter(|c| !c.private && c.is_usable_stale())
            {
                tracing::debug!(target: "hookrelay::query", cache = "stale", reason = ?e, "query answered from a stale copy");
                return Ok(Answer {
                    entry: stale.clone(),
                    cache: "stale",
                    fallback: false,
                });
            }
            if let (FetchError::Open(_), Some(fb)) = (&e, &qsettings.fallback) {
                let answer =
                    answer_from_fallback(settings, integrations, policies, name, query, fb, raw_qs)
                        .await;
                if let Some(entry) = answer {
                    return Ok(Answer {
                        entry,
                        cache: "fallback",
                        fallback: true,
                    });
                }
            }
            Err(match e {
                FetchError::Open(d) => ApiError::UpstreamUnavailable {
                    detail: format!("the circuit breaker of `{name}` is open"),
                    retry_after: seconds(d),
                },
                FetchError::Throttled(d) => ApiError::Throttled {
                    detail: format!("calls to `{name}` are throttled"),
                    retry_after: seconds(d),
                },
                FetchError::Upstream(why) => {
                    ApiError::BadGateway(format!("upstream `{name}` failed: {why}"))
                }
            })
        }
    }
}
