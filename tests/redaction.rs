//! Secrets never appear in logs.
//!
//! A test binary of its own, because the global `tracing` subscriber can be
//! installed once per process: this one installs a subscriber that writes
//! everything, at TRACE for every target (hookrelay, reqwest, hyper, sqlx,
//! actix, rustls; `log` records included through tracing-log), into a buffer
//! before the application starts, so `hookrelay::telemetry::init` finds it in
//! place and leaves it. The test then drives a command through an integration
//! with a credential header, retries on both sides, a 403, a secret rotation
//! and a failed database connection, and searches the captured output for
//! every secret it handed to the application.
//!
//! The redaction layer (`hookrelay::security::redact`) is checked on the same run: the
//! command's body carries a sensitive field (`password`), the upstream echoes
//! that body and the credential it received, and the receiver answers with
//! both. Neither may appear in the logs, the attempt audit log, the stored
//! result (status document, `commands.result`) or the callback sent.

use std::io;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use base64::Engine;
use hookrelay::startup::{Application, ServeRole};
use secrecy::SecretString;
use serde_json::{json, Value};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;
use uuid::Uuid;
use wiremock::matchers::{header, method};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

#[allow(dead_code)]
#[path = "api/helpers.rs"]
mod helpers;

use helpers::{settled, spawn_with_settings, test_settings, Echo};

/// The captured log output of this process.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log buffer")).into_owned()
    }
}

impl io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| io::Error::other("poisoned"))?
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Installs the capturing subscriber (once) and returns its buffer.
fn logs() -> &'static Captured {
    static LOGS: OnceLock<Captured> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Captured::default();
        tracing_subscriber::fmt()
            .with_env_filter(EnvFilter::new("trace"))
            .with_writer(logs.clone())
            .with_ansi(false)
            .try_init()
            .expect("the capturing subscriber is the first in this process");
        logs
    })
}

/// An upstream that echoes what it received, credential included (as a
/// careless vendor's debug echo would).
struct EchoWithCredential;

impl Respond for EchoWithCredential {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        let auth = req
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let token = auth.strip_prefix("Bearer ").unwrap_or_default().to_owned();
        ResponseTemplate::new(200).set_body_json(json!({
            "received": serde_json::from_slice::<Value>(&req.body).unwrap_or(Value::Null),
            "headers": {"Authorization": auth},
            "debug": format!("called with token {token}"),
        }))
    }
}

/// The random part of a secret, so it cannot appear by chance.
fn unique() -> String {
    Uuid::new_v4().simple().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_appear_in_logs() {
    let logs = logs();

    let credential = format!("Bearer vendor-cred-{}", unique());
    let password = format!("pw-{}", unique());
    std::env::set_var("HOOKRELAY_TEST_REDACTION_TOKEN", &credential);
    let db_password = format!("dbpw-{}", unique());
    let jwt_secret = format!("jwt-secret-{}", unique());
    let sealing_key =
        base64::engine::general_purpose::STANDARD.encode(Uuid::new_v4().as_bytes().repeat(2));

    let upstream = MockServer::start().await;
    let mut settings = test_settings(&upstream.uri());
    // Trust auth ignores the password, so the test database accepts it.
    let mut url = url::Url::parse(&format!(
        "{}/hookrelay_test_{}",
        helpers::pg_base(),
        unique()
    ))
    .expect("database url");
    url.set_password(Some(&db_password)).expect("password");
    settings.database.url = SecretString::from(url.to_string());
    settings.auth.jwt_secret = SecretString::from(jwt_secret.clone());
    settings.security.signing_key_encryption_keys =
        vec![SecretString::from(format!("k1:{sealing_key}"))];
    settings
        .integrations
        .get_mut("httpbin")
        .expect("httpbin")
        .credential = Some(hookrelay::config::CredentialSettings {
        header: "Authorization".into(),
        value_env: "HOOKRELAY_TEST_REDACTION_TOKEN".into(),
        value: None,
    });
    let app = spawn_with_settings(settings, upstream, ServeRole::All).await;

    // The upstream fails once (a retry is logged), then answers; both calls
    // must carry the credential.
    Mock::given(method("POST"))
        .and(header("authorization", credential.as_str()))
        .respond_with(ResponseTemplate::new(503).set_body_string("busy"))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&app.upstream)
        .await;
    Mock::given(method("POST"))
        .and(header("authorization", credential.as_str()))
        .respond_with(EchoWithCredential)
        .expect(1)
        .mount(&app.upstream)
        .await;

    let token = app.token("acme", &["client"]);
    let signing_secret = app.trust_client(&token).await;
    // The receiver fails the first callback: a retried delivery is logged too.
    // Its answers repeat the sensitive values (stored in the attempt log).
    app.receiver.script(&[500]);
    app.receiver.body(
        json!({"password": password, "echo": format!("seen {credential}")})
            .to_string()
            .as_bytes(),
    );
    let resp = app
        .post_command(
            &token,
            &app.command("42", json!({"x": 1, "user": {"Password": password}})),
            None,
        )
        .await;
    assert_eq!(resp.status(), 202);
    let id = resp.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let doc = app
        .wait_status(&token, &id, Duration::from_secs(15), settled)
        .await;
    assert_eq!(doc["status"], "succeeded", "{doc}");
    assert_eq!(doc["callback"]["status"], "delivered", "{doc}");
    assert!(app.receiver.received().len() >= 2);

    // The stored result and the callback keep the shape, with the sensitive
    // field and the echoed credential masked.
    assert_eq!(
        doc["result"]["body"]["received"]["user"]["Password"], "[REDACTED]",
        "{doc}"
    );
    assert_eq!(
        doc["result"]["body"]["headers"]["Authorization"], "[REDACTED]",
        "{doc}"
    );
    assert_eq!(
        doc["result"]["body"]["debug"],
        "called with token [REDACTED]"
    );
    let attempts = app
        .get_json(&token, &format!("/v1/commands/{id}/attempts"))
        .await;
    assert!(
        attempts["data"][0]["response_body"]
            .as_str()
            .is_some_and(|b| b.contains("[REDACTED]")),
        "{attempts}"
    );
    let command_id = Uuid::parse_str(&id).expect("uuid");
    let stored: Vec<String> = sqlx::query_scalar(
        "SELECT c.result::text FROM commands c WHERE c.id = $1
         UNION ALL SELECT d.payload FROM deliveries d WHERE d.command_id = $1
         UNION ALL SELECT coalesce(d.last_error, '') FROM deliveries d WHERE d.command_id = $1
         UNION ALL SELECT coalesce(c.last_error, '') FROM commands c WHERE c.id = $1
         UNION ALL SELECT coalesce(a.response_body, '') || coalesce(a.error, '')
                     FROM delivery_attempts a JOIN deliveries d ON d.id = a.delivery_id
                    WHERE d.command_id = $1",
    )
    .bind(command_id)
    .fetch_all(&app.pool)
    .await
    .expect("stored rows");
    assert!(stored.len() >= 6, "{stored:?}");
    let credential_token = credential.strip_prefix("Bearer ").expect("bearer");
    let callbacks: Vec<String> = app
        .receiver
        .received()
        .iter()
        .map(|r| String::from_utf8_lossy(&r.raw_body).into_owned())
        .collect();
    for text in stored.iter().chain(&callbacks) {
        for (what, secret) in [
            ("the sensitive field", password.as_str()),
            ("the integration credential's token", credential_token),
        ] {
            assert!(
                !text.contains(secret),
                "{what} is stored or sent unmasked: {text}"
            );
        }
    }

    // A 4xx answer is logged by the request middleware, with the token sent.
    assert_eq!(app.get(&token, "/v1/dead-letters").await.status(), 403);
    // A rotation is logged; neither the old nor the new secret may be.
    let rotated: Value = app
        .post(&token, "/v1/signing-secret/rotate")
        .await
        .json()
        .await
        .expect("rotate json");
    let new_secret = rotated["secret"].as_str().expect("new secret").to_owned();

    // An unreachable database: the error and its logs mask the password.
    let mut down = test_settings("http://127.0.0.1:9");
    let mut url = url::Url::parse("postgres://postgres@127.0.0.1:9/hookrelay").expect("url");
    url.set_password(Some(&db_password)).expect("password");
    down.database.url = SecretString::from(url.to_string());
    down.database.acquire_timeout_ms = 500;
    let err = match Application::build(down.validate().expect("valid"), ServeRole::All).await {
        Ok(_) => panic!("nothing listens on port 9"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("postgres:***@127.0.0.1:9"), "{err}");
    assert!(
        !err.contains(&db_password),
        "the database password is in the error: {err}"
    );

    app.upstream.verify().await;
    drop(app);
    tokio::time::sleep(Duration::from_millis(200)).await;

    let text = logs.text();
    // The capture works and covers what matters: our upstream call and
    // callback spans, and the HTTP client and server internals.
    for expected in [
        "upstream call finished",
        "upstream call failed; retrying",
        "callback attempt",
        "signing secret rotated",
        "hookrelay::db",
        "sqlx::query",
        "hyper_util",
        "reqwest",
    ] {
        assert!(
            text.contains(expected),
            "the captured log lacks {expected:?}; is the capture working?"
        );
    }
    let signing_key = signing_secret
        .strip_prefix("whsec_")
        .expect("whsec_ prefix");
    let new_signing_key = new_secret.strip_prefix("whsec_").expect("whsec_ prefix");
    let jwt_signature = token.rsplit('.').next().expect("jwt signature");
    for (what, secret) in [
        ("the integration credential", credential.as_str()),
        ("the integration credential's token", credential_token),
        ("the client's JWT", token.as_str()),
        ("the client's JWT signature", jwt_signature),
        ("the JWT secret", jwt_secret.as_str()),
        ("the signing secret", signing_secret.as_str()),
        ("the signing secret's key", signing_key),
        ("the rotated signing secret's key", new_signing_key),
        ("the signing-secret encryption key", sealing_key.as_str()),
        ("the database password", db_password.as_str()),
        ("the command's sensitive field", password.as_str()),
    ] {
        if let Some(at) = text.find(secret) {
            let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
            let line_end = text[at..].find('\n').map_or(text.len(), |i| at + i);
            panic!(
                "{what} appears in the log ({} bytes captured):\n{}",
                text.len(),
                &text[line_start..line_end]
            );
        }
    }
}

/// A vendor echoing the credential in another spelling — JSON-escaped as
/// PHP writes it (`\/`), percent-encoded, or base64 — in a body that is not
/// JSON (so only the substring rules apply): none of the spellings is
/// stored, shown in the status document, sent in the callback or logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encoded_echoes_of_a_credential_are_masked() {
    let logs = logs();
    let digits: String = Uuid::new_v4()
        .as_u128()
        .to_string()
        .chars()
        .take(12)
        .collect();
    let credential = format!("sk_live/AbC+dEf=={digits}");
    std::env::set_var("HOOKRELAY_TEST_ENCODED_CREDENTIAL", &credential);
    let json_escaped = credential.replace('/', "\\/");
    let unicode_escaped = credential
        .replace('/', "\\u002f")
        .replace('+', "\\u002B")
        .replace('=', "\\u003d");
    let url_encoded = credential
        .replace('/', "%2F")
        .replace('+', "%2B")
        .replace('=', "%3D");
    let url_encoded_lower = credential
        .replace('/', "%2f")
        .replace('+', "%2b")
        .replace('=', "%3d");
    let b64 = base64::engine::general_purpose::STANDARD.encode(&credential);
    let b64_url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&credential);

    let upstream = MockServer::start().await;
    let mut settings = test_settings(&upstream.uri());
    settings
        .integrations
        .get_mut("httpbin")
        .expect("httpbin")
        .credential = Some(hookrelay::config::CredentialSettings {
        header: "X-Api-Key".into(),
        value_env: "HOOKRELAY_TEST_ENCODED_CREDENTIAL".into(),
        value: None,
    });
    let app = spawn_with_settings(settings, upstream, ServeRole::All).await;
    // A truncated JSON body (text, not JSON) with every spelling.
    let echo = format!(
        r#"{{"debug": "key {json_escaped} / {unicode_escaped}", "url": "https://v.example/?k={url_encoded}&l={url_encoded_lower}", "b64": "{b64} {b64_url}", "#
    );
    Mock::given(method("POST"))
        .and(header("x-api-key", credential.as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_raw(echo.clone(), "application/json"))
        .expect(1)
        .mount(&app.upstream)
        .await;

    let token = app.trusted_client("acme").await;
    // The receiver fails once, answering with the same spellings.
    app.receiver.script(&[500]);
    app.receiver.body(echo.as_bytes());
    let id = app
        .post_command_id(&token, &app.command("7", json!({})), None)
        .await;
    let doc = app
        .wait_status(&token, &id, Duration::from_secs(15), settled)
        .await;
    assert_eq!(doc["status"], "succeeded", "{doc}");
    assert_eq!(doc["callback"]["status"], "delivered", "{doc}");
    let shown = doc["result"]["body"].as_str().expect("kept as text");
    assert!(shown.contains("[REDACTED]"), "{shown}");
    let attempts = app
        .get_json(&token, &format!("/v1/commands/{id}/attempts"))
        .await;
    let callbacks: Vec<String> = app
        .receiver
        .received()
        .iter()
        .map(|r| String::from_utf8_lossy(&r.raw_body).into_owned())
        .collect();
    assert_eq!(callbacks.len(), 2);
    let command_id = Uuid::parse_str(&id).expect("uuid");
    let stored: Vec<String> = sqlx::query_scalar(
        "SELECT c.result::text FROM commands c WHERE c.id = $1
         UNION ALL SELECT d.payload FROM deliveries d WHERE d.command_id = $1
         UNION ALL SELECT coalesce(a.response_body, '')
                     FROM delivery_attempts a JOIN deliveries d ON d.id = a.delivery_id
                    WHERE d.command_id = $1",
    )
    .bind(command_id)
    .fetch_all(&app.pool)
    .await
    .expect("stored rows");
    let texts = [doc.to_string(), attempts.to_string(), logs.text()];
    for text in stored.iter().chain(&callbacks).chain(&texts) {
        // The credential's last characters appear in none of its spellings.
        assert!(!text.contains(&digits), "the credential leaks: {text}");
        for form in [&b64, &b64_url] {
            assert!(!text.contains(&form[4..24]), "base64 form leaks: {text}");
        }
    }
}

/// Every read-side request logs one line under `hookrelay::query` with its
/// endpoint, cache outcome, status and duration (lives here because only this
/// binary captures the log output).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_read_is_logged_with_its_cache_outcome() {
    let logs = logs();
    let upstream = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(Echo::new(200))
        .mount(&upstream)
        .await;
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"ok": true}))
                .insert_header("cache-control", "max-age=30"),
        )
        .mount(&upstream)
        .await;
    let mut settings = test_settings(&upstream.uri());
    settings.query.max_staleness_ms = 30_000;
    settings.query.read_your_writes_ms = 0;
    let app = spawn_with_settings(settings, upstream, ServeRole::All).await;
    let token = app.trusted_client("logged-client").await;
    let id = app
        .post_command_id(&token, &app.command("1", json!({})), None)
        .await;
    // Let the command settle and its last event invalidate the cache, so the
    // two reads below are a hit after a miss, not two misses.
    app.wait_status(&token, &id, Duration::from_secs(15), settled)
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..2 {
        app.get(&token, &format!("/v1/commands/{id}")).await;
        app.get(&token, "/v1/queries/httpbin/get_json?logged=1")
            .await;
    }
    app.get(&token, "/v1/commands?limit=5").await;
    let text = logs.text();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("hookrelay::query") && l.contains("query answered"))
        .filter(|l| l.contains(&app.address.replace("http://", "")))
        .collect();
    for (endpoint, cache) in [
        ("status", "miss"),
        ("status", "hit"),
        ("upstream", "miss"),
        ("upstream", "hit"),
        ("list", "bypass"),
    ] {
        assert!(
            lines
                .iter()
                .any(|l| l.contains(&format!("endpoint=\"{endpoint}\""))
                    && l.contains(&format!("cache=\"{cache}\""))
                    && l.contains("status=200")
                    && l.contains("duration_ms=")),
            "no {endpoint}/{cache} line in {lines:#?}"
        );
    }
}
