//! The real binary as separate processes: SIGKILL in the middle of a run, and
//! two worker processes sharing one database.

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hookrelay::startup::ServeRole;
use serde_json::{json, Value};
use sqlx::PgPool;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer};

use crate::helpers::{spawn_with_settings, test_settings, Echo, TestReceiver};

/// A child `hookrelay serve` process, killed when dropped.
struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Writes a config file for the binary: the test's upstream, private
/// callbacks allowed, a short lease so a killed worker's jobs come back fast.
fn config_file(upstream: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!(
        "hookrelay-test-{}.toml",
        uuid::Uuid::new_v4().simple()
    ));
    let toml = format!(
        r#"
[security]
allow_private_callbacks = true
[dispatcher]
lease_s = 3
[delivery]
retry_schedule_s = [0.2, 0.5, 1]
[telemetry]
filter = "warn"
[integrations.httpbin]
base_url = "{upstream}"
trusted = true
[integrations.httpbin.operations.create_thing]
method = "POST"
path = "/anything/things/{{thing_id}}"
"#
    );
    std::fs::write(&path, toml).expect("write config");
    path
}

fn serve(config: &std::path::Path, db_url: &str, role: &str, port: u16) -> Serve {
    let child = Command::new(env!("CARGO_BIN_EXE_hookrelay"))
        .args(["serve", "--role", role, "--config"])
        .arg(config)
        .env("DATABASE_URL", db_url)
        .env("HOOKRELAY__SERVER__BIND", format!("127.0.0.1:{port}"))
        .env_remove("HOOKRELAY_CONFIG")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn hookrelay");
    Serve(child)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

async fn wait_ready(http: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await {
            if r.status() == 200 {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{base} did not become ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .expect("count")
}

/// Upstream calls per command id (the forwarded `Idempotency-Key`).
async fn upstream_calls(upstream: &MockServer) -> HashMap<String, usize> {
    let mut calls = HashMap::new();
    for r in upstream.received_requests().await.unwrap_or_default() {
        if let Some(k) = r
            .headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
        {
            *calls.entry(k.to_owned()).or_default() += 1;
        }
    }
    calls
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_midway_loses_nothing_and_never_re_executes_a_recorded_call() {
    let upstream = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(Echo::new(200).delayed(Duration::from_millis(30)))
        .mount(&upstream)
        .await;
    let receiver = TestReceiver::start().await;
    receiver.delay(Duration::from_millis(30));
    let settings = test_settings(&upstream.uri());
    use secrecy::ExposeSecret;
    let db_url = settings.database.url.expose_secret().to_owned();
    let config = config_file(&upstream.uri());
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();

    let first = serve(&config, &db_url, "all", port);
    wait_ready(&http, &base).await;
    let pool = PgPool::connect(&db_url).await.expect("pool");
    let token = hookrelay::auth::JwtKeys::new(&settings.auth)
        .expect("keys")
        .mint("acme", &["client".to_owned()], 600)
        .expect("token");
    let secret: Value = http
        .get(format!("{base}/v1/signing-secret"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("secret")
        .json()
        .await
        .expect("json");
    receiver.trust(secret["secret"].as_str().expect("secret"));

    let total = 300;
    let mut accepted = HashSet::new();
    for i in 0..total {
        let body = json!({"integration": "httpbin", "operation": "create_thing",
                          "params": {"thing_id": i.to_string()}, "body": {"i": i},
                          "callback_url": receiver.url()});
        let resp = http
            .post(format!("{base}/v1/commands"))
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await
            .expect("post");
        assert_eq!(resp.status(), 202);
        accepted.insert(
            resp.json::<Value>().await.expect("json")["id"]
                .as_str()
                .expect("id")
                .to_owned(),
        );
    }
    while count(
        &pool,
        "SELECT count(*) FROM deliveries WHERE status = 'delivered'",
    )
    .await
        < 30
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(first); // SIGKILL: no drain, no lease release.
    let recorded: HashSet<String> = sqlx::query_scalar::<_, uuid::Uuid>(
        "SELECT id FROM commands WHERE status IN ('succeeded', 'failed')",
    )
    .fetch_all(&pool)
    .await
    .expect("recorded")
    .into_iter()
    .map(|id| id.to_string())
    .collect();
    assert!(
        recorded.len() < total,
        "killed midway ({} of {total} recorded)",
        recorded.len()
    );
    let calls_at_kill = upstream_calls(&upstream).await;

    let _second = serve(&config, &db_url, "all", port);
    wait_ready(&http, &base).await;
    let deadline = Instant::now() + Duration::from_secs(90);
    while count(
        &pool,
        "SELECT count(*) FROM deliveries WHERE status = 'delivered'",
    )
    .await
        < total as i64
    {
        assert!(
            Instant::now() < deadline,
            "every accepted command is called back after the restart"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM commands WHERE status = 'succeeded'"
        )
        .await,
        total as i64
    );

    let calls = upstream_calls(&upstream).await;
    for id in &accepted {
        assert!(calls.get(id).copied().unwrap_or(0) >= 1, "{id} executed");
    }
    for id in &recorded {
        assert_eq!(
            calls.get(id),
            calls_at_kill.get(id),
            "{id} was called again after its result was recorded"
        );
    }
    let mut webhook_ids: HashMap<String, HashSet<String>> = HashMap::new();
    for r in receiver.received() {
        assert!(r.verified, "every callback verifies");
        webhook_ids
            .entry(
                r.body["data"]["command_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
            .or_default()
            .insert(r.webhook_id);
    }
    assert_eq!(webhook_ids.len(), total, "every command called back");
    assert!(
        webhook_ids.values().all(|ids| ids.len() == 1),
        "a duplicate callback carries the same webhook-id"
    );
    let _ = std::fs::remove_file(config);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_worker_processes_execute_each_of_1000_commands_exactly_once() {
    let upstream = MockServer::start().await;
    let settings = test_settings(&upstream.uri());
    let app = spawn_with_settings(settings.clone(), upstream, ServeRole::Api).await;
    Mock::given(method("POST"))
        .respond_with(Echo::new(200))
        .mount(&app.upstream)
        .await;
    use secrecy::ExposeSecret;
    let db_url = settings.database.url.expose_secret().to_owned();
    let config = config_file(&app.upstream.uri());
    let _w1 = serve(&config, &db_url, "worker", free_port());
    let _w2 = serve(&config, &db_url, "worker", free_port());

    let token = app.trusted_client("acme").await;
    use futures_util::StreamExt;
    let posts = (0..1000).map(|i| {
        let body = app.command(&i.to_string(), json!({"i": i}));
        let (app, token) = (&app, token.clone());
        async move { assert_eq!(app.post_command(&token, &body, None).await.status(), 202) }
    });
    futures_util::stream::iter(posts)
        .buffer_unordered(64)
        .collect::<Vec<()>>()
        .await;

    let deadline = Instant::now() + Duration::from_secs(90);
    while count(
        &app.pool,
        "SELECT count(*) FROM deliveries WHERE status = 'delivered'",
    )
    .await
        < 1000
    {
        assert!(Instant::now() < deadline, "all 1000 delivered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let calls = upstream_calls(&app.upstream).await;
    assert_eq!(calls.len(), 1000);
    assert!(calls.values().all(|n| *n == 1), "no command executed twice");
    assert_eq!(app.receiver.received().len(), 1000, "one callback each");
    assert!(app.receiver.received().iter().all(|r| r.verified));
    let _ = std::fs::remove_file(config);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_api_instances_share_idempotency_keys() {
    let upstream = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(Echo::new(200))
        .expect(1)
        .mount(&upstream)
        .await;
    let settings = test_settings(&upstream.uri());
    let a = spawn_with_settings(settings.clone(), upstream, ServeRole::All).await;
    let b = spawn_with_settings(settings, MockServer::start().await, ServeRole::Api).await;
    let token = a.token("acme", &["client"]);
    let body = a.command("1", json!({"n": 1}));
    // The same request through both instances at once, several times each.
    let sends = (0..8).map(|i| {
        let app = if i % 2 == 0 { &a } else { &b };
        let (token, body) = (token.clone(), body.clone());
        async move { app.post_command(&token, &body, Some("shared-key")).await }
    });
    let mut ids = HashSet::new();
    for resp in futures_util::future::join_all(sends).await {
        assert_eq!(resp.status(), 202);
        ids.insert(
            resp.json::<Value>().await.expect("json")["id"]
                .as_str()
                .expect("id")
                .to_owned(),
        );
    }
    assert_eq!(ids.len(), 1, "one command across API instances: {ids:?}");
    let mut other = body.clone();
    other["body"] = json!({"n": 2});
    assert_eq!(
        b.post_command(&token, &other, Some("shared-key"))
            .await
            .status(),
        409
    );
    let id = ids.into_iter().next().expect("id");
    a.wait_status(
        &token,
        &id,
        Duration::from_secs(10),
        crate::helpers::settled,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    a.upstream.verify().await;
}
