//! Typed, validated settings.
//!
//! Layering (later wins), as documented in `docs/reference.md`, "Configuration":
//! 1. `config/default.toml`, compiled into the binary so every key has a default;
//! 2. the file named by `--config PATH` or `HOOKRELAY_CONFIG`;
//! 3. environment variables `HOOKRELAY__SECTION__KEY` (double underscore nests);
//!    `DATABASE_URL` sets `database.url` unless `HOOKRELAY__DATABASE__URL` is set.
//!
//! Unknown keys are rejected, and [`Settings::validate`] checks every value, so a
//! bad configuration fails at start with one line naming the key
//! ([`ConfigError`], exit code 2 in `main`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use url::Url;

mod admission;
mod retention;

pub use admission::AdmissionSettings;
pub use retention::RetentionSettings;

/// The defaults file, embedded so the binary runs from any directory.
pub const DEFAULT_CONFIG: &str = include_str!("../../config/default.toml");

/// The development JWT secret shipped in `config/default.toml`; using it logs a warning.
pub const DEV_JWT_SECRET: &str = "hookrelay-dev-secret-change-me-0123456789";

/// The key material (base64) of the development signing-secret encryption key
/// shipped in `config/default.toml` (`dev:` + this; it decodes to
/// `hookrelay-dev-key-change-me-0123`). Anyone can read it here, so values
/// sealed with it are not protected; configuring it logs a warning.
pub const DEV_SIGNING_KEY_ENCRYPTION_KEY: &str = "aG9va3JlbGF5LWRldi1rZXktY2hhbmdlLW1lLTAxMjM=";

/// The key material (base64) of the development job MAC key shipped in
/// `config/default.toml` (`dev:` + this; it decodes to
/// `hookrelay-dev-mac-change-me-0123`). Public, so seals made with it do not
/// stop someone who can write to the database; configuring it logs a warning.
pub const DEV_JOB_MAC_KEY: &str = "aG9va3JlbGF5LWRldi1tYWMtY2hhbmdlLW1lLTAxMjM=";

/// The default of `security.redact_fields`: JSON field names masked in
/// stored upstream results, receiver answers and logs (case-insensitive).
pub const DEFAULT_REDACT_FIELDS: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "client_secret",
    "token",
    "api_key",
    "apikey",
    "access_token",
    "refresh_token",
    "id_token",
    "authorization",
    "cookie",
    "set-cookie",
    "card_number",
    "cvv",
    "private_key",
];

/// A configuration problem: the key (dotted path) and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value failed validation.
    #[error("config error: `{key}`: {problem}")]
    Invalid {
        /// Dotted key, e.g. `integrations.httpbin.base_url`.
        key: String,
        /// What is wrong, in one sentence.
        problem: String,
    },
    /// The layered sources could not be read or did not match the schema
    /// (unknown key, wrong type, unreadable file).
    #[error("config error: {0}")]
    Load(String),
}

/// A loader message on one line (a bad configuration prints one clear line):
/// the TOML parser's source snippet (`3 | foo =`, `  |     ^`) is dropped and
/// the remaining lines are joined with `; `.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| {
            let snippet = l.starts_with('|')
                || l.split_once(" |")
                    .is_some_and(|(n, _)| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()));
            !l.is_empty() && !snippet
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn invalid(key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        problem: problem.into(),
    }
}

/// All settings. Each section mirrors a table of `config/default.toml`, where
/// every key is documented with its unit and default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// HTTP server.
    pub server: ServerSettings,
    /// Postgres pools.
    pub database: DatabaseSettings,
    /// JWT authentication.
    pub auth: AuthSettings,
    /// Callback URL policy.
    pub security: SecuritySettings,
    /// Command intake.
    pub commands: CommandSettings,
    /// Outbox dispatcher.
    pub dispatcher: DispatcherSettings,
    /// Webhook delivery.
    pub delivery: DeliverySettings,
    /// Logging.
    pub telemetry: TelemetrySettings,
    /// Scheduled housekeeping.
    pub maintenance: MaintenanceSettings,
    /// How long finished commands and dead letters are kept.
    pub retention: RetentionSettings,
    /// Bounded queues: when `POST /v1/commands` refuses new work.
    pub admission: AdmissionSettings,
    /// Process-wide resilience settings.
    pub resilience: ResilienceSettings,
    /// The event log's push stream (SSE).
    pub events: EventSettings,
    /// API rate limits (per client IP, per authenticated client).
    pub limits: LimitSettings,
    /// The read side: status-document cache, read-your-writes, batch queries.
    pub query: QuerySideSettings,
    /// The shared cache backend (Redis) for several API instances.
    pub cache: CacheSettings,
    /// Third-party APIs by name (`[integrations.NAME]`).
    #[serde(default)]
    pub integrations: BTreeMap<String, IntegrationSettings>,
}

/// `[server]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// Listen address `host:port`; port 0 picks a free port (tests).
    pub bind: String,
    /// HTTP worker threads; 0 = one per core.
    pub workers: usize,
    /// Largest request body, bytes; beyond it 413.
    pub body_limit_bytes: usize,
    /// Grace for in-flight HTTP requests on shutdown, seconds.
    pub shutdown_timeout_s: u64,
    /// Separate listen address (`host:port`) for `/metrics`, `/v1/admin/*` and
    /// the dead-letter routes; when set they are served only there, not on
    /// `bind`. Empty = off (everything on `bind`). Also served by
    /// `serve --role worker`.
    pub admin_bind: String,
    /// Time a client has to send the request line and headers, ms; after it
    /// the connection is answered 408 and closed (slowloris). 0 = no limit.
    pub client_request_timeout_ms: u64,
    /// Time a client has to acknowledge the connection shutdown, ms. 0 = none.
    pub client_disconnect_timeout_ms: u64,
    /// Idle time before a keep-alive connection is closed, seconds; 0 = keep-alive off.
    pub keep_alive_s: u64,
    /// Most concurrent connections per HTTP worker; beyond it new connections wait.
    pub max_connections: usize,
    /// Largest total size of the request headers (names + values), bytes; beyond it 431.
    pub max_header_bytes: usize,
}

/// `[database]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// Primary database URL (may hold a password, hence secret).
    pub url: SecretString,
    /// Read replica URL for the query side; empty = use `url`.
    pub read_url: SecretString,
    /// Primary pool size.
    pub max_connections: u32,
    /// Read pool size (only used with `read_url`).
    pub read_max_connections: u32,
    /// Pool acquire timeout, ms; a timeout answers 503.
    pub acquire_timeout_ms: u64,
    /// `serve` creates the database when missing.
    pub create_if_missing: bool,
    /// `serve` runs migrations at start.
    pub migrate_on_start: bool,
}

/// `[auth]`: how bearer tokens (JWT, RFC 7519) are verified.
///
/// Exactly one algorithm is accepted ([`AuthSettings::algorithm`]); see
/// [`crate::auth::JwtKeys`] for the checks and `docs/security.md` "Tokens".
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// HS256 key, at least 32 bytes (used only when `algorithm = "HS256"`).
    pub jwt_secret: SecretString,
    /// The one accepted JWS algorithm (RFC 7518): `HS256`, `RS256`, `ES256`
    /// (P-256) or `EdDSA` (Ed25519). Any other `alg` header, `none` included,
    /// answers 401.
    pub algorithm: String,
    /// PEM public key verifying tokens for `RS256`/`ES256`/`EdDSA` (path;
    /// empty for `HS256`).
    pub public_key_file: String,
    /// PEM private key (PKCS#8 for EC and Ed25519) so `hookrelay token` can
    /// mint asymmetric tokens; empty = the CLI cannot mint (the API never needs it).
    pub private_key_file: String,
    /// Clock skew allowed on `exp`, `nbf` and `iat`, seconds (≤ 60).
    pub leeway_s: u64,
    /// Longest accepted token lifetime, seconds: `exp - iat`, or `exp - now`
    /// when the token has no `iat`. Longer-lived tokens answer 401.
    pub max_token_lifetime_s: u64,
    /// Required `iss` claim; empty = not checked.
    pub issuer: String,
    /// Required `aud` claim (one of the token's audiences); empty = not checked.
    pub audience: String,
    /// Tokens must carry a `jti`; the first POST with a given `jti` records it
    /// until the token expires, and a second POST with it answers 401 (replay).
    pub require_jti: bool,
}

/// Longest `auth.max_token_lifetime_s`: 30 days.
pub const MAX_TOKEN_LIFETIME_S: u64 = 30 * 24 * 3600;

/// `[security]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecuritySettings {
    /// Allow `localhost` and literal loopback/private/link-local callback hosts.
    pub allow_private_callbacks: bool,
    /// Refuse `http://` callback URLs (422 at intake).
    pub https_only_callbacks: bool,
    /// Non-public networks callbacks may reach anyway (CIDR strings, e.g. a
    /// partner on a private link: `["10.20.0.0/16"]`). Checked at intake and
    /// after DNS resolution.
    pub allowed_callback_cidrs: Vec<String>,
    /// `allowed_callback_cidrs`, parsed by [`Settings::validate`].
    #[serde(skip)]
    pub allowed_callback_nets: Vec<ipnet::IpNet>,
    /// Keys that seal signing secrets at rest (XChaCha20-Poly1305), each
    /// `id:<base64 of 32 bytes>`. The first seals new secrets, every entry
    /// opens, so the key is rotated by prepending a new one. Default: the
    /// development key [`DEV_SIGNING_KEY_ENCRYPTION_KEY`] (logged as a warning).
    pub signing_key_encryption_keys: Vec<SecretString>,
    /// Keys that seal outbox jobs (HMAC-SHA256 over what a job acts on, see
    /// [`crate::security::seal`]), each `id:<base64 of 32 bytes>`. The first seals new
    /// jobs, every entry verifies. Required (at least one); the default is
    /// the development key [`DEV_JOB_MAC_KEY`] (logged as a warning).
    pub job_mac_keys: Vec<SecretString>,
    /// JSON field names (case-insensitive, any depth) masked as `[REDACTED]`
    /// in stored upstream results, receiver answers in the attempt log,
    /// `last_error` strings and logs ([`crate::security::redact`]). Default:
    /// [`DEFAULT_REDACT_FIELDS`].
    pub redact_fields: Vec<String>,
}

impl SecuritySettings {
    /// Whether the development encryption key (public, in this repository) is
    /// among `signing_key_encryption_keys`, under any id.
    pub fn uses_dev_encryption_key(&self) -> bool {
        self.signing_key_encryption_keys.iter().any(|k| {
            k.expose_secret()
                .split_once(':')
                .is_some_and(|(_, key)| key.trim() == DEV_SIGNING_KEY_ENCRYPTION_KEY)
        })
    }

    /// Whether the development job MAC key (public, in this repository) is
    /// among `job_mac_keys`, under any id.
    pub fn uses_dev_job_mac_key(&self) -> bool {
        self.job_mac_keys.iter().any(|k| {
            k.expose_secret()
                .split_once(':')
                .is_some_and(|(_, key)| key.trim() == DEV_JOB_MAC_KEY)
        })
    }
}

/// `[commands]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandSettings {
    /// Longest callback URL, bytes.
    pub max_callback_url_len: usize,
    /// Most entries in a command's `params` object (422 naming `params` beyond).
    pub max_params: usize,
    /// Largest serialised `params` object (compact JSON), bytes (422 naming `params` beyond).
    pub max_params_bytes: usize,
    /// Most rows per intake transaction.
    pub intake_batch_max: usize,
    /// Extra wait for a fuller intake batch, ms (0 = none).
    pub intake_batch_window_ms: u64,
    /// Concurrent intake writer tasks.
    pub intake_writers: usize,
    /// `Retry-After` on 202 and status documents, seconds.
    pub retry_after_s: u64,
    /// `POST /v1/commands` without an `Idempotency-Key` header answers 400.
    pub require_idempotency_key: bool,
}

/// `[dispatcher]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DispatcherSettings {
    /// Jobs in flight per worker process.
    pub concurrency: usize,
    /// Most jobs per claim statement.
    pub claim_batch: usize,
    /// Lease length, seconds.
    pub lease_s: u64,
    /// Safety-net poll, ms.
    pub poll_interval_ms: u64,
    /// Shutdown grace for in-flight jobs, seconds.
    pub shutdown_grace_s: u64,
    /// A job claimed this many times without a recorded outcome is given up
    /// (command `failed`, delivery dead-lettered `abandoned`): a poison-job cap.
    pub max_claims: u32,
}

/// `[delivery]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliverySettings {
    /// Delays between attempts, seconds (fractions allowed).
    pub retry_schedule_s: Vec<f64>,
    /// Jitter fraction applied to each delay (0.2 = ±20%).
    pub jitter: f64,
    /// One attempt's timeout, ms.
    pub timeout_ms: u64,
    /// Cap on a receiver's `Retry-After`, seconds.
    pub max_retry_after_s: u64,
    /// Response body bytes kept per attempt.
    pub response_body_limit_bytes: usize,
    /// `User-Agent` header on callbacks.
    pub user_agent: String,
    /// Concurrent callback attempts per receiver `host:port`.
    pub max_in_flight_per_host: usize,
    /// After `POST /v1/signing-secret/rotate`, how long the previous secret
    /// keeps signing alongside the new one, seconds (default 86400 = 24 h;
    /// 0 = it stops at once; at most [`MAX_SECRET_ROTATION_GRACE_S`]).
    pub secret_rotation_grace_s: u64,
}

/// `[resilience]`: settings shared by every integration's policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResilienceSettings {
    /// Retries allowed per upstream call made (0.2 = at most 20% of calls are retries).
    pub retry_budget_ratio: f64,
    /// Retries per second always allowed, however few calls were made.
    pub retry_budget_min_per_s: f64,
}

/// `[limits]`: API rate limits, GCRA (the `governor` crate). A request over
/// a limit answers 429 (`application/problem+json`) with `Retry-After` in
/// whole seconds. `/healthz`, `/readyz` and `/metrics` are exempt.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    /// Sustained requests per second per client IP address (the TCP peer;
    /// `X-Forwarded-For` is not trusted), checked before authentication. 0 = off.
    pub per_ip_per_s: u32,
    /// Requests per IP address allowed at once above the rate (at least 1 when on).
    pub per_ip_burst: u32,
    /// Sustained requests per second per authenticated client (JWT `sub`). 0 = off.
    pub per_client_per_s: u32,
    /// Requests per client allowed at once above the rate (at least 1 when on).
    pub per_client_burst: u32,
    /// Sustained `POST /v1/signing-secret/rotate` calls per hour per client
    /// (JWT `sub`), per process. 0 = off.
    pub rotations_per_hour: u32,
    /// Rotations per client allowed at once above that rate (at least 1 when
    /// on; 2 or more lets a client revoke a leaked secret by rotating twice).
    pub rotation_burst: u32,
}

/// `[query]`: the read side (see `docs/queries.md`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuerySideSettings {
    /// Longest time a cached status document may be served after the command
    /// changed, ms (the TTL of a cached document); 0 = status documents are
    /// not cached. At most [`MAX_STALENESS_MS`].
    pub max_staleness_ms: u64,
    /// After a client's `POST /v1/commands` on this instance, its status and
    /// list reads go to the primary for this long, ms, so it reads its own
    /// write despite replica lag; 0 = off. At most [`MAX_READ_YOUR_WRITES_MS`].
    pub read_your_writes_ms: u64,
    /// Most queries in one `POST /v1/queries/batch` request (1 to 100).
    pub batch_max_queries: usize,
    /// Most status documents held in the in-process cache.
    pub status_cache_capacity: u64,
    /// Most upstream query responses held in the in-process cache.
    pub upstream_cache_capacity: u64,
}

/// Upper bound of `query.max_staleness_ms`: one minute.
pub const MAX_STALENESS_MS: u64 = 60_000;
/// Upper bound of `query.read_your_writes_ms`: ten minutes.
pub const MAX_READ_YOUR_WRITES_MS: u64 = 600_000;

/// `[cache]`: where cached status documents and upstream responses live.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSettings {
    /// `redis://` or `rediss://` URL of a Redis shared by every API instance;
    /// empty = each process caches in its own memory (moka).
    pub redis_url: SecretString,
    /// Prefix of every Redis key, so several deployments (or tests) can
    /// share one Redis.
    pub key_prefix: String,
    /// Timeout of one Redis command, ms; a slower Redis counts as an error
    /// and the request falls back to the database or the upstream.
    pub redis_timeout_ms: u64,
}

/// `[maintenance]`: cron schedules (UTC, with a seconds field) and retention.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceSettings {
    /// When to drop old attempt response bodies.
    pub purge_attempt_bodies_cron: String,
    /// When to forget old idempotency keys.
    pub expire_idempotency_keys_cron: String,
    /// When to delete signing secrets past their rotation grace.
    pub retire_signing_secrets_cron: String,
    /// When to forget recorded token `jti`s whose token has expired.
    pub purge_token_jtis_cron: String,
    /// Attempt response bodies are kept this long, seconds.
    pub attempt_body_retention_s: u64,
    /// Idempotency keys are honoured this long after the command, seconds.
    pub idempotency_key_ttl_s: u64,
    /// Lease of a running maintenance run, seconds.
    pub run_lease_s: u64,
    /// When to delete events older than `event_retention_s` from the event log.
    pub purge_events_cron: String,
    /// Events (`command_events`) are kept this long, seconds; a stream resumed
    /// with an older `Last-Event-ID` continues from the oldest event kept.
    pub event_retention_s: u64,
}

/// `[events]`: the per-process event tailer and the SSE streams it feeds
/// (`GET /v1/events`, `GET /v1/commands/{id}/events`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventSettings {
    /// Safety-net poll of the event log, ms; `NOTIFY hookrelay_events` wakes
    /// the tailer at once, the poll covers lost notifications and a read
    /// replica that lags behind the primary.
    pub poll_interval_ms: u64,
    /// A comment line is sent on an idle stream this often, seconds, so
    /// proxies keep the connection and a gone client is noticed.
    pub keep_alive_s: u64,
    /// The `retry:` hint sent at the start of each stream, ms: how long an
    /// `EventSource` waits before reconnecting.
    pub retry_ms: u64,
    /// Open SSE streams allowed per API process; beyond it 503.
    pub max_streams: usize,
}

/// Upper bound of `delivery.secret_rotation_grace_s`: 30 days. A rotated-out
/// secret (perhaps leaked) should not keep signing for longer than receivers
/// plausibly need to switch.
pub const MAX_SECRET_ROTATION_GRACE_S: u64 = 30 * 24 * 3600;

/// Longest delay a retry schedule entry or `delivery.max_retry_after_s` may
/// give, seconds (30 days): beyond it a delay overflows the arithmetic
/// (`Duration`, Postgres intervals) after the attempt was sent, so the
/// outcome could never be recorded and the webhook would go out again.
pub const MAX_RETRY_DELAY_S: u64 = 30 * 24 * 3600;

/// `[telemetry]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySettings {
    /// `pretty` or `json`.
    pub format: LogFormat,
    /// EnvFilter directives; `RUST_LOG` overrides.
    pub filter: String,
}

/// Log output format.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable, multi-field lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

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
    /// Path template; `{name}` is filled from the command's params.
    pub path: String,
    /// What answers when this integration's circuit breaker is open.
    #[serde(default)]
    pub fallback: Option<FallbackSettings>,
    /// Roles allowed to send this command (`client`, `reader`, `admin`);
    /// `None` = [`DEFAULT_OPERATION_ROLES`]. Checked when the body names it.
    #[serde(default)]
    pub roles: Option<Vec<String>>,
}

/// Roles allowed to send a command when its operation sets no `roles`
/// (`docs/reference.md`: `POST /v1/commands` needs `client`).
pub const DEFAULT_OPERATION_ROLES: &[&str] = &["client"];

/// Roles allowed to run a query when it sets no `roles` (`docs/reference.md`:
/// `GET /v1/queries/...` is for client, reader and admin).
pub const DEFAULT_QUERY_ROLES: &[&str] = &["client", "reader", "admin"];

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
    /// Path (GET).
    pub path: String,
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
    pub roles: Option<Vec<String>>,
}

fn default_cache_ttl_s() -> u64 {
    60
}
fn default_stale_if_error_s() -> u64 {
    300
}

impl Settings {
    /// Loads the layered configuration (see module docs) and validates it.
    ///
    /// `config_path` is `--config`; when `None`, `HOOKRELAY_CONFIG` is consulted.
    ///
    /// # Errors
    /// [`ConfigError`] naming the key on any unreadable file, unknown key, wrong
    /// type or invalid value.
    pub fn load(config_path: Option<&Path>) -> Result<Settings, ConfigError> {
        let env_path = std::env::var_os("HOOKRELAY_CONFIG").map(std::path::PathBuf::from);
        let path = config_path.map(Path::to_path_buf).or(env_path);
        let mut builder = config::Config::builder().add_source(config::File::from_str(
            DEFAULT_CONFIG,
            config::FileFormat::Toml,
        ));
        if let Some(path) = &path {
            if !path.exists() {
                return Err(ConfigError::Load(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            builder = builder.add_source(
                config::File::from(path.as_path())
                    .format(config::FileFormat::Toml)
                    .required(true),
            );
        }
        builder = builder.add_source(
            config::Environment::with_prefix("HOOKRELAY")
                .prefix_separator("__")
                .separator("__")
                .list_separator(",")
                .with_list_parse_key("delivery.retry_schedule_s")
                .with_list_parse_key("security.signing_key_encryption_keys")
                .with_list_parse_key("security.job_mac_keys")
                .with_list_parse_key("security.redact_fields")
                .try_parsing(true),
        );
        if std::env::var_os("HOOKRELAY__DATABASE__URL").is_none() {
            if let Ok(url) = std::env::var("DATABASE_URL") {
                builder = builder
                    .set_override("database.url", url)
                    .map_err(|e| ConfigError::Load(one_line(&e.to_string())))?;
            }
        }
        let settings: Settings = builder
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| ConfigError::Load(one_line(&e.to_string())))?;
        settings.validate()
    }

    /// The embedded defaults only (no file, no environment), validated. Tests
    /// start from this and adjust fields.
    ///
    /// # Errors
    /// Only if the embedded defaults are themselves invalid (a bug).
    pub fn defaults() -> Result<Settings, ConfigError> {
        let settings: Settings = config::Config::builder()
            .add_source(config::File::from_str(
                DEFAULT_CONFIG,
                config::FileFormat::Toml,
            ))
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| ConfigError::Load(one_line(&e.to_string())))?;
        settings.validate()
    }

    /// Checks every value and resolves credentials from the environment.
    ///
    /// # Errors
    /// The first invalid key, with the problem.
    pub fn validate(mut self) -> Result<Settings, ConfigError> {
        self.server.bind.parse::<SocketAddr>().map_err(|_| {
            invalid(
                "server.bind",
                "must be an IP address and port, e.g. 127.0.0.1:8080 (not a host name)",
            )
        })?;
        if self.server.body_limit_bytes < 1024 {
            return Err(invalid("server.body_limit_bytes", "must be at least 1024"));
        }
        if !self.server.admin_bind.is_empty() {
            let admin = self.server.admin_bind.parse::<SocketAddr>().map_err(|_| {
                invalid(
                    "server.admin_bind",
                    "must be empty (off) or an IP address and port, e.g. 127.0.0.1:9090",
                )
            })?;
            if admin.port() != 0 && self.server.bind.parse::<SocketAddr>().ok() == Some(admin) {
                return Err(invalid("server.admin_bind", "must differ from server.bind"));
            }
        }
        if self.server.max_connections == 0 {
            return Err(invalid("server.max_connections", "must be at least 1"));
        }
        if self.server.max_header_bytes < 1024 {
            return Err(invalid("server.max_header_bytes", "must be at least 1024"));
        }
        for (key, rate, burst) in [
            (
                "limits.per_ip_burst",
                self.limits.per_ip_per_s,
                self.limits.per_ip_burst,
            ),
            (
                "limits.per_client_burst",
                self.limits.per_client_per_s,
                self.limits.per_client_burst,
            ),
            (
                "limits.rotation_burst",
                self.limits.rotations_per_hour,
                self.limits.rotation_burst,
            ),
        ] {
            if rate > 0 && burst == 0 {
                return Err(invalid(key, "must be at least 1 when its rate is on"));
            }
        }
        if self.commands.max_callback_url_len < 16 {
            return Err(invalid(
                "commands.max_callback_url_len",
                "must be at least 16",
            ));
        }
        if self.commands.max_params_bytes < 2 {
            return Err(invalid("commands.max_params_bytes", "must be at least 2"));
        }
        check_pg_url("database.url", self.database.url.expose_secret())?;
        if !self.database.read_url.expose_secret().is_empty() {
            check_pg_url("database.read_url", self.database.read_url.expose_secret())?;
        }
        if self.database.max_connections == 0 {
            return Err(invalid("database.max_connections", "must be at least 1"));
        }
        self.security.allowed_callback_nets = self
            .security
            .allowed_callback_cidrs
            .iter()
            .map(|c| {
                c.trim().parse::<ipnet::IpNet>().map_err(|_| {
                    invalid(
                        "security.allowed_callback_cidrs",
                        format!("`{c}` is not a CIDR such as 10.20.0.0/16"),
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        if self.auth.leeway_s > 60 {
            return Err(invalid("auth.leeway_s", "must be at most 60 seconds"));
        }
        if !(1..=MAX_TOKEN_LIFETIME_S).contains(&self.auth.max_token_lifetime_s) {
            return Err(invalid(
                "auth.max_token_lifetime_s",
                format!("must be 1 to {MAX_TOKEN_LIFETIME_S} seconds (30 days)"),
            ));
        }
        // Algorithm, secret length and key files: the same parsing that
        // `auth::JwtKeys` uses; key lists: the same parsing the sealers use.
        self.auth.token_keys()?;
        crate::domain::parse_keys(
            &self.security.signing_key_encryption_keys,
            crate::domain::ENCRYPTION_KEY_BYTES,
        )
        .map_err(|e| invalid("security.signing_key_encryption_keys", e.to_string()))?;
        match crate::domain::parse_keys(&self.security.job_mac_keys, crate::domain::MAC_KEY_BYTES) {
            Ok(_) => {}
            Err(crate::domain::KeyConfigError::Empty) => {
                return Err(invalid(
                    "security.job_mac_keys",
                    "needs at least one `id:base64` key (the first one seals new jobs)",
                ))
            }
            Err(e) => return Err(invalid("security.job_mac_keys", e.to_string())),
        }
        for field in &mut self.security.redact_fields {
            *field = field.trim().to_owned();
            if field.is_empty() || field.len() > 128 {
                return Err(invalid(
                    "security.redact_fields",
                    "every entry must be a field name of 1 to 128 bytes",
                ));
            }
        }
        if self.commands.intake_batch_max == 0 || self.commands.intake_batch_max > 1000 {
            return Err(invalid("commands.intake_batch_max", "must be 1..=1000"));
        }
        if self.commands.intake_writers == 0 {
            return Err(invalid("commands.intake_writers", "must be at least 1"));
        }
        if self.dispatcher.concurrency == 0 {
            return Err(invalid("dispatcher.concurrency", "must be at least 1"));
        }
        if self.dispatcher.claim_batch == 0 {
            return Err(invalid("dispatcher.claim_batch", "must be at least 1"));
        }
        if self.dispatcher.poll_interval_ms == 0 {
            return Err(invalid("dispatcher.poll_interval_ms", "must be at least 1"));
        }
        if let Some(bad) = self
            .delivery
            .retry_schedule_s
            .iter()
            .find(|d| !d.is_finite() || **d < 0.0 || **d > MAX_RETRY_DELAY_S as f64)
        {
            return Err(invalid(
                "delivery.retry_schedule_s",
                format!("delays must be 0 to {MAX_RETRY_DELAY_S} seconds (30 days), got {bad}"),
            ));
        }
        if self.delivery.max_retry_after_s > MAX_RETRY_DELAY_S {
            return Err(invalid(
                "delivery.max_retry_after_s",
                format!("must be at most {MAX_RETRY_DELAY_S} seconds (30 days)"),
            ));
        }
        if !(0.0..=1.0).contains(&self.delivery.jitter) {
            return Err(invalid("delivery.jitter", "must be between 0 and 1"));
        }
        if self.delivery.timeout_ms == 0 {
            return Err(invalid("delivery.timeout_ms", "must be at least 1"));
        }
        if self.delivery.secret_rotation_grace_s > MAX_SECRET_ROTATION_GRACE_S {
            return Err(invalid(
                "delivery.secret_rotation_grace_s",
                format!("must be at most {MAX_SECRET_ROTATION_GRACE_S} seconds (30 days)"),
            ));
        }
        let schedule_attempts =
            u32::try_from(self.delivery.retry_schedule_s.len()).unwrap_or(u32::MAX);
        let most_attempts = self
            .integrations
            .values()
            .map(|i| i.max_attempts)
            .chain(std::iter::once(schedule_attempts.saturating_add(1)))
            .max()
            .unwrap_or(1);
        if self.dispatcher.max_claims <= most_attempts.saturating_add(1) {
            return Err(invalid(
                "dispatcher.max_claims",
                format!("must exceed every integration's max_attempts and the delivery schedule's attempts ({most_attempts}) by at least 2"),
            ));
        }
        if self.dispatcher.lease_s < 3 {
            return Err(invalid(
                "dispatcher.lease_s",
                "must be at least 3 seconds (leases are renewed every third)",
            ));
        }
        if self.delivery.max_in_flight_per_host == 0 {
            return Err(invalid(
                "delivery.max_in_flight_per_host",
                "must be at least 1",
            ));
        }
        for (key, expr) in [
            (
                "maintenance.purge_attempt_bodies_cron",
                &self.maintenance.purge_attempt_bodies_cron,
            ),
            (
                "maintenance.expire_idempotency_keys_cron",
                &self.maintenance.expire_idempotency_keys_cron,
            ),
            (
                "maintenance.retire_signing_secrets_cron",
                &self.maintenance.retire_signing_secrets_cron,
            ),
            (
                "maintenance.purge_token_jtis_cron",
                &self.maintenance.purge_token_jtis_cron,
            ),
            (
                "maintenance.purge_events_cron",
                &self.maintenance.purge_events_cron,
            ),
        ] {
            crate::domain::parse_cron(expr)
                .map_err(|e| invalid(key, format!("is not a cron expression ({e})")))?;
        }
        if !(0.0..=10.0).contains(&self.resilience.retry_budget_ratio) {
            return Err(invalid(
                "resilience.retry_budget_ratio",
                "must be between 0 and 10",
            ));
        }
        if !(0.0..=1e6).contains(&self.resilience.retry_budget_min_per_s) {
            return Err(invalid(
                "resilience.retry_budget_min_per_s",
                "must be between 0 and 1e6",
            ));
        }
        if self.query.max_staleness_ms > MAX_STALENESS_MS {
            return Err(invalid(
                "query.max_staleness_ms",
                format!("must be at most {MAX_STALENESS_MS} ms"),
            ));
        }
        if self.query.read_your_writes_ms > MAX_READ_YOUR_WRITES_MS {
            return Err(invalid(
                "query.read_your_writes_ms",
                format!("must be at most {MAX_READ_YOUR_WRITES_MS} ms"),
            ));
        }
        if !(1..=100).contains(&self.query.batch_max_queries) {
            return Err(invalid("query.batch_max_queries", "must be 1 to 100"));
        }
        if self.query.status_cache_capacity == 0 {
            return Err(invalid("query.status_cache_capacity", "must be at least 1"));
        }
        if self.query.upstream_cache_capacity == 0 {
            return Err(invalid(
                "query.upstream_cache_capacity",
                "must be at least 1",
            ));
        }
        let redis_url = self.cache.redis_url.expose_secret();
        if !redis_url.is_empty() {
            let ok = Url::parse(redis_url)
                .is_ok_and(|u| matches!(u.scheme(), "redis" | "rediss") && u.host().is_some());
            if !ok {
                return Err(invalid(
                    "cache.redis_url",
                    "must be empty or a redis:// or rediss:// URL, e.g. redis://127.0.0.1:6379",
                ));
            }
        }
        if self.cache.key_prefix.len() > 64
            || self.cache.key_prefix.chars().any(char::is_whitespace)
        {
            return Err(invalid(
                "cache.key_prefix",
                "must be at most 64 characters without whitespace",
            ));
        }
        if self.cache.redis_timeout_ms == 0 {
            return Err(invalid("cache.redis_timeout_ms", "must be at least 1"));
        }
        self.retention.validate()?;
        self.admission.validate()?;
        if self.maintenance.run_lease_s == 0 {
            return Err(invalid("maintenance.run_lease_s", "must be at least 1"));
        }
        if self.maintenance.event_retention_s < 3600 {
            return Err(invalid(
                "maintenance.event_retention_s",
                "must be at least 3600 seconds (a shorter log breaks ordinary reconnects)",
            ));
        }
        if !(10..=60_000).contains(&self.events.poll_interval_ms) {
            return Err(invalid(
                "events.poll_interval_ms",
                "must be between 10 and 60000 ms",
            ));
        }
        if !(1..=300).contains(&self.events.keep_alive_s) {
            return Err(invalid(
                "events.keep_alive_s",
                "must be between 1 and 300 seconds",
            ));
        }
        if !(100..=3_600_000).contains(&self.events.retry_ms) {
            return Err(invalid(
                "events.retry_ms",
                "must be between 100 and 3600000 ms",
            ));
        }
        if self.events.max_streams == 0 {
            return Err(invalid("events.max_streams", "must be at least 1"));
        }
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
            if self.security.allow_private_callbacks {
                integration.trusted = true;
            }
            integration.validate(&key)?;
        }
        self.validate_fallbacks()?;
        Ok(self)
    }

    /// Shutdown grace for in-flight jobs.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.dispatcher.shutdown_grace_s)
    }

    /// Warnings for a worker to log at start: one per call timeout
    /// (`integrations.NAME.timeout_ms`, `delivery.timeout_ms`) longer than
    /// `dispatcher.shutdown_grace_s`, naming both keys. Such a call can still
    /// be running when a shutdown aborts it; its job is then held back for
    /// that timeout before another worker may repeat it, so a rolling restart
    /// delays those commands (or callbacks) by up to the timeout.
    pub fn shutdown_warnings(&self) -> Vec<String> {
        let grace_ms = self.dispatcher.shutdown_grace_s.saturating_mul(1000);
        let grace = self.dispatcher.shutdown_grace_s;
        let warn = |key: String, timeout_ms: u64| {
            format!(
                "{key} ({timeout_ms} ms) exceeds dispatcher.shutdown_grace_s ({grace} s): a call \
                 still running at shutdown is aborted, and its job waits {timeout_ms} ms (the \
                 timeout) before another worker repeats it. Raise dispatcher.shutdown_grace_s \
                 or lower {key} so calls can finish during a shutdown"
            )
        };
        let mut warnings: Vec<String> = self
            .integrations
            .iter()
            .filter(|(_, i)| i.timeout_ms > grace_ms)
            .map(|(name, i)| warn(format!("integrations.{name}.timeout_ms"), i.timeout_ms))
            .collect();
        if self.delivery.timeout_ms > grace_ms {
            warnings.push(warn("delivery.timeout_ms".into(), self.delivery.timeout_ms));
        }
        warnings
    }
}

impl Settings {
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
                        let own = crate::domain::PathTemplate::parse(&settings.path).map_err(|p| invalid(&key, p))?;
                        let theirs = crate::domain::PathTemplate::parse(&target.path).map_err(|p| invalid(&key, p))?;
                        let own: Vec<&str> = own.params().collect();
                        let missing = theirs.params().find(|p| !own.contains(p)).map(str::to_owned);
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
            crate::domain::PathTemplate::parse(&settings.path)
                .map_err(|p| invalid(format!("{key}.operations.{op}.path"), p))?;
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
            crate::domain::PathTemplate::parse(&settings.path)
                .map_err(|p| invalid(format!("{key}.queries.{q}.path"), p))?;
            check_roles(
                &format!("{key}.queries.{q}.roles"),
                settings.roles.as_deref(),
            )?;
        }
        Ok(())
    }
}

/// The signing algorithms `auth.algorithm` may name.
const ALGORITHMS: &[(&str, Algorithm)] = &[
    ("HS256", Algorithm::HS256),
    ("RS256", Algorithm::RS256),
    ("ES256", Algorithm::ES256),
    ("EdDSA", Algorithm::EdDSA),
];

fn read_key(key: &str, path: &str) -> Result<Vec<u8>, ConfigError> {
    if path.trim().is_empty() {
        return Err(ConfigError::Invalid {
            key: key.into(),
            problem: "must name a PEM key file for this auth.algorithm".into(),
        });
    }
    std::fs::read(path).map_err(|e| ConfigError::Invalid {
        key: key.into(),
        problem: format!("cannot read {path}: {e}"),
    })
}

/// The token keys of `[auth]`, read and parsed: what `auth::JwtKeys` is
/// built from, and what validation checks so a bad key fails at load.
pub struct TokenKeys {
    /// The one accepted algorithm (`auth.algorithm`).
    pub algorithm: Algorithm,
    /// Signing key: the HS256 secret, or `auth.private_key_file` when set.
    pub encoding: Option<EncodingKey>,
    /// Verifying key: the HS256 secret, or `auth.public_key_file`.
    pub decoding: DecodingKey,
}

impl AuthSettings {
    /// Reads and parses the keys of `auth.algorithm` (RFC 7518/8037): the
    /// HS256 `jwt_secret`, or the PEM files `public_key_file` (and
    /// `private_key_file` when set) for RS256, ES256 and EdDSA.
    ///
    /// # Errors
    /// [`ConfigError`] naming the key: unknown `auth.algorithm`, a `jwt_secret`
    /// under 32 bytes (HS256), or a key file that is missing, unreadable or not
    /// a PEM key of the algorithm's type.
    pub fn token_keys(&self) -> Result<TokenKeys, ConfigError> {
        let bad = |key: &str, problem: String| ConfigError::Invalid {
            key: key.into(),
            problem,
        };
        let algorithm = ALGORITHMS
            .iter()
            .find(|(name, _)| *name == self.algorithm)
            .map(|(_, a)| *a)
            .ok_or_else(|| {
                bad(
                    "auth.algorithm",
                    format!(
                        "`{}` is not accepted; use HS256, RS256, ES256 or EdDSA",
                        self.algorithm
                    ),
                )
            })?;
        let (encoding, decoding) = if algorithm == Algorithm::HS256 {
            let secret = self.jwt_secret.expose_secret().as_bytes();
            if secret.len() < 32 {
                return Err(bad("auth.jwt_secret", "must be at least 32 bytes".into()));
            }
            let not_secret = |e: jsonwebtoken::errors::Error| {
                bad("auth.jwt_secret", format!("is not a usable HMAC key: {e}"))
            };
            (
                Some(EncodingKey::from_secret(secret).map_err(not_secret)?),
                DecodingKey::from_secret(secret).map_err(not_secret)?,
            )
        } else {
            let public = read_key("auth.public_key_file", &self.public_key_file)?;
            let not_key = |key: &str, e: jsonwebtoken::errors::Error| {
                bad(key, format!("is not a PEM key for {}: {e}", self.algorithm))
            };
            let decoding = match algorithm {
                Algorithm::RS256 => DecodingKey::from_rsa_pem(&public),
                Algorithm::ES256 => DecodingKey::from_ec_pem(&public),
                _ => DecodingKey::from_ed_pem(&public),
            }
            .map_err(|e| not_key("auth.public_key_file", e))?;
            let encoding = if self.private_key_file.trim().is_empty() {
                None
            } else {
                let private = read_key("auth.private_key_file", &self.private_key_file)?;
                Some(
                    match algorithm {
                        Algorithm::RS256 => EncodingKey::from_rsa_pem(&private),
                        Algorithm::ES256 => EncodingKey::from_ec_pem(&private),
                        _ => EncodingKey::from_ed_pem(&private),
                    }
                    .map_err(|e| not_key("auth.private_key_file", e))?,
                )
            };
            (encoding, decoding)
        };
        Ok(TokenKeys {
            algorithm,
            encoding,
            decoding,
        })
    }
}

/// A configured role list must be non-empty and name only known roles.
fn check_roles(key: &str, roles: Option<&[String]>) -> Result<(), ConfigError> {
    let Some(roles) = roles else {
        return Ok(());
    };
    if roles.is_empty() {
        return Err(invalid(
            key,
            "must name at least one role (omit it for the default)",
        ));
    }
    if let Some(bad) = roles
        .iter()
        .find(|r| crate::domain::Role::parse(r).is_none())
    {
        return Err(invalid(
            key,
            format!("unknown role `{bad}`; roles are client, reader and admin"),
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

fn check_pg_url(key: &str, url: &str) -> Result<(), ConfigError> {
    let parsed = Url::parse(url).map_err(|e| invalid(key, format!("is not a URL ({e})")))?;
    if !matches!(parsed.scheme(), "postgres" | "postgresql") {
        return Err(invalid(key, "must start with postgres://"));
    }
    Ok(())
}

/// `url` with any password replaced by `***`, for messages and logs.
pub fn mask_url(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("***"));
            }
            parsed.to_string()
        }
        Err(_) => "<unparseable URL>".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_defaults_are_valid() {
        let s = Settings::defaults().expect("defaults");
        assert_eq!(s.server.bind, "127.0.0.1:8080");
        assert_eq!(
            s.database.url.expose_secret(),
            "postgres://postgres@localhost:5432/hookrelay"
        );
        assert!(!s.security.allow_private_callbacks);
        assert_eq!(s.delivery.retry_schedule_s.len(), 7);
        assert_eq!(s.delivery.secret_rotation_grace_s, 86_400);
    }

    #[test]
    fn job_mac_keys_and_redact_fields_are_checked() {
        let s = Settings::defaults().expect("defaults");
        assert!(s.security.uses_dev_job_mac_key());
        assert_eq!(
            s.security.redact_fields,
            DEFAULT_REDACT_FIELDS
                .iter()
                .map(|f| (*f).to_owned())
                .collect::<Vec<_>>(),
            "config/default.toml and DEFAULT_REDACT_FIELDS agree"
        );
        for (keys, problem) in [
            (vec![], "at least one"),
            (vec!["m1:c2hvcnQ="], "32 bytes, got 5"),
            (vec!["bad id:c2hvcnQ="], "entry 1"),
        ] {
            let mut s = Settings::defaults().expect("defaults");
            s.security.job_mac_keys = keys.iter().map(|k| SecretString::from(*k)).collect();
            let err = s.validate().expect_err("must fail").to_string();
            assert!(
                err.contains("security.job_mac_keys") && err.contains(problem),
                "{err}"
            );
            assert!(!err.contains("c2hvcnQ"), "{err}");
        }
        let mut s = Settings::defaults().expect("defaults");
        s.security.redact_fields = vec!["password".into(), " ".into()];
        let err = s.validate().expect_err("must fail").to_string();
        assert!(err.contains("security.redact_fields"), "{err}");
    }

    #[test]
    fn mask_url_hides_password_only() {
        assert_eq!(
            mask_url("postgres://u:pw@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(mask_url("postgres://u@h/db"), "postgres://u@h/db");
    }

    #[test]
    fn short_jwt_secret_is_named() {
        let mut s = Settings::defaults().expect("defaults");
        s.auth.jwt_secret = SecretString::from("short");
        let err = s.validate().expect_err("must fail").to_string();
        assert!(err.contains("auth.jwt_secret"), "{err}");
    }

    #[test]
    fn auth_limits_are_named() {
        let mut s = Settings::defaults().expect("defaults");
        s.auth.leeway_s = 61;
        let err = s.validate().expect_err("leeway").to_string();
        assert!(err.contains("auth.leeway_s"), "{err}");
        for lifetime in [0, MAX_TOKEN_LIFETIME_S + 1] {
            let mut s = Settings::defaults().expect("defaults");
            s.auth.max_token_lifetime_s = lifetime;
            let err = s.validate().expect_err("lifetime").to_string();
            assert!(err.contains("auth.max_token_lifetime_s"), "{err}");
        }
        let mut s = Settings::defaults().expect("defaults");
        s.auth.algorithm = "HS512".into();
        let err = s.validate().expect_err("algorithm").to_string();
        assert!(err.contains("auth.algorithm"), "{err}");
        let mut s = Settings::defaults().expect("defaults");
        s.auth.algorithm = "ES256".into();
        s.auth.public_key_file = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/keys/test-only-rsa-public.pem"
        )
        .into();
        let err = s.validate().expect_err("RSA key for ES256").to_string();
        assert!(err.contains("auth.public_key_file"), "{err}");
    }

    #[test]
    fn unknown_or_empty_roles_are_named() {
        let base = || {
            let mut s = Settings::defaults().expect("defaults");
            s.integrations.insert(
                "v".into(),
                IntegrationSettings {
                    base_url: Url::parse("http://127.0.0.1:1").expect("url"),
                    timeout_ms: 1000,
                    max_attempts: 1,
                    retry_backoff_ms: 1,
                    max_response_bytes: 10,
                    credential: None,
                    trusted: true,
                    operations: [(
                        "op".to_owned(),
                        OperationSettings {
                            method: WriteMethod::Post,
                            path: "/x".into(),
                            fallback: None,
                            roles: Some(vec!["client".into(), "reader".into()]),
                        },
                    )]
                    .into(),
                    queries: [(
                        "q".to_owned(),
                        QuerySettings {
                            path: "/q".into(),
                            cache_ttl_s: 1,
                            stale_if_error_s: 1,
                            fallback: None,
                            roles: None,
                        },
                    )]
                    .into(),
                    retry_horizon_s: 3600,
                    throttle: Default::default(),
                    breaker: Default::default(),
                },
            );
            s
        };
        assert!(base().validate().is_ok());
        let mut s = base();
        s.integrations
            .get_mut("v")
            .expect("v")
            .operations
            .get_mut("op")
            .expect("op")
            .roles = Some(vec!["client".into(), "superuser".into()]);
        let err = s.validate().expect_err("unknown role").to_string();
        assert!(err.contains("integrations.v.operations.op.roles"), "{err}");
        assert!(err.contains("superuser"), "{err}");
        let mut s = base();
        s.integrations
            .get_mut("v")
            .expect("v")
            .queries
            .get_mut("q")
            .expect("q")
            .roles = Some(vec![]);
        let err = s.validate().expect_err("empty roles").to_string();
        assert!(err.contains("integrations.v.queries.q.roles"), "{err}");
    }

    #[test]
    fn bad_encryption_keys_are_named_without_their_material() {
        let s = Settings::defaults().expect("defaults");
        assert!(s.security.uses_dev_encryption_key());
        for (keys, problem) in [
            (vec![], "at least one"),
            (vec!["k1:c2hvcnQ="], "32 bytes, got 5"),
            (vec!["k1"], "entry 1"),
            (
                vec![
                    "k1:MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
                    "k1:MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
                ],
                "more than once",
            ),
        ] {
            let mut s = Settings::defaults().expect("defaults");
            s.security.signing_key_encryption_keys =
                keys.iter().map(|k| SecretString::from(*k)).collect();
            let err = s.validate().expect_err("must fail").to_string();
            assert!(
                err.contains("security.signing_key_encryption_keys"),
                "{err}"
            );
            assert!(err.contains(problem), "{err}");
            assert!(!err.contains("c2hvcnQ") && !err.contains("MDEy"), "{err}");
        }
        let mut s = Settings::defaults().expect("defaults");
        s.security.signing_key_encryption_keys = vec![SecretString::from(
            "prod-1:MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
        )];
        let s = s.validate().expect("valid");
        assert!(!s.security.uses_dev_encryption_key());
    }

    #[test]
    fn abuse_limit_keys_are_validated_by_name() {
        type Breaker = fn(&mut Settings);
        let cases: [(&str, Breaker); 6] = [
            ("server.admin_bind", |s| {
                s.server.admin_bind = "nowhere".into()
            }),
            ("server.admin_bind", |s| {
                s.server.bind = "127.0.0.1:8080".into();
                s.server.admin_bind = "127.0.0.1:8080".into();
            }),
            ("server.max_header_bytes", |s| {
                s.server.max_header_bytes = 10
            }),
            ("limits.per_ip_burst", |s| {
                s.limits.per_ip_per_s = 5;
                s.limits.per_ip_burst = 0;
            }),
            ("limits.per_client_burst", |s| {
                s.limits.per_client_per_s = 5;
                s.limits.per_client_burst = 0;
            }),
            ("limits.rotation_burst", |s| {
                s.limits.rotations_per_hour = 5;
                s.limits.rotation_burst = 0;
            }),
        ];
        for (key, break_it) in cases {
            let mut s = Settings::defaults().expect("defaults");
            break_it(&mut s);
            let err = s.validate().expect_err("must fail").to_string();
            assert!(err.contains(key), "{key}: {err}");
        }
        let mut s = Settings::defaults().expect("defaults");
        s.limits.per_ip_per_s = 0;
        s.limits.per_ip_burst = 0;
        s.server.admin_bind = "127.0.0.1:0".into();
        assert!(
            s.validate().is_ok(),
            "0 = off needs no burst; admin_bind may be port 0"
        );
    }

    #[test]
    fn read_side_keys_are_validated_and_named() {
        let s = Settings::defaults().expect("defaults");
        assert_eq!(s.query.max_staleness_ms, 1_000);
        assert_eq!(s.query.batch_max_queries, 20);
        assert!(
            s.cache.redis_url.expose_secret().is_empty(),
            "moka by default"
        );
        type Tweak = fn(&mut Settings);
        let cases: [(Tweak, &str); 6] = [
            (
                |s| s.query.max_staleness_ms = MAX_STALENESS_MS + 1,
                "query.max_staleness_ms",
            ),
            (
                |s| s.query.read_your_writes_ms = MAX_READ_YOUR_WRITES_MS + 1,
                "query.read_your_writes_ms",
            ),
            (|s| s.query.batch_max_queries = 0, "query.batch_max_queries"),
            (
                |s| s.cache.redis_url = SecretString::from("http://127.0.0.1:6379"),
                "cache.redis_url",
            ),
            (
                |s| s.cache.key_prefix = "has space".into(),
                "cache.key_prefix",
            ),
            (|s| s.cache.redis_timeout_ms = 0, "cache.redis_timeout_ms"),
        ];
        for (tweak, key) in cases {
            let mut s = Settings::defaults().expect("defaults");
            tweak(&mut s);
            let err = s.validate().expect_err(key).to_string();
            assert!(err.contains(key), "{err}");
        }
        let mut s = Settings::defaults().expect("defaults");
        s.cache.redis_url = SecretString::from("redis://127.0.0.1:6379/0");
        s.query.max_staleness_ms = 0;
        assert!(s.validate().is_ok(), "Redis URL and caching off are valid");
    }

    #[test]
    fn rotation_grace_is_bounded() {
        let mut s = Settings::defaults().expect("defaults");
        s.delivery.secret_rotation_grace_s = MAX_SECRET_ROTATION_GRACE_S + 1;
        let err = s.validate().expect_err("must fail").to_string();
        assert!(err.contains("delivery.secret_rotation_grace_s"), "{err}");
        let mut s = Settings::defaults().expect("defaults");
        s.delivery.secret_rotation_grace_s = 0;
        assert!(s.validate().is_ok(), "0 = the old secret stops at once");
    }

    #[test]
    fn loader_messages_are_one_line() {
        let toml = "TOML parse error at line 3, column 5\n  |\n3 | foo =\n  |     ^\ninvalid string\nexpected `\"`\n";
        assert_eq!(
            one_line(toml),
            "TOML parse error at line 3, column 5; invalid string; expected `\"`"
        );
        assert_eq!(one_line("unknown field `x`"), "unknown field `x`");
    }

    #[test]
    fn retry_delays_are_bounded() {
        let mut s = Settings::defaults().expect("defaults");
        s.delivery.retry_schedule_s = vec![5.0, 1e19];
        let err = s.validate().expect_err("must fail").to_string();
        assert!(err.contains("delivery.retry_schedule_s"), "{err}");
        let mut s = Settings::defaults().expect("defaults");
        s.delivery.max_retry_after_s = 10_000_000_000_000;
        let err = s.validate().expect_err("must fail").to_string();
        assert!(err.contains("delivery.max_retry_after_s"), "{err}");
        let mut s = Settings::defaults().expect("defaults");
        s.delivery.retry_schedule_s = vec![MAX_RETRY_DELAY_S as f64];
        s.delivery.max_retry_after_s = MAX_RETRY_DELAY_S;
        assert!(s.validate().is_ok(), "30 days is allowed");
    }

    #[test]
    fn event_settings_are_checked_and_named() {
        type Break = fn(&mut Settings);
        let cases: [(&str, Break); 6] = [
            ("events.poll_interval_ms", |s| s.events.poll_interval_ms = 0),
            ("events.keep_alive_s", |s| s.events.keep_alive_s = 0),
            ("events.retry_ms", |s| s.events.retry_ms = 10),
            ("events.max_streams", |s| s.events.max_streams = 0),
            ("maintenance.event_retention_s", |s| {
                s.maintenance.event_retention_s = 60
            }),
            ("maintenance.purge_events_cron", |s| {
                s.maintenance.purge_events_cron = "hourly".into()
            }),
        ];
        for (key, break_it) in cases {
            let mut s = Settings::defaults().expect("defaults");
            break_it(&mut s);
            let err = s.validate().expect_err(key).to_string();
            assert!(err.contains(key), "{key}: {err}");
        }
    }

    #[test]
    fn bad_operation_path_is_named() {
        let mut s = Settings::defaults().expect("defaults");
        s.integrations.insert(
            "v".into(),
            IntegrationSettings {
                base_url: Url::parse("http://127.0.0.1:1").expect("url"),
                timeout_ms: 1000,
                max_attempts: 1,
                retry_backoff_ms: 1,
                max_response_bytes: 10,
                trusted: true,
                credential: None,
                operations: [(
                    "op".to_owned(),
                    OperationSettings {
                        method: WriteMethod::Post,
                        path: "/x/{unclosed".into(),
                        fallback: None,
                        roles: None,
                    },
                )]
                .into(),
                queries: BTreeMap::new(),
                retry_horizon_s: 3600,
                throttle: Default::default(),
                breaker: Default::default(),
            },
        );
        let err = s.validate().expect_err("must fail").to_string();
        assert!(err.contains("integrations.v.operations.op.path"), "{err}");
    }
}
