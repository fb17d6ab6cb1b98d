//! `[integrations.NAME]`: third-party APIs, their operations (writes) and
//! queries (reads), throttle, breaker, credential and fallbacks.

use std::collections::BTreeMap;

use secrecy::SecretString;

use crate::domain::{PathTemplate, Role};
use serde::Deserialize;
use url::Url;

use super::{invalid, ConfigError, Settings};

/// `[integrations.NAME]`: one third-party API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntegrationSettings {
    /// Base URL; operation paths are appended to it.
    pub base_url: Url,
    /// One upstream call's timeout, ms.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Tries for retryable failures (5xx, 408, 429, timeouts, connection errors).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// First retry backoff, ms; doubles per try with full jitter.
    #[serde(default = "default_retry_backoff_ms")]
    pub retry_backoff_ms: u64,
    /// Upstream response bytes kept as the command's result.
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: usize,
    /// Exempts this integration from the SSRF guard: its `base_url` may be a
    /// loopback, private or link-local address (or a name resolving to one).
    /// Only for internal APIs the operator controls. Default false: a literal
    /// non-public `base_url` is a configuration error, and names are resolved
    /// at call time through [`crate::security::GuardedResolver`].
    #[serde(default)]
    pub trusted: bool,
    /// Credential header injected into every call.
    #[serde(default)]
    pub credential: Option<CredentialSettings>,
    /// Commands (writes) by name.
    #[serde(default)]
    pub operations: BTreeMap<String, OperationSettings>,
    /// Queries (reads, always GET) by name.
    #[serde(default)]
    pub queries: BTreeMap<String, QuerySettings>,
    /// Longest time a command keeps retrying, seconds from its acceptance; a
    /// retryable failure after it ends the command as `failed`.
    #[serde(default = "default_retry_horizon_s")]
    pub retry_horizon_s: u64,
    /// Client-side rate and concurrency limits (`[integrations.NAME.throttle]`).
    #[serde(default)]
    pub throttle: ThrottleSettings,
    /// Circuit breaker (`[integrations.NAME.breaker]`).
    #[serde(default)]
    pub breaker: BreakerSettings,
}

/// `[integrations.NAME.throttle]`: how fast and how much at once we call a vendor.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ThrottleSettings {
    /// Sustained requests per second (GCRA); 0 = no rate limit.
    pub rate_per_s: u32,
    /// Requests allowed in a burst above the rate; at least 1.
    pub burst: u32,
    /// Calls in flight at once per process; 0 = unlimited.
    pub max_in_flight: usize,
    /// Slow down from the vendor's own rate-limit headers (`X-RateLimit-*`,
    /// IETF `RateLimit`, `Retry-After` on 429/503).
    pub adaptive: bool,
    /// Longest pause taken from those headers, seconds (at least 1): a
    /// vendor's reset time in milliseconds, or a `Retry-After` of a week,
    /// must not park the integration's commands for years.
    pub max_pause_s: u64,
}

impl Default for ThrottleSettings {
    fn default() -> Self {
        ThrottleSettings {
            rate_per_s: 0,
            burst: 1,
            max_in_flight: 0,
            adaptive: true,
            max_pause_s: 3600,
        }
    }
}

/// `[integrations.NAME.breaker]`: circuit breaker over a sliding window.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerSettings {
    /// Off = calls are never short-circuited.
    pub enabled: bool,
    /// Opens when the failure fraction in the window reaches this (0–1].
    pub failure_rate: f64,
    /// ...and the window holds at least this many calls.
    pub min_calls: usize,
    /// Sliding window length, seconds.
    pub window_s: u64,
    /// How long it stays open before letting probes through, seconds (fractions allowed).
    pub cool_down_s: f64,
    /// Probe calls let through when half-open; that many successes close it.
    pub half_open_probes: usize,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings {
            enabled: true,
            failure_rate: 0.5,
            min_calls: 20,
            window_s: 30,
            cool_down_s: 30.0,
            half_open_probes: 3,
        }
    }
}

fn default_retry_horizon_s() -> u64 {
    3600
}

fn default_timeout_ms() -> u64 {
    10_000
}
fn default_max_attempts() -> u32 {
    3
}
fn default_retry_backoff_ms() -> u64 {
    500
}
fn default_max_response_bytes() -> usize {
    1024 * 1024
}

/// `[integrations.NAME.credential]`: a header whose value comes from an env var.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialSettings {
    /// Header name, e.g. `Authorization`.
    pub header: String,
    /// Environment variable holding the value (read at load, never logged).
    pub value_env: String,
    /// The value, filled from `value_env` by [`Settings::validate`].
    #[serde(skip)]
    pub value: Option<SecretString>,
}

/// HTTP methods a command operation may use (writes only).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "UPPERCASE")]
pub enum WriteMethod {
    /// POST
    Post,
    /// PUT
    Put,
    /// PATCH
    Patch,
    /// DELETE
    Delete,
}

impl WriteMethod {
    /// The method's name as sent on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            WriteMethod::Post => "POST",
            WriteMethod::Put => "PUT",
            WriteMethod::Patch => "PATCH",
            WriteMethod::Delete => "DELETE",
        }
    }
}

/// `[integrations.NAME.operations.OP]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperationSettings {
    /// HTTP method.
    pub method: WriteMethod,
    /// Path template; `{name}` is filled from the command's params. Parsed
    /// at load: a bad template is a configuration error naming this key.
    pub path: PathTemplate,
    /// What answers when this integration's circuit breaker is open.
    #[serde(default)]
    pub fallback: Option<FallbackSettings>,
    /// Roles allowed to send this command (`client`, `reader`, `admin`);
    /// `None` = [`DEFAULT_OPERATION_ROLES`]. Checked when the body names it.
    #[serde(default)]
    pub roles: Option<Vec<Role>>,
}

/// Roles allowed to send a command when its operation sets no `roles`
/// (`docs/reference.md`: `POST /v1/commands` needs `client`).
pub const DEFAULT_OPERATION_ROLES: &[Role] = &[Role::Client];

/// Roles allowed to run a query when it sets no `roles` (`docs/reference.md`:
/// `GET /v1/queries/...` is for client, reader and admin).
pub const DEFAULT_QUERY_ROLES: &[Role] = &[Role::Client, Role::Reader, Role::Admin];

/// `[integrations.NAME.operations.OP.fallback]`: either another integration's
/// operation (`integration` + `operation`, whose path placeholders must be a
/// subset of this operation's) or a static response (`status` + `body`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FallbackSettings {
    /// Fallback integration.
    pub integration: Option<String>,
    /// Its operation (fallback of an operation).
    pub operation: Option<String>,
    /// Its query (fallback of a query).
    #[serde(default)]
    pub query: Option<String>,
    /// Static response status.
    pub status: Option<u16>,
    /// Static response body (any JSON/TOML value).
    pub body: Option<serde_json::Value>,
}

/// `[integrations.NAME.queries.Q]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuerySettings {
    /// Path (GET), parsed at load like an operation's.
    pub path: PathTemplate,
    /// Longest time a response is served from the cache, seconds; the
    /// upstream's `Cache-Control`/`Expires` can only shorten it. 0 = never cached.
    #[serde(default = "default_cache_ttl_s")]
    pub cache_ttl_s: u64,
    /// How long past freshness a cached response may still be served when the
    /// upstream fails, is throttled or its breaker is open (stale-if-error), seconds.
    #[serde(default = "default_stale_if_error_s")]
    pub stale_if_error_s: u64,
    /// What answers when this integration's breaker is open and no stale copy
    /// exists: another integration's query (`integration` + `query`) or a
    /// static response (`status` + `body`).
    #[serde(default)]
    pub fallback: Option<FallbackSettings>,
    /// Roles allowed to run this query; `None` = [`DEFAULT_QUERY_ROLES`].
    #[serde(default)]
    pub roles: Option<Vec<Role>>,
}

fn default_cache_ttl_s() -> u64 {
    60
}
fn default_stale_if_error_s() -> u64 {
    300
}

impl Settings {
    /// Checks every integration (names, URLs, limits, paths, roles, credential)
    /// and the fallbacks between them.
    pub(super) fn check_integrations(&mut self) -> Result<(), ConfigError> {
        let allow_private = self.security.allow_private_callbacks;
        for (name, integration) in &mut self.integrations {
            let key = format!("integrations.{name}");
            if !is_name(name) {
                return Err(invalid(
                    key,
                    "integration names use lowercase letters, digits, '_' and '-'",
                ));
            }
            // Development and test setups (they set
            // `security.allow_private_callbacks`) run their peers on loopback:
            // that switch trusts every integration as well.
            if allow_private {
                integration.trusted = true;
            }
            integration.validate(&key)?;
        }
        self.validate_fallbacks()
    }

    fn validate_fallbacks(&self) -> Result<(), ConfigError> {
        for (name, integration) in &self.integrations {
            for (q, settings) in &integration.queries {
                let Some(fb) = &settings.fallback else {
                    continue;
                };
                let key = format!("integrations.{name}.queries.{q}.fallback");
                match (&fb.integration, &fb.query, &fb.operation, fb.status) {
                    (Some(i), Some(other), None, None) => {
                        if i == name {
                            return Err(invalid(&key, "must name another integration"));
                        }
                        self.integrations
                            .get(i)
                            .and_then(|t| t.queries.get(other))
                            .ok_or_else(|| invalid(&key, format!("no query `{other}` in integration `{i}`")))?;
                    }
                    (None, None, None, Some(status)) if (100..600).contains(&status) => {}
                    _ => {
                        return Err(invalid(
                            &key,
                            "set either `integration` + `query`, or `status` (100-599) with an optional `body`",
                        ))
                    }
                }
            }
            for (op, settings) in &integration.operations {
                let Some(fb) = &settings.fallback else {
                    continue;
                };
                let key = format!("integrations.{name}.operations.{op}.fallback");
                if fb.query.is_some() {
                    return Err(invalid(
                        &key,
                        "an operation's fallback names an `operation`, not a `query`",
                    ));
                }
                match (&fb.integration, &fb.operation, fb.status) {
                    (Some(i), Some(o), None) => {
                        let target = self
                            .integrations
                            .get(i)
                            .and_then(|t| t.operations.get(o))
                            .ok_or_else(|| invalid(&key, format!("no operation `{o}` in integration `{i}`")))?;
                        if i == name {
                            return Err(invalid(&key, "must name another integration"));
                        }
                        let own: Vec<&str> = settings.path.params().collect();
                        let missing = target.path.params().find(|p| !own.contains(p)).map(str::to_owned);
                        if let Some(p) = missing {
                            return Err(invalid(&key, format!("its path needs `{{{p}}}`, which this operation does not take")));
                        }
                    }
                    (None, None, Some(status)) if (100..600).contains(&status) => {}
                    _ => {
                        return Err(invalid(
                            &key,
                            "set either `integration` + `operation`, or `status` (100-599) with an optional `body`",
                        ))
                    }
                }
            }
        }
        Ok(())
    }
}

impl IntegrationSettings {
    fn validate(&mut self, key: &str) -> Result<(), ConfigError> {
        if !matches!(self.base_url.scheme(), "http" | "https") || !self.base_url.has_host() {
            return Err(invalid(
                format!("{key}.base_url"),
                "must be an absolute http or https URL",
            ));
        }
        if !self.trusted {
            if let Some(host) = self.base_url.host() {
                if crate::domain::is_private_host(&host) {
                    return Err(invalid(
                        format!("{key}.base_url"),
                        format!("{host} is not a public address; set `{key}.trusted = true` if this is an internal API you control"),
                    ));
                }
            }
        }
        if self.timeout_ms == 0 {
            return Err(invalid(format!("{key}.timeout_ms"), "must be at least 1"));
        }
        if self.max_attempts == 0 {
            return Err(invalid(format!("{key}.max_attempts"), "must be at least 1"));
        }
        if self.throttle.burst == 0 {
            return Err(invalid(
                format!("{key}.throttle.burst"),
                "must be at least 1",
            ));
        }
        if self.throttle.max_pause_s == 0 {
            return Err(invalid(
                format!("{key}.throttle.max_pause_s"),
                "must be at least 1",
            ));
        }
        let b = &self.breaker;
        if !(b.failure_rate > 0.0 && b.failure_rate <= 1.0) {
            return Err(invalid(
                format!("{key}.breaker.failure_rate"),
                "must be in (0, 1]",
            ));
        }
        if b.min_calls == 0 || b.half_open_probes == 0 || b.window_s == 0 {
            return Err(invalid(
                format!("{key}.breaker"),
                "min_calls, half_open_probes and window_s must be at least 1",
            ));
        }
        if !b.cool_down_s.is_finite() || b.cool_down_s <= 0.0 {
            return Err(invalid(format!("{key}.breaker.cool_down_s"), "must be > 0"));
        }
        if let Some(cred) = &mut self.credential {
            actix_web::http::header::HeaderName::try_from(cred.header.as_str()).map_err(|_| {
                invalid(
                    format!("{key}.credential.header"),
                    "is not a valid header name",
                )
            })?;
            let value = std::env::var(&cred.value_env).map_err(|_| {
                invalid(
                    format!("{key}.credential.value_env"),
                    format!("environment variable {} is not set", cred.value_env),
                )
            })?;
            actix_web::http::header::HeaderValue::try_from(value.as_str()).map_err(|_| {
                invalid(
                    format!("{key}.credential.value_env"),
                    format!(
                        "environment variable {} holds characters a header value may not \
                         (e.g. a trailing newline)",
                        cred.value_env
                    ),
                )
            })?;
            cred.value = Some(SecretString::from(value));
        }
        for (op, settings) in &self.operations {
            if !is_name(op) {
                return Err(invalid(
                    format!("{key}.operations.{op}"),
                    "operation names use lowercase letters, digits, '_' and '-'",
                ));
            }
            check_roles(
                &format!("{key}.operations.{op}.roles"),
                settings.roles.as_deref(),
            )?;
        }
        for (q, settings) in &self.queries {
            if !is_name(q) {
                return Err(invalid(
                    format!("{key}.queries.{q}"),
                    "query names use lowercase letters, digits, '_' and '-'",
                ));
            }
            check_roles(
                &format!("{key}.queries.{q}.roles"),
                settings.roles.as_deref(),
            )?;
        }
        Ok(())
    }
}

/// A configured role list must be non-empty.
fn check_roles(key: &str, roles: Option<&[Role]>) -> Result<(), ConfigError> {
    // Unknown names were refused when the list was deserialised (naming the key).
    if roles.is_some_and(<[Role]>::is_empty) {
        return Err(invalid(
            key,
            "must name at least one role (omit it for the default)",
        ));
    }
    Ok(())
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}
