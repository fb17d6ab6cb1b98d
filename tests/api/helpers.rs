//! Test harness: a fresh Postgres database per test, the real application on
//! port 0, a wiremock upstream and a real webhook receiver that verifies every
//! callback with the reference `standardwebhooks` crate.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hookrelay::auth::JwtKeys;
use hookrelay::config::{
    IntegrationSettings, OperationSettings, QuerySettings, Settings, WriteMethod,
};
use hookrelay::startup::{Application, ServeRole};
use secrecy::SecretString;
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

/// Base URL of the test Postgres server (trust auth).
pub fn pg_base() -> String {
    std::env::var("HOOKRELAY_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// One webhook as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub webhook_id: String,
    pub body: Value,
    pub verified: bool,
    pub at: Instant,
    /// The request's headers and body exactly as they arrived, to verify again
    /// against a chosen secret ([`Received::verifies_with`]).
    pub headers: wiremock::http::HeaderMap,
    pub raw_body: Vec<u8>,
}

impl Received {
    /// Whether the reference `standardwebhooks` verifier, given only `secret`,
    /// accepts this request.
    pub fn verifies_with(&self, secret: &str) -> bool {
        standardwebhooks::Webhook::new(secret)
            .map(|wh| wh.verify(&self.raw_body, &self.headers).is_ok())
            .unwrap_or(false)
    }

    /// The `v1,` signatures in `webhook-signature`.
    pub fn signature_count(&self) -> usize {
        self.headers
            .get("webhook-signature")
            .and_then(|v| v.to_str().ok())
            .map_or(0, |v| v.split(' ').filter(|s| s.starts_with("v1,")).count())
    }
}

#[derive(Default)]
struct ReceiverState {
    secrets: Vec<String>,
    script: VecDeque<u16>,
    default_status: u16,
    delay: Duration,
    retry_after: Option<String>,
    body: Option<Vec<u8>>,
    received: Vec<Received>,
}

/// A partner server: answers scripted statuses (default 200) and verifies each
/// request with `standardwebhooks::Webhook::verify` against trusted secrets.
#[derive(Clone)]
pub struct TestReceiver {
    pub server: Arc<MockServer>,
    state: Arc<Mutex<ReceiverState>>,
}

struct Verifier(Arc<Mutex<ReceiverState>>);

impl Respond for Verifier {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        let mut st = self.0.lock().expect("receiver lock");
        let verified = st.secrets.iter().any(|s| {
            standardwebhooks::Webhook::new(s)
                .map(|wh| wh.verify(&req.body, &req.headers).is_ok())
                .unwrap_or(false)
        });
        let header = |n: &str| {
            req.headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        st.received.push(Received {
            webhook_id: header("webhook-id"),
            body: serde_json::from_slice(&req.body).unwrap_or(Value::Null),
            verified,
            at: Instant::now(),
            headers: req.headers.clone(),
            raw_body: req.body.clone(),
        });
        let status = st.script.pop_front().unwrap_or(st.default_status);
        let body = st
            .body
            .clone()
            .unwrap_or_else(|| format!("receiver says {status}").into_bytes());
        let mut resp = ResponseTemplate::new(status)
            .set_body_raw(body, "text/plain")
            .set_delay(st.delay);
        if let (Some(ra), false) = (&st.retry_after, (200..300).contains(&status)) {
            resp = resp.insert_header("retry-after", ra.as_str());
        }
        resp
    }
}

impl TestReceiver {
    pub async fn start() -> TestReceiver {
        let server = MockServer::start().await;
        let state = Arc::new(Mutex::new(ReceiverState {
            default_status: 200,
            ..Default::default()
        }));
        Mock::given(method("POST"))
            .respond_with(Verifier(state.clone()))
            .mount(&server)
            .await;
        TestReceiver {
            server: Arc::new(server),
            state,
        }
    }

    /// The callback URL of this receiver.
    pub fn url(&self) -> String {
        format!("{}/hooks", self.server.uri())
    }

    pub fn trust(&self, secret: &str) {
        self.state
            .lock()
            .expect("lock")
            .secrets
            .push(secret.to_owned());
    }

    /// Answer these statuses first, in order.
    pub fn script(&self, statuses: &[u16]) {
        self.state.lock().expect("lock").script.extend(statuses);
    }

    /// Answer with this body (raw bytes) instead of `receiver says <status>`.
    pub fn body(&self, body: &[u8]) {
        self.state.lock().expect("lock").body = Some(body.to_vec());
    }

    /// Send this `Retry-After` with every non-2xx answer.
    pub fn retry_after(&self, value: &str) {
        self.state.lock().expect("lock").retry_after = Some(value.to_owned());
    }

    /// Wait this long before answering.
    pub fn delay(&self, delay: Duration) {
        self.state.lock().expect("lock").delay = delay;
    }

    /// Answer this status once the script is used up.
    pub fn always(&self, status: u16) {
        self.state.lock().expect("lock").default_status = status;
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.lock().expect("lock").received.clone()
    }

    /// Waits until at least `n` webhooks arrived.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.received();
            if got.len() >= n || Instant::now() > deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Echoes the upstream request back as JSON, so each command's result is
/// distinguishable: `{"path": ..., "method": ..., "received": <body>, "idempotency_key": ...}`.
pub struct Echo(pub u16, pub Duration);

impl Echo {
    /// Echo with status `status` and no delay.
    pub fn new(status: u16) -> Self {
        Echo(status, Duration::ZERO)
    }

    /// The same answer after `delay`.
    pub fn delayed(self, delay: Duration) -> Self {
        Echo(self.0, delay)
    }
}

impl Respond for Echo {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        ResponseTemplate::new(self.0)
            .set_delay(self.1)
            .set_body_json(json!({
                "path": req.url.path(),
                "method": req.method.as_str(),
                "received": serde_json::from_slice::<Value>(&req.body).unwrap_or(Value::Null),
                "idempotency_key": req.headers.get("idempotency-key").and_then(|v| v.to_str().ok()),
            }))
    }
}

pub struct TestApp {
    pub address: String,
    pub pool: PgPool,
    pub upstream: MockServer,
    pub receiver: TestReceiver,
    pub http: reqwest::Client,
    pub settings: Settings,
    pub shutdown: CancellationToken,
    /// The read side's state (API role): status cache, read-your-writes window.
    pub query_state: Option<Arc<hookrelay::query::QueryState>>,
}

/// Settings for a test: fresh database, port 0, private callbacks allowed,
/// a short delivery schedule and the `httpbin` integration on `upstream`.
pub fn test_settings(upstream: &str) -> Settings {
    let mut s = Settings::defaults().expect("defaults");
    let db = format!("hookrelay_test_{}", Uuid::new_v4().simple());
    s.database.url = SecretString::from(format!("{}/{db}", pg_base()));
    s.database.max_connections = 10;
    s.server.bind = "127.0.0.1:0".into();
    s.server.workers = 1;
    // Tests fire requests from one address as fast as they can; the rate-limit
    // tests (tests/api/abuse.rs) turn the limits on with small numbers.
    s.limits.per_ip_per_s = 0;
    s.limits.per_client_per_s = 0;
    s.security.allow_private_callbacks = true;
    s.delivery.retry_schedule_s = vec![0.05, 0.1];
    s.delivery.timeout_ms = 2_000;
    s.dispatcher.lease_s = 10;
    s.dispatcher.shutdown_grace_s = 2;
    let operations = [
        (
            "create_thing",
            WriteMethod::Post,
            "/anything/things/{thing_id}",
        ),
        (
            "delete_thing",
            WriteMethod::Delete,
            "/anything/things/{thing_id}",
        ),
        ("ping", WriteMethod::Post, "/ping"),
    ]
    .into_iter()
    .map(|(n, m, p)| {
        (
            n.to_owned(),
            OperationSettings {
                method: m,
                path: p.parse().expect("path template"),
                fallback: None,
                roles: None,
            },
        )
    })
    .collect();
    s.integrations.insert(
        "httpbin".into(),
        IntegrationSettings {
            base_url: upstream.parse().expect("upstream url"),
            timeout_ms: 2_000,
            max_attempts: 3,
            retry_backoff_ms: 20,
            max_response_bytes: 64 * 1024,
            trusted: true,
            credential: None,
            operations,
            queries: [(
                "get_json".to_owned(),
                QuerySettings {
                    path: "/json".parse().expect("path template"),
                    cache_ttl_s: 60,
                    stale_if_error_s: 300,
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
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(customize: impl FnOnce(&mut Settings)) -> TestApp {
    let upstream = MockServer::start().await;
    let mut settings = test_settings(&upstream.uri());
    customize(&mut settings);
    spawn_with_settings(settings, upstream, ServeRole::All).await
}

/// Installs the process's log subscriber once, writing through libtest's
/// capture: a passing test prints nothing, a failing one shows its server
/// logs with its failure. `RUST_LOG` overrides the filter; `--nocapture`
/// shows everything.
fn capture_logs(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .compact()
        .try_init();
}

pub async fn spawn_with_settings(
    settings: Settings,
    upstream: MockServer,
    role: ServeRole,
) -> TestApp {
    let settings = settings.validate().expect("valid test settings");
    capture_logs(&settings.telemetry.filter);
    let receiver = TestReceiver::start().await;
    let app = Application::build(settings.clone(), role)
        .await
        .expect("build app");
    let port = app.port().unwrap_or(0);
    let pool = app.pool().clone();
    let shutdown = app.shutdown_token();
    let query_state = app.query_state();
    tokio::spawn(app.run_until_stopped());
    TestApp {
        address: format!("http://127.0.0.1:{port}"),
        pool,
        upstream,
        receiver,
        http: reqwest::Client::new(),
        settings,
        shutdown,
        query_state,
    }
}

/// Another API instance of `app`'s deployment: the same settings (database,
/// upstream, cache), its own port and process-local state.
pub async fn spawn_sibling(app: &TestApp) -> TestApp {
    let unused_upstream = MockServer::start().await;
    spawn_with_settings(app.settings.clone(), unused_upstream, ServeRole::Api).await
}

/// A fresh database with the schema and no rows (e.g. a replica that never
/// catches up); returns its URL.
pub async fn empty_database() -> String {
    let url = format!("{}/hookrelay_test_{}", pg_base(), Uuid::new_v4().simple());
    hookrelay::testing::prepare_database(&url)
        .await
        .expect("create and migrate the database");
    url
}

/// Settings that use the test Redis (127.0.0.1:6379) with a key prefix of
/// their own, so parallel tests never see each other's entries.
pub fn use_redis(s: &mut Settings) {
    s.cache.redis_url = SecretString::from("redis://127.0.0.1:6379".to_owned());
    s.cache.key_prefix = format!("hookrelay-test-{}:", Uuid::new_v4().simple());
}

impl Drop for TestApp {
    /// Stops the application (HTTP server, dispatcher) with the test.
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl TestApp {
    /// A token for `sub` with `roles`, signed with the app's key.
    pub fn token(&self, sub: &str, roles: &[&str]) -> String {
        JwtKeys::new(&self.settings.auth)
            .expect("jwt keys")
            .mint(
                sub,
                &roles.iter().map(|r| (*r).to_owned()).collect::<Vec<_>>(),
                600,
            )
            .expect("mint")
    }

    /// A token with exactly these claims (any JSON object, nothing added),
    /// signed HS256 with the app's `auth.jwt_secret`.
    pub fn token_with_claims(&self, claims: &Value) -> String {
        use secrecy::ExposeSecret;
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            claims,
            &jsonwebtoken::EncodingKey::from_secret(
                self.settings.auth.jwt_secret.expose_secret().as_bytes(),
            )
            .expect("an HMAC key"),
        )
        .expect("encode")
    }

    /// A command body for `create_thing` calling back to the test receiver.
    pub fn command(&self, thing_id: &str, body: Value) -> Value {
        json!({
            "integration": "httpbin",
            "operation": "create_thing",
            "params": {"thing_id": thing_id},
            "body": body,
            "callback_url": self.receiver.url(),
        })
    }

    pub async fn post_command(
        &self,
        token: &str,
        body: &Value,
        key: Option<&str>,
    ) -> reqwest::Response {
        let mut req = self
            .http
            .post(format!("{}/v1/commands", self.address))
            .bearer_auth(token)
            .json(body);
        if let Some(k) = key {
            req = req.header("Idempotency-Key", k);
        }
        req.send().await.expect("POST /v1/commands")
    }

    pub async fn post(&self, token: &str, path: &str) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.address))
            .bearer_auth(token)
            .send()
            .await
            .expect("POST")
    }

    /// Posts a command, asserts 202 and returns its id.
    pub async fn post_command_id(&self, token: &str, body: &Value, key: Option<&str>) -> String {
        let resp = self.post_command(token, body, key).await;
        assert_eq!(resp.status(), 202, "POST /v1/commands");
        resp.json::<Value>().await.expect("json")["id"]
            .as_str()
            .expect("id")
            .to_owned()
    }

    pub async fn get(&self, token: &str, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.address))
            .bearer_auth(token)
            .send()
            .await
            .expect("GET")
    }

    /// `GET /openapi.json` (no token needed), parsed.
    pub async fn openapi(&self) -> Value {
        let resp = self
            .http
            .get(format!("{}/openapi.json", self.address))
            .send()
            .await
            .expect("GET /openapi.json");
        assert_eq!(resp.status(), 200);
        resp.json().await.expect("openapi json")
    }

    /// GET `path` and parse the body as JSON (any status).
    pub async fn get_json(&self, token: &str, path: &str) -> Value {
        self.get(token, path).await.json().await.expect("json")
    }

    /// A `client` token for `sub` whose signing secret the receiver trusts.
    pub async fn trusted_client(&self, sub: &str) -> String {
        let token = self.token(sub, &["client"]);
        self.trust_client(&token).await;
        token
    }

    pub async fn status(&self, token: &str, id: &str) -> Value {
        let resp = self.get(token, &format!("/v1/commands/{id}")).await;
        assert_eq!(resp.status(), 200, "GET status of {id}");
        resp.json().await.expect("status json")
    }

    /// Fetches the client's signing secret and makes the receiver trust it.
    pub async fn trust_client(&self, token: &str) -> String {
        let resp = self.get(token, "/v1/signing-secret").await;
        assert_eq!(resp.status(), 200);
        let secret = resp.json::<Value>().await.expect("json")["secret"]
            .as_str()
            .expect("secret")
            .to_owned();
        self.receiver.trust(&secret);
        secret
    }

    /// Polls the status document until `done` holds (or panics after `timeout`).
    pub async fn wait_status(
        &self,
        token: &str,
        id: &str,
        timeout: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let doc = self.status(token, id).await;
            if done(&doc) {
                return doc;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting; last status document: {doc:#}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(&self.pool)
            .await
            .expect("count")
    }
}

/// Callback delivered (or dead-lettered) and command finished.
pub fn settled(doc: &Value) -> bool {
    matches!(doc["status"].as_str(), Some("succeeded" | "failed"))
        && matches!(
            doc["callback"]["status"].as_str(),
            Some("delivered" | "dead_lettered")
        )
}

/// This machine's own hostname, checked to resolve (via /etc/hosts) to
/// non-public addresses only: a real name for SSRF tests that must be refused
/// after DNS resolution.
pub async fn loopback_hostname() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .expect("hostname")
        .trim()
        .to_owned();
    let resolved: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
        .await
        .expect("the hostname resolves")
        .collect();
    assert!(
        !resolved.is_empty() && resolved.iter().all(|a| hookrelay::security::is_private_ip(a.ip())),
        "this test needs a hostname that resolves to non-public addresses only: {host} -> {resolved:?}"
    );
    host
}
