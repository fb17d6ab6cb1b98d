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

use crate::auth::Principal;
use crate::config::QuerySettings;
use crate::http::error::{ApiError, Problem};
use crate::integration::resilience::{Admission, Policies};
use crate::integration::{Integration, Integrations};

use super::cache::RedisCache;

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
        self.age() < self.fresh_for.saturating_add(self.stale_for)
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

/// The fetches in flight by cache key, each with a number telling it apart
/// from a later fetch of the same key.
type Inflight = Arc<Mutex<HashMap<String, (u64, Fetch)>>>;

/// Removes fetch `n` from `registry` when dropped, i.e. when its task ends.
struct Retire {
    registry: Inflight,
    key: String,
    n: u64,
}

impl Drop for Retire {
    fn drop(&mut self) {
        let mut inflight = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        if inflight.get(&self.key).is_some_and(|(m, _)| *m == self.n) {
            inflight.remove(&self.key);
        }
    }
}

/// The query cache and the in-flight fetches, shared by all HTTP workers.
///
/// Entries live in memory (moka) or, with `cache.redis_url`, in Redis, so
/// every API instance shares them. Coalescing of in-flight fetches is per
/// process.
pub struct QueryCache {
    entries: moka::future::Cache<String, Arc<Entry>>,
    inflight: Inflight,
    next_fetch: std::sync::atomic::AtomicU64,
    redis: Option<Arc<RedisCache>>,
}

/// An [`Entry`] as stored in Redis (JSON): times are wall-clock so another
/// instance can compute the age.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredEntry {
    status: u16,
    content_type: Option<String>,
    /// Base64 of the body.
    body: String,
    /// Unix ms when it was stored.
    stored_at_ms: i64,
    fresh_ms: u64,
    stale_ms: u64,
    private: bool,
}

impl StoredEntry {
    fn from_entry(e: &Entry) -> Self {
        use base64::Engine;
        let age = i64::try_from(e.age().as_millis()).unwrap_or(i64::MAX);
        StoredEntry {
            status: e.status,
            content_type: e.content_type.clone(),
            body: base64::engine::general_purpose::STANDARD.encode(&e.body),
            stored_at_ms: chrono::Utc::now().timestamp_millis().saturating_sub(age),
            fresh_ms: u64::try_from(e.fresh_for.as_millis()).unwrap_or(u64::MAX),
            stale_ms: u64::try_from(e.stale_for.as_millis()).unwrap_or(u64::MAX),
            private: e.private,
        }
    }

    fn into_entry(self) -> Option<Entry> {
        use base64::Engine;
        let age_ms = chrono::Utc::now()
            .timestamp_millis()
            .saturating_sub(self.stored_at_ms)
            .max(0);
        let age = Duration::from_millis(u64::try_from(age_ms).unwrap_or(0));
        Some(Entry {
            status: self.status,
            content_type: self.content_type,
            body: web::Bytes::from(
                base64::engine::general_purpose::STANDARD
                    .decode(self.body)
                    .ok()?,
            ),
            stored_at: Instant::now().checked_sub(age).unwrap_or_else(Instant::now),
            fresh_for: Duration::from_millis(self.fresh_ms),
            stale_for: Duration::from_millis(self.stale_ms),
            private: self.private,
        })
    }
}

impl QueryCache {
    /// A cache of at most `capacity` responses in memory, or in `redis`.
    pub fn new(capacity: u64, redis: Option<Arc<RedisCache>>) -> Self {
        QueryCache {
            entries: moka::future::Cache::builder()
                .max_capacity(capacity)
                // Entries outlive freshness for stale-if-error; a day bounds it.
                .time_to_live(Duration::from_secs(86_400))
                .build(),
            inflight: Arc::new(Mutex::new(HashMap::new())),
            next_fetch: std::sync::atomic::AtomicU64::new(0),
            redis,
        }
    }

    async fn get(&self, key: &str) -> Option<Arc<Entry>> {
        match &self.redis {
            None => self.entries.get(key).await,
            Some(r) => {
                let raw = r.get(&format!("query:{key}")).await?;
                let entry = serde_json::from_slice::<StoredEntry>(&raw)
                    .ok()
                    .and_then(StoredEntry::into_entry);
                if entry.is_none() {
                    crate::telemetry::metrics::cache_error("decode");
                }
                entry.map(Arc::new)
            }
        }
    }

    async fn insert(&self, key: String, entry: Arc<Entry>) {
        match &self.redis {
            None => self.entries.insert(key, entry).await,
            Some(r) => {
                let ttl = (entry.fresh_for.saturating_add(entry.stale_for))
                    .min(Duration::from_secs(86_400));
                if let Ok(raw) = serde_json::to_vec(&StoredEntry::from_entry(&entry)) {
                    r.set(&format!("query:{key}"), &raw, ttl).await;
                }
            }
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
    let mut no_store = false;
    for directive in cache_control.unwrap_or("").split(',') {
        let directive = directive.trim().to_ascii_lowercase();
        let (name, value) = match directive.split_once('=') {
            Some((n, v)) => (
                n.trim().to_owned(),
                Some(v.trim().trim_matches('"').to_owned()),
            ),
            None => (directive.clone(), None),
        };
        // RFC 9111 §1.2.2: a delta-seconds value too large to represent is
        // taken as 2^31, so later sums of durations cannot overflow.
        let secs = || {
            value
                .as_deref()
                .and_then(|v| v.parse::<u64>().ok())
                .map(|v| Duration::from_secs(v.min(1 << 31)))
        };
        match name.as_str() {
            // Not `return`: a later `private` must still be seen, so the
            // response is never handed to another client's coalesced request.
            "no-store" | "no-cache" => no_store = true,
            "private" => private = true,
            "max-age" => max_age = secs(),
            "s-maxage" => s_maxage = secs(),
            "stale-if-error" => stale_if_error = secs(),
            _ => {}
        }
    }
    if no_store {
        return (None, private, stale_if_error);
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

/// The query string with its pairs sorted, so `a=1&b=2` and `b=2&a=1` share a
/// key; a raw `|` (which HTTP lets through in a query) is percent-encoded, as
/// `|` separates the client in a private entry's key: `?a=1|acme` must not
/// name client acme's entry for `?a=1`.
fn canonical_query(qs: &str) -> String {
    let mut pairs: Vec<&str> = qs.split('&').filter(|p| !p.is_empty()).collect();
    pairs.sort_unstable();
    pairs.join("&").replace('|', "%7C")
}

/// Routes of the upstream query endpoints.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/queries/batch", web::post().to(batch_queries))
        .route(
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

/// What a query produced: the response, where it came from, and whether a
/// fallback answered.
struct Answer {
    entry: Arc<Entry>,
    /// `hit`, `miss`, `stale` or `fallback`.
    cache: &'static str,
    fallback: bool,
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
    fn cache_header(&self) -> &'static str {
        if self.fallback {
            "miss"
        } else {
            self.cache
        }
    }

    /// The `outcome` label of `hookrelay_cache_requests_total`.
    fn metric_outcome(&self) -> &'static str {
        match self.cache {
            "hit" => "hit",
            "stale" => "stale",
            _ => "miss",
        }
    }
}

/// What the query handlers share (app data, one per process).
struct QueryContext<'a> {
    settings: &'a crate::config::Settings,
    integrations: &'a Arc<Integrations>,
    policies: &'a Arc<Policies>,
    cache: &'a QueryCache,
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
    settings: web::Data<Arc<crate::config::Settings>>,
    integrations: web::Data<Arc<Integrations>>,
    policies: web::Data<Arc<Policies>>,
    cache: web::Data<QueryCache>,
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
    super::log_answer("upstream", outcome, started, &result);
    result
}

/// One query through the role check, the cache, coalescing and the policy;
/// shared by `GET /v1/queries/…` and the batch endpoint. `raw_qs` is passed
/// to the upstream as it is.
async fn run_query(
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
    settings: web::Data<Arc<crate::config::Settings>>,
    integrations: web::Data<Arc<Integrations>>,
    policies: web::Data<Arc<Policies>>,
    cache: web::Data<QueryCache>,
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
        if let Some(guard) = req.app_data::<web::Data<crate::auth::limits::Guard>>() {
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
    super::log_answer("batch", "bypass", started, &result);
    result
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
) -> Option<Arc<Entry>> {
    crate::telemetry::metrics::fallback_used(integration, query);
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
            .to_string();
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
    Some(entry)
}

async fn fetch(
    integration: &Integration,
    policy: &crate::integration::resilience::Policy,
    query: &str,
    path: &str,
    qs: &str,
    cap: Duration,
    stale: Duration,
) -> Result<Arc<Entry>, FetchError> {
    let ticket = match policy.admit().await {
        Admission::Go(t) => t,
        Admission::Wait { delay, reason } => {
            crate::telemetry::metrics::throttled(&integration.name, reason);
            return Err(FetchError::Throttled(delay));
        }
        Admission::Open { remaining } => {
            crate::telemetry::metrics::upstream_call(&integration.name, query, "open", 0.0);
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
            // Passed on, a vendor's 401/403/407 would read as the caller's
            // own token being refused (the API's 401/403), and a 3xx is never
            // followed (its Location is not passed on): both are the
            // gateway's failure, answered 502 (or a stale copy).
            let gateway_failure =
                (300..400).contains(&resp.status) || matches!(resp.status, 401 | 403 | 407);
            if resp.status >= 500 || resp.status == 429 || resp.status == 408 || gateway_failure {
                return Err(match resp.status {
                    429 => FetchError::Throttled(
                        resp.vendor
                            .and_then(|v| v.pause())
                            .unwrap_or(Duration::from_secs(1)),
                    ),
                    s => FetchError::Upstream(format!("HTTP {s}")),
                });
            }
            // `private` counts whatever the status: a coalesced request of
            // another client must not receive a private 404 either.
            let (ttl, private, stale_directive) =
                freshness(resp.cache_control.as_deref(), resp.expires.as_deref(), cap);
            let ttl = ttl.filter(|_| resp.status == 200);
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
        // Huge values are taken as 2^31 s (RFC 9111 §1.2.2) and never
        // overflow the freshness arithmetic.
        let (ttl, _, stale) = freshness(
            Some("max-age=5, stale-if-error=18446744073709551615"),
            None,
            cap,
        );
        let stale = stale.expect("stale-if-error");
        assert_eq!(stale, Duration::from_secs(1 << 31));
        let entry = Entry {
            status: 200,
            content_type: None,
            body: web::Bytes::new(),
            stored_at: Instant::now(),
            fresh_for: ttl.expect("fresh"),
            stale_for: stale,
            private: false,
        };
        assert!(entry.is_usable_stale());
    }

    #[test]
    fn query_strings_are_canonical() {
        assert_eq!(canonical_query("b=2&a=1"), canonical_query("a=1&b=2"));
        assert_eq!(canonical_query(""), "");
    }
}
