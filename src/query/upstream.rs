//! Upstream queries: `GET /v1/queries/{integration}/{query}` through a response
//! cache, request coalescing and the integration's resilience policy.
//!
//! **Cache.** In-process (moka). A `200` response is stored for the freshness
//! the upstream allows (RFC 9111): `s-maxage`, else `max-age`, else `Expires`,
//! else the query's `cache_ttl_s`, and never longer than `cache_ttl_s`.
//! `no-store` and `no-cache` responses are not stored. A `private` response is
//! stored per client and never served to another client. The key is the
//! integration, query and the sorted query string. Responses carry
//! `X-Cache: hit | miss | stale` and `Age` (seconds in the cache).
//!
//! **Coalescing.** Concurrent requests for a key that is not fresh share one
//! upstream call: the first starts it, the others await the same result.
//!
//! **Resilience.** The call passes the integration's policy. When the breaker
//! is open (503), the call is throttled (429 with `Retry-After`) or the
//! upstream fails (502), a stale copy within `stale_if_error_s` (or the
//! response's `stale-if-error`) is served instead, with `X-Cache: stale`; with
//! the breaker open and no stale copy, the query's `fallback` (another
//! integration's query or a static response) answers, marked `X-Fallback: true`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::future::{BoxFuture, FutureExt, Shared};

use crate::auth::{Principal, Role};
use crate::config::QuerySettings;
use crate::error::{ApiError, Problem};
use crate::integration::{Integration, Integrations};
use crate::resilience::{Admission, Policies};

/// A cached upstream response.
#[derive(Debug)]
pub struct Entry {
    status: u16,
    content_type: Option<String>,
    body: web::Bytes,
    stored_at: Instant,
    fresh_for: Duration,
    stale_for: Duration,
    /// The shared key holds only a marker: look under the client's key.
    private: bool,
}

impl Entry {
    fn age(&self) -> Duration {
        self.stored_at.elapsed()
    }
    fn is_fresh(&self) -> bool {
        self.age() < self.fresh_for
    }
    fn is_usable_stale(&self) -> bool {
        self.age() < self.fresh_for + self.stale_for
    }
}

/// Why a fetch produced no fresh response.
#[derive(Debug, Clone)]
enum FetchError {
    Open(Duration),
    Throttled(Duration),
    Upstream(String),
}

type Fetch = Shared<BoxFuture<'static, Result<Arc<Entry>, FetchError>>>;

/// The query cache and the in-flight fetches, shared by all HTTP workers.
pub struct QueryCache {
    entries: moka::future::Cache<String, Arc<Entry>>,
    inflight: Mutex<HashMap<String, Fetch>>,
}

impl QueryCache {
    /// A cache of at most `capacity` responses.
    pub fn new(capacity: u64) -> Self {
        QueryCache {
            entries: moka::future::Cache::builder()
                .max_capacity(capacity)
                // Entries outlive freshness for stale-if-error; a day bounds it.
                .time_to_live(Duration::from_secs(86_400))
                .build(),
            inflight: Mutex::new(HashMap::new()),
        }
    }
}

/// Freshness allowed by the response headers, capped by `cap`; `None` = do not store.
fn freshness(
    cache_control: Option<&str>,
    expires: Option<&str>,
    cap: Duration,
) -> (Option<Duration>, bool, Option<Duration>) {
    let mut max_age = None;
    let mut s_maxage = None;
    let mut private = false;
    let mut stale_if_error = None;
    for directive in cache_control.unwrap_or("").split(',') {
        let directive = directive.trim().to_ascii_lowercase();
        let (name, value) = match directive.split_once('=') {
            Some((n, v)) => (
                n.trim().to_owned(),
                Some(v.trim().trim_matches('"').to_owned()),
            ),
            None => (directive.clone(), None),
        };
        let secs = || {
            value
                .as_deref()
                .and_then(|v| v.parse::<u64>().ok())
                .map(Duration::from_secs)
        };
        match name.as_str() {
            "no-store" | "no-cache" => return (None, false, None),
            "private" => private = true,
            "max-age" => max_age = secs(),
            "s-maxage" => s_maxage = secs(),
            "stale-if-error" => stale_if_error = secs(),
            _ => {}
        }
    }
    let allowed = if private {
        max_age
    } else {
        s_maxage.or(max_age)
    }
    .or_else(|| {
        let date = chrono::DateTime::parse_from_rfc2822(expires?.trim()).ok()?;
        Some(
            (date.with_timezone(&chrono::Utc) - chrono::Utc::now())
                .to_std()
                .unwrap_or(Duration::ZERO),
        )
    });
    let ttl = allowed.unwrap_or(cap).min(cap);
    if ttl.is_zero() {
        return (None, private, stale_if_error);
    }
    (Some(ttl), private, stale_if_error)
}

/// The query string with its pairs sorted, so `a=1&b=2` and `b=2&a=1` share a key.
fn canonical_query(qs: &str) -> String {
    let mut pairs: Vec<&str> = qs.split('&').filter(|p| !p.is_empty()).collect();
    pairs.sort_unstable();
    pairs.join("&")
}

/// Routes of the upstream query endpoint.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route(
        "/v1/queries/{integration}/{query}",
        web::get().to(get_query),
    );
}

fn respond(entry: &Entry, cache: &str) -> HttpResponse {
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

fn seconds(d: Duration) -> String {
    d.as_secs_f64().ceil().max(1.0).to_string()
}

/// Reads a declared upstream query through the cache (see the module docs).
#[utoipa::path(
    get, path = "/v1/queries/{integration}/{query}", tag = "queries",
    params(("integration" = String, Path), ("query" = String, Path)),
    responses(
        (status = 200, description = "The upstream's response (headers X-Cache: hit|miss|stale, Age)"),
        (status = 401, description = "No or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such integration or query", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Throttled and no stale copy (Retry-After)", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "Upstream failed and no stale copy", body = Problem, content_type = "application/problem+json"),
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
    settings: web::Data<Arc<crate::config::Settings>>,
    integrations: web::Data<Arc<Integrations>>,
    policies: web::Data<Arc<Policies>>,
    cache: web::Data<QueryCache>,
) -> Result<HttpResponse, ApiError> {
    principal.require(&[Role::Client, Role::Reader, Role::Admin])?;
    let (name, query) = path.into_inner();
    let span = tracing::Span::current();
    span.record("integration", name.as_str());
    span.record("query", query.as_str());
    let not_found = || ApiError::NotFound(format!("no query `{query}` in integration `{name}`"));
    let qsettings: QuerySettings = settings
        .integrations
        .get(&name)
        .and_then(|i| i.queries.get(&query))
        .cloned()
        .ok_or_else(not_found)?;
    if integrations.get(&name).is_none() || policies.get(&name).is_none() {
        return Err(not_found());
    }
    let qs = canonical_query(req.query_string());
    let shared_key = format!("{name}/{query}?{qs}");
    let client_key = format!("{shared_key}|{}", principal.client_id);

    // 1. A fresh copy?
    let mut key = shared_key.clone();
    let mut cached = cache.entries.get(&shared_key).await;
    if cached.as_ref().is_some_and(|e| e.private) {
        key = client_key.clone();
        cached = cache.entries.get(&client_key).await;
    }
    if let Some(e) = cached.as_ref().filter(|e| e.is_fresh()) {
        span.record("cache", "hit");
        return Ok(respond(e, "hit"));
    }

    // 2. One upstream call per key at a time.
    let mut initiated = false;
    let make_fetch = || {
        let integration = integrations.get_shared(&name);
        let policies = policies.clone().into_inner();
        let policy_name = name.clone();
        let (path, query_name, qs) = (
            qsettings.path.clone(),
            query.clone(),
            req.query_string().to_owned(),
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
    let shared_fetch = {
        let mut inflight = cache
            .inflight
            .lock()
            .map_err(|_| ApiError::Internal(anyhow::anyhow!("query cache lock poisoned")))?;
        inflight
            .entry(key.clone())
            .or_insert_with(|| {
                initiated = true;
                make_fetch().boxed().shared()
            })
            .clone()
    };
    let mut result = shared_fetch.await;
    if initiated {
        if let Ok(mut inflight) = cache.inflight.lock() {
            inflight.remove(&key);
        }
    }
    if !initiated && result.as_ref().is_ok_and(|e| e.private) {
        // Another client's call turned out private: never hand it over;
        // fetch for this client on its own.
        result = make_fetch().await;
    }

    match result {
        Ok(entry) => {
            if entry.private {
                // Never share: store under this client's key only, with a
                // marker under the shared key so later lookups go there.
                if entry.fresh_for > Duration::ZERO {
                    cache.entries.insert(client_key, entry.clone()).await;
                    cache
                        .entries
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
                cache.entries.insert(shared_key, entry.clone()).await;
            }
            span.record("cache", "miss");
            tracing::debug!(target: "hookrelay::query", cache = "miss", status = entry.status, "query answered");
            Ok(respond(&entry, "miss"))
        }
        Err(e) => {
            if let Some(stale) = cached
                .as_ref()
                .filter(|c| !c.private && c.is_usable_stale())
            {
                span.record("cache", "stale");
                tracing::debug!(target: "hookrelay::query", cache = "stale", reason = ?e, "query answered from a stale copy");
                return Ok(respond(stale, "stale"));
            }
            if let (FetchError::Open(_), Some(fb)) = (&e, &qsettings.fallback) {
                let answer = answer_from_fallback(
                    &settings,
                    &integrations,
                    &policies,
                    &name,
                    &query,
                    fb,
                    req.query_string(),
                )
                .await;
                if let Some(resp) = answer {
                    span.record("cache", "fallback");
                    return Ok(resp);
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

/// Answers a query from its fallback while the primary's breaker is open:
/// a static response, or the fallback integration's query through that
/// integration's policy. Marked `X-Fallback: true`; never cached. `None` when
/// the fallback cannot answer either.
async fn answer_from_fallback(
    settings: &crate::config::Settings,
    integrations: &Integrations,
    policies: &Policies,
    integration: &str,
    query: &str,
    fallback: &crate::config::FallbackSettings,
    qs: &str,
) -> Option<HttpResponse> {
    crate::metrics::fallback_used(integration, query);
    let entry = if let Some(status) = fallback.status {
        Arc::new(Entry {
            status,
            content_type: Some("application/json".into()),
            body: web::Bytes::from(
                serde_json::to_vec(&fallback.body.clone().unwrap_or(serde_json::Value::Null))
                    .ok()?,
            ),
            stored_at: Instant::now(),
            fresh_for: Duration::ZERO,
            stale_for: Duration::ZERO,
            private: false,
        })
    } else {
        let (name, other) = (fallback.integration.as_deref()?, fallback.query.as_deref()?);
        let target = integrations.get(name)?;
        let path = settings
            .integrations
            .get(name)?
            .queries
            .get(other)?
            .path
            .clone();
        fetch(
            target,
            policies.get(name)?,
            other,
            &path,
            qs,
            Duration::ZERO,
            Duration::ZERO,
        )
        .await
        .ok()?
    };
    let mut resp = respond(&entry, "miss");
    resp.headers_mut().insert(
        header::HeaderName::from_static("x-fallback"),
        header::HeaderValue::from_static("true"),
    );
    Some(resp)
}

async fn fetch(
    integration: &Integration,
    policy: &crate::resilience::Policy,
    query: &str,
    path: &str,
    qs: &str,
    cap: Duration,
    stale: Duration,
) -> Result<Arc<Entry>, FetchError> {
    let ticket = match policy.admit().await {
        Admission::Go(t) => t,
        Admission::Wait { delay, reason } => {
            crate::metrics::throttled(&integration.name, reason);
            return Err(FetchError::Throttled(delay));
        }
        Admission::Open { remaining } => {
            crate::metrics::upstream_call(&integration.name, query, "open", 0.0);
            return Err(FetchError::Open(remaining));
        }
    };
    let started = Instant::now();
    match integration.query(query, path, qs).await {
        Err(why) => {
            policy.record_call(ticket, Some(true), None, Some(started.elapsed()));
            Err(FetchError::Upstream(why))
        }
        Ok(resp) => {
            let failed = match resp.status {
                429 => None,
                s if s >= 500 || s == 408 => Some(true),
                _ => Some(false),
            };
            policy.record_call(ticket, failed, resp.vendor, Some(started.elapsed()));
            if resp.status >= 500 || resp.status == 429 || resp.status == 408 {
                return Err(match resp.status {
                    429 => FetchError::Throttled(
                        resp.vendor
                            .and_then(|v| v.pause())
                            .unwrap_or(Duration::from_secs(1)),
                    ),
                    s => FetchError::Upstream(format!("HTTP {s}")),
                });
            }
            let (ttl, private, stale_directive) = if resp.status == 200 {
                freshness(resp.cache_control.as_deref(), resp.expires.as_deref(), cap)
            } else {
                (None, false, None)
            };
            Ok(Arc::new(Entry {
                status: resp.status,
                content_type: resp.content_type,
                body: web::Bytes::from(resp.body),
                stored_at: Instant::now(),
                fresh_for: ttl.unwrap_or(Duration::ZERO),
                stale_for: stale_directive.unwrap_or(stale),
                private,
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_rules() {
        let cap = Duration::from_secs(60);
        assert_eq!(
            freshness(Some("max-age=10"), None, cap).0,
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            freshness(Some("max-age=10, s-maxage=20"), None, cap).0,
            Some(Duration::from_secs(20))
        );
        assert_eq!(
            freshness(Some("max-age=600"), None, cap).0,
            Some(cap),
            "capped"
        );
        assert_eq!(freshness(Some("no-store"), None, cap).0, None);
        assert_eq!(freshness(Some("no-cache"), None, cap).0, None);
        assert_eq!(freshness(Some("max-age=0"), None, cap).0, None);
        let (ttl, private, _) = freshness(Some("private, max-age=5"), None, cap);
        assert_eq!((ttl, private), (Some(Duration::from_secs(5)), true));
        assert_eq!(
            freshness(None, None, cap).0,
            Some(cap),
            "no headers: the configured cap"
        );
        let past = "Sat, 01 Jan 2000 00:00:00 GMT";
        assert_eq!(freshness(None, Some(past), cap).0, None, "expired");
        assert_eq!(
            freshness(Some("max-age=5, stale-if-error=7"), None, cap).2,
            Some(Duration::from_secs(7))
        );
    }

    #[test]
    fn query_strings_are_canonical() {
        assert_eq!(canonical_query("b=2&a=1"), canonical_query("a=1&b=2"));
        assert_eq!(canonical_query(""), "");
    }
}
