//! The upstream client: calls a declared integration operation.
//!
//! A request is built only from configuration (method, `base_url`, the path
//! template filled at intake) and the command's JSON body; clients never send
//! raw URLs. Each integration has its own `reqwest::Client` (keep-alive pool,
//! `timeout_ms`, no redirects, no system proxy) and optional credential header,
//! marked sensitive so it is never logged. Unless `integrations.NAME.trusted`,
//! the client resolves names through [`crate::security::GuardedResolver`]
//! (the SSRF guard of callbacks): a `base_url` that resolves to a loopback,
//! private or link-local address fails the call instead of reaching it.
//!
//! [`Integration::call`] classifies the answer into a [`CallOutcome`]; the
//! execute job owns what happens next (retry with backoff, or finish). Every
//! call passes the resilience policy (throttle, circuit breaker, retry
//! budget, [`resilience`]) through the one guarded call in [`guarded`].

pub mod guarded;
pub mod resilience;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use rand::RngExt;
use reqwest::header::{HeaderName, HeaderValue};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::config::{IntegrationSettings, OperationSettings};
use crate::domain::{JsonText, Segment};
use crate::http::body::{describe_transport_error, lossy_text, read_body_limited, retry_after_of};
use crate::integration::resilience::VendorLimit;

pub use crate::domain::PathTemplate;

/// Characters escaped in a path parameter: everything but RFC 3986 unreserved.
const PATH_PARAM: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

// `PathTemplate` is parsed and checked in `domain` (config validates the
// configured paths with it); filling it into an upstream path belongs here.
impl PathTemplate {
    /// Like [`PathTemplate::fill`], ignoring params the template does not use
    /// (a fallback operation may take a subset of the primary's params).
    ///
    /// # Errors
    /// As [`PathTemplate::fill`] for the params it uses.
    pub fn fill_subset(
        &self,
        params: &serde_json::Map<String, Value>,
    ) -> Result<String, (String, String)> {
        let used: Vec<&str> = self.params().collect();
        let subset = params
            .iter()
            .filter(|(k, _)| used.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        self.fill(&subset)
    }

    /// Fills placeholders from `params` (scalars only), percent-encoding each
    /// value as one path segment.
    ///
    /// # Errors
    /// `(field, message)` for a missing or non-scalar param, or a param the
    /// template does not use; `field` is `params.NAME`.
    pub fn fill(
        &self,
        params: &serde_json::Map<String, Value>,
    ) -> Result<String, (String, String)> {
        let used: Vec<&str> = self.params().collect();
        if let Some(extra) = params.keys().find(|k| !used.contains(&k.as_str())) {
            return Err((
                format!("params.{extra}"),
                "is not a parameter of this operation".into(),
            ));
        }
        let mut out = String::new();
        for segment in &self.0 {
            match segment {
                Segment::Literal(l) => out.push_str(l),
                Segment::Param(name) => {
                    let field = format!("params.{name}");
                    let value = match params.get(name) {
                        None | Some(Value::Null) => {
                            return Err((field, "is required by this operation".into()))
                        }
                        Some(Value::String(s)) if s.is_empty() => {
                            return Err((field, "must not be empty".into()))
                        }
                        // URL parsers resolve `.`/`..` segments (even encoded
                        // ones), which would escape the declared operation path.
                        Some(Value::String(s)) if s == "." || s == ".." => {
                            return Err((field, "must not be `.` or `..`".into()))
                        }
                        Some(Value::String(s)) => s.clone(),
                        Some(Value::Number(n)) => n.to_string(),
                        Some(Value::Bool(b)) => b.to_string(),
                        Some(_) => {
                            return Err((field, "must be a string, number or boolean".into()))
                        }
                    };
                    out.extend(utf8_percent_encode(&value, PATH_PARAM));
                }
            }
        }
        Ok(out)
    }
}

/// What the upstream answered, as stored in the command's `result` and sent in
/// the callback.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct UpstreamResult {
    /// Upstream HTTP status; null when no response was received (timeout,
    /// connection error).
    pub status_code: Option<u16>,
    /// The upstream body: the vendor's exact JSON text when it is JSON (nested
    /// at most [`MAX_BODY_DEPTH`] levels), else a string; null when empty or
    /// absent. Numbers are never re-formatted.
    #[schema(value_type = Object)]
    pub body: JsonText,
    /// Set when the body exceeded `max_response_bytes` and was cut.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// Why the call failed without a response (e.g. `timeout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Set when the result came from the operation's fallback (another
    /// integration, or a static response) because this one's breaker was open.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fallback: bool,
}

impl UpstreamResult {
    /// The result of a call that got no response: status and body null, with
    /// `error` saying why.
    pub fn no_response(error: impl Into<String>) -> UpstreamResult {
        UpstreamResult {
            status_code: None,
            body: JsonText::null(),
            truncated: false,
            error: Some(error.into()),
            fallback: false,
        }
    }

    /// The stored form (`commands.result`): compact JSON with `status_code`
    /// first (the event trigger reads it from there) and the body's text
    /// embedded verbatim.
    pub fn to_text(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| {
            format!(
                r#"{{"status_code":null,"body":null,"error":{}}}"#,
                serde_json::Value::String(format!("result not serialisable: {e}"))
            )
        })
    }

    /// Reads the stored form back. Never fails: text that does not read as a
    /// result (written by another version, or altered) comes back as a
    /// result whose body is that text as a string and whose `error` says so,
    /// so no stored value can fail a read.
    pub fn from_text(text: &str) -> UpstreamResult {
        serde_json::from_str(text).unwrap_or_else(|e| UpstreamResult {
            body: JsonText::string(text),
            ..UpstreamResult::no_response(format!("stored result unreadable: {e}"))
        })
    }
}

/// How an upstream call ended.
#[derive(Debug, Clone)]
pub enum CallOutcome {
    /// 2xx.
    Succeeded(UpstreamResult),
    /// A final failure: 4xx other than 408/429, or a 3xx (redirects are not followed).
    Rejected(UpstreamResult),
    /// Safe to retry: 5xx, 408, 429, timeout or connection error.
    Retryable {
        /// What was received, for the final result if retries run out.
        result: UpstreamResult,
        /// The upstream's `Retry-After`, if any.
        retry_after: Option<Duration>,
    },
}

impl CallOutcome {
    /// The `outcome` label of `hookrelay_upstream_requests_total`.
    pub fn metric_outcome(&self) -> &'static str {
        match self {
            CallOutcome::Succeeded(_) => "success",
            CallOutcome::Rejected(_) => "rejected",
            CallOutcome::Retryable { .. } => "retryable",
        }
    }
}

/// One configured integration with its HTTP client.
pub struct Integration {
    /// The `[integrations.NAME]` key.
    pub name: String,
    /// Its settings.
    pub settings: IntegrationSettings,
    client: reqwest::Client,
    credential: Option<(HeaderName, HeaderValue)>,
}

/// What to call: the parts of a command the upstream request is built from.
#[derive(Debug, Clone)]
pub struct UpstreamRequest<'a> {
    /// Command id, for logs and as the upstream `Idempotency-Key`.
    ///
    /// Every upstream write carries `Idempotency-Key: <command id>` (the
    /// hyphenated UUID), whether or not the client sent a key of its own. A
    /// command id is unique per (client, client key) — intake's unique
    /// constraint maps one such pair to one command — so two tenants that pick
    /// the same key never share a key at a vendor (one vendor credential
    /// serves every tenant), and it stays the same for every try, lease
    /// takeover and re-run of the command, so a vendor that honours the key
    /// (draft-ietf-httpapi-idempotency-key-header) de-duplicates our repeats.
    /// The client's own key is never forwarded.
    pub command_id: Uuid,
    /// Operation name, for logs.
    pub operation: &'a str,
    /// HTTP method (resolved at intake).
    pub method: &'a str,
    /// Filled path (resolved at intake), appended to `base_url`.
    pub path: &'a str,
    /// JSON body, if any: the client's exact text, sent as it is.
    pub body: Option<&'a str>,
}

impl Integration {
    /// Builds the client for one integration.
    ///
    /// # Errors
    /// If the TLS backend cannot initialise or the credential is not a valid
    /// header value.
    pub fn new(name: &str, settings: &IntegrationSettings) -> anyhow::Result<Self> {
        // SSRF guard: unless the operator marked the integration trusted, a
        // base_url name is resolved through the guarded resolver, so a name
        // that resolves (or rebinds) to a non-public address fails the call.
        // Literal non-public addresses are refused by config validation.
        let policy = crate::security::CallbackPolicy {
            allow_private: settings.trusted,
            ..Default::default()
        };
        let client = reqwest::Client::builder()
            .dns_resolver(Arc::new(crate::security::GuardedResolver {
                policy: Arc::new(policy),
            }))
            .timeout(Duration::from_millis(settings.timeout_ms))
            .connect_timeout(Duration::from_millis(settings.timeout_ms.min(5_000)))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("hookrelay/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let credential = match &settings.credential {
            Some(c) => {
                let header = HeaderName::try_from(c.header.as_str())?;
                let raw = c
                    .value
                    .as_ref()
                    .map(|v| v.expose_secret().to_owned())
                    .unwrap_or_default();
                // Checked by config validation already; this is the backstop.
                let mut value = HeaderValue::try_from(raw).map_err(|_| {
                    anyhow::anyhow!(
                        "integrations.{name}.credential.value_env: not a valid header value"
                    )
                })?;
                value.set_sensitive(true);
                Some((header, value))
            }
            None => None,
        };
        Ok(Integration {
            name: name.to_owned(),
            settings: settings.clone(),
            client,
            credential,
        })
    }

    /// The declared operation `op`, if any.
    pub fn operation(&self, op: &str) -> Option<&OperationSettings> {
        self.settings.operations.get(op)
    }

    /// Performs one upstream call and classifies the answer. Never panics and
    /// never returns an error: transport failures are `Retryable`.
    #[tracing::instrument(
        name = "upstream_call",
        target = "hookrelay::command",
        skip_all,
        fields(integration = %self.name, operation = req.operation, command_id = %req.command_id, status, duration_ms)
    )]
    pub async fn call(&self, req: &UpstreamRequest<'_>) -> Called {
        let url = format!(
            "{}{}",
            self.settings.base_url.as_str().trim_end_matches('/'),
            req.path
        );
        let method =
            reqwest::Method::from_bytes(req.method.as_bytes()).unwrap_or(reqwest::Method::POST);
        let mut builder = self
            .client
            .request(method, &url)
            .header("idempotency-key", req.command_id.to_string());
        if let Some((name, value)) = &self.credential {
            builder = builder.header(name.clone(), value.clone());
        }
        if let Some(body) = req.body {
            builder = builder
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_owned());
        }
        let started = Instant::now();
        let mut vendor = None;
        let outcome = match builder.send().await {
            Err(e) => CallOutcome::Retryable {
                result: UpstreamResult::no_response(describe_transport_error(&e)),
                retry_after: None,
            },
            Ok(resp) => {
                let status = resp.status();
                let retry_after = retry_after_of(&resp);
                vendor = VendorLimit::from_headers(status.as_u16(), resp.headers());
                match read_body_limited(resp, self.settings.max_response_bytes).await {
                    Err(e) => CallOutcome::Retryable {
                        result: UpstreamResult {
                            status_code: Some(status.as_u16()),
                            ..UpstreamResult::no_response(describe_transport_error(&e))
                        },
                        retry_after,
                    },
                    Ok((bytes, truncated)) => {
                        let result = UpstreamResult {
                            status_code: Some(status.as_u16()),
                            body: body_value(&bytes, truncated),
                            truncated,
                            error: None,
                            fallback: false,
                        };
                        classify(status.as_u16(), result, retry_after)
                    }
                }
            }
        };
        let duration = started.elapsed();
        let span = tracing::Span::current();
        span.record("duration_ms", duration.as_millis() as u64);
        let (CallOutcome::Succeeded(r)
        | CallOutcome::Rejected(r)
        | CallOutcome::Retryable { result: r, .. }) = &outcome;
        if let Some(code) = r.status_code {
            span.record("status", code);
        }
        tracing::debug!(target: "hookrelay::command", "upstream call finished");
        crate::telemetry::metrics::upstream_call(
            &self.name,
            req.operation,
            outcome.metric_outcome(),
            duration.as_secs_f64(),
        );
        Called {
            outcome,
            vendor,
            duration,
        }
    }
}

/// The answer to an upstream query (GET).
#[derive(Debug, Clone)]
pub struct QueryResponse {
    /// Upstream status.
    pub status: u16,
    /// `Content-Type`, if any.
    pub content_type: Option<String>,
    /// `Cache-Control`, if any.
    pub cache_control: Option<String>,
    /// `Expires`, if any.
    pub expires: Option<String>,
    /// The body (at most `max_response_bytes`).
    pub body: Vec<u8>,
    /// The vendor's rate-limit headers, if any.
    pub vendor: Option<VendorLimit>,
}

impl Integration {
    /// Performs a declared query: `GET base_url + path`, with the client's
    /// query string passed on, the credential header, no redirects.
    ///
    /// # Errors
    /// A short description of the transport failure (`timeout`, `connect: …`).
    #[tracing::instrument(name = "upstream_query", target = "hookrelay::query", skip_all, fields(integration = %self.name, query = query_name, status))]
    pub async fn query(
        &self,
        query_name: &str,
        path: &str,
        query_string: &str,
    ) -> Result<QueryResponse, String> {
        let mut url = format!(
            "{}{}",
            self.settings.base_url.as_str().trim_end_matches('/'),
            path
        );
        if !query_string.is_empty() {
            url.push('?');
            url.push_str(query_string);
        }
        let mut builder = self.client.get(&url);
        if let Some((name, value)) = &self.credential {
            builder = builder.header(name.clone(), value.clone());
        }
        let started = Instant::now();
        let resp = builder
            .send()
            .await
            .map_err(|e| describe_transport_error(&e))?;
        let status = resp.status().as_u16();
        let header = |n: reqwest::header::HeaderName| {
            resp.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let content_type = header(reqwest::header::CONTENT_TYPE);
        let cache_control = header(reqwest::header::CACHE_CONTROL);
        let expires = header(reqwest::header::EXPIRES);
        let vendor = VendorLimit::from_headers(status, resp.headers());
        let (body, _) = read_body_limited(resp, self.settings.max_response_bytes)
            .await
            .map_err(|e| describe_transport_error(&e))?;
        tracing::Span::current().record("status", status);
        crate::telemetry::metrics::upstream_call(
            &self.name,
            query_name,
            if (200..300).contains(&status) {
                "success"
            } else if status >= 500 || status == 429 {
                "retryable"
            } else {
                "rejected"
            },
            started.elapsed().as_secs_f64(),
        );
        Ok(QueryResponse {
            status,
            content_type,
            cache_control,
            expires,
            body,
            vendor,
        })
    }
}

/// A finished upstream call: its classified outcome, what the vendor's
/// rate-limit headers said, and how long it took.
#[derive(Debug, Clone)]
pub struct Called {
    /// How the call ended.
    pub outcome: CallOutcome,
    /// The vendor's rate-limit headers, if any.
    pub vendor: Option<VendorLimit>,
    /// Wall time of the call.
    pub duration: Duration,
}

impl Called {
    /// The breaker's view: `Some(true)` vendor failure (5xx, 408, timeout,
    /// connection error), `None` throttling (429), `Some(false)` otherwise.
    pub fn vendor_failed(&self) -> Option<bool> {
        match &self.outcome {
            CallOutcome::Retryable { result, .. } if result.status_code == Some(429) => None,
            CallOutcome::Retryable { .. } => Some(true),
            _ => Some(false),
        }
    }
}

fn classify(status: u16, result: UpstreamResult, retry_after: Option<Duration>) -> CallOutcome {
    match status {
        200..=299 => CallOutcome::Succeeded(result),
        408 | 429 | 500..=599 => CallOutcome::Retryable {
            result,
            retry_after,
        },
        _ => CallOutcome::Rejected(result),
    }
}

/// Deepest JSON body kept as JSON; a deeper one is kept as text. The stored
/// result nests the body one level down, and every read decodes it again with
/// serde_json's limit of 128 levels: a body at that limit would store fine
/// and then fail every status and list read of its command.
pub const MAX_BODY_DEPTH: usize = 64;

/// The body as the vendor's JSON text when it is JSON (and nests at most
/// [`MAX_BODY_DEPTH`] levels), else as a string; empty → null.
pub fn body_value(bytes: &[u8], truncated: bool) -> JsonText {
    if bytes.is_empty() {
        return JsonText::null();
    }
    if !truncated {
        if let Ok(text) = std::str::from_utf8(bytes) {
            if let Ok(json) = JsonText::parse(text.trim().to_owned()) {
                if json.depth() <= MAX_BODY_DEPTH {
                    return json;
                }
            }
        }
    }
    JsonText::string(&lossy_text(bytes))
}

/// Longest backoff ceiling of [`backoff`].
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Exponential backoff with full jitter (AWS Architecture Blog, "Exponential
/// Backoff And Jitter"): a uniform delay in `[0, base · 2^(attempt-1)]`,
/// capped at 5 minutes. `attempt` is the 1-based try that just failed.
///
/// The ceiling is `backon`'s exponential schedule (factor 2 from `base_ms`,
/// at most 5 minutes), rounded to whole milliseconds (`backon` computes in
/// `f32` seconds; the rounding makes the ceiling exact). The jitter is ours:
/// `backon`'s adds up to one more delay (`[d, 2d)`), which is not full jitter.
pub fn backoff(attempt: u32, base_ms: u64) -> Duration {
    Duration::from_millis(rand::rng().random_range(0..=backoff_ceiling_ms(attempt, base_ms)))
}

/// The ceiling of [`backoff`], in milliseconds.
fn backoff_ceiling_ms(attempt: u32, base_ms: u64) -> u64 {
    use backon::BackoffBuilder;
    let steps = usize::try_from(attempt.saturating_sub(1).min(20)).unwrap_or(20);
    let ceiling = backon::ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(base_ms))
        .with_factor(2.0)
        .with_max_delay(MAX_BACKOFF)
        .without_max_times()
        .build()
        .nth(steps)
        .unwrap_or(MAX_BACKOFF)
        // backon does not cap its first delay.
        .min(MAX_BACKOFF);
    (ceiling.as_secs_f64() * 1000.0).round() as u64
}

/// All configured integrations, by name.
#[derive(Default)]
pub struct Integrations(HashMap<String, Arc<Integration>>);

impl Integrations {
    /// Builds a client per `[integrations.NAME]`.
    ///
    /// # Errors
    /// If any client cannot be built.
    pub fn from_settings(settings: &BTreeMap<String, IntegrationSettings>) -> anyhow::Result<Self> {
        let mut map = HashMap::new();
        for (name, s) in settings {
            map.insert(name.clone(), Arc::new(Integration::new(name, s)?));
        }
        Ok(Integrations(map))
    }

    /// The integration called `name`.
    pub fn get(&self, name: &str) -> Option<&Integration> {
        self.0.get(name).map(AsRef::as_ref)
    }

    /// The integration called `name`, shared (for work that outlives a request).
    pub fn get_shared(&self, name: &str) -> Option<Arc<Integration>> {
        self.0.get(name).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn params(v: Value) -> serde_json::Map<String, Value> {
        v.as_object().cloned().expect("object")
    }

    #[test]
    fn template_fills_and_encodes() {
        let t = PathTemplate::parse("/anything/things/{thing_id}/x").expect("parse");
        assert_eq!(t.params().collect::<Vec<_>>(), vec!["thing_id"]);
        let p = t
            .fill(&params(json!({"thing_id": "a/b c?"})))
            .expect("fill");
        assert_eq!(p, "/anything/things/a%2Fb%20c%3F/x");
        let p = t.fill(&params(json!({"thing_id": 42}))).expect("fill");
        assert_eq!(p, "/anything/things/42/x");
    }

    #[test]
    fn template_errors_name_the_param() {
        let t = PathTemplate::parse("/t/{id}").expect("parse");
        assert_eq!(
            t.fill(&params(json!({}))).expect_err("missing").0,
            "params.id"
        );
        assert_eq!(
            t.fill(&params(json!({"id": {"x": 1}})))
                .expect_err("object")
                .0,
            "params.id"
        );
        assert_eq!(
            t.fill(&params(json!({"id": "1", "other": "2"})))
                .expect_err("extra")
                .0,
            "params.other"
        );
        for dots in ["..", "."] {
            assert_eq!(
                t.fill(&params(json!({"id": dots}))).expect_err("dots").0,
                "params.id"
            );
        }
        assert_eq!(
            t.fill(&params(json!({"id": "..."}))).expect("three dots"),
            "/t/..."
        );
    }

    #[test]
    fn bad_templates_are_refused() {
        for bad in ["no-slash", "/a/{", "/a/}", "/a/{}", "/a/{b-c}"] {
            assert!(PathTemplate::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn classification() {
        let r = UpstreamResult {
            status_code: Some(0),
            body: JsonText::null(),
            truncated: false,
            error: None,
            fallback: false,
        };
        assert!(matches!(
            classify(201, r.clone(), None),
            CallOutcome::Succeeded(_)
        ));
        assert!(matches!(
            classify(400, r.clone(), None),
            CallOutcome::Rejected(_)
        ));
        assert!(matches!(
            classify(302, r.clone(), None),
            CallOutcome::Rejected(_)
        ));
        for s in [408, 429, 500, 503] {
            assert!(matches!(
                classify(s, r.clone(), None),
                CallOutcome::Retryable { .. }
            ));
        }
    }

    #[test]
    fn backoff_ceiling_doubles_from_the_base_up_to_five_minutes() {
        for base in [0u64, 1, 7, 20, 100, 333, 1_000, 250_000, 400_000] {
            for attempt in 0..40u32 {
                let exp = attempt.saturating_sub(1).min(20);
                let want = base.saturating_mul(1u64 << exp).min(300_000);
                assert_eq!(
                    backoff_ceiling_ms(attempt, base),
                    want,
                    "{base} ms, try {attempt}"
                );
            }
        }
    }

    #[test]
    fn backoff_stays_within_its_ceiling() {
        for attempt in 1..6 {
            for _ in 0..50 {
                let d = backoff(attempt, 100);
                assert!(d <= Duration::from_millis(100 << (attempt - 1)));
            }
        }
    }

    #[test]
    fn bodies_become_json_or_text() {
        assert_eq!(body_value(br#"{"a":1}"#, false).as_str(), r#"{"a":1}"#);
        assert_eq!(body_value(b"plain", false).as_str(), r#""plain""#);
        assert!(body_value(b"", false).is_null());
        // The vendor's numbers, exactly.
        let text = r#"{"a": 1.7976931348623157e308, "b": 1.79e308, "c": 2.5e-308, "d": 1e400}"#;
        assert_eq!(body_value(text.as_bytes(), false).as_str(), text);
        // Too deep for every later read: kept as text.
        let deep = format!(
            "{}{}",
            "[".repeat(MAX_BODY_DEPTH + 1),
            "]".repeat(MAX_BODY_DEPTH + 1)
        );
        assert_eq!(body_value(deep.as_bytes(), false), JsonText::string(&deep));
    }

    #[test]
    fn stored_results_read_back_exactly_and_never_fail() {
        let r = UpstreamResult {
            status_code: Some(200),
            body: body_value(br#"{"x": -965.56748141547666, "z": -0.0}"#, false),
            truncated: false,
            error: None,
            fallback: false,
        };
        let text = r.to_text();
        assert!(text.starts_with(r#"{"status_code":200,"#), "{text}");
        assert_eq!(UpstreamResult::from_text(&text), r);
        let odd = UpstreamResult::from_text("not a result");
        assert_eq!(odd.status_code, None);
        assert_eq!(odd.body, JsonText::string("not a result"));
    }
}
