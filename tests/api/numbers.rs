//! JSON kept as text: whatever JSON a client can get accepted (and whatever a
//! vendor answers) is stored, sealed, sent, read back and delivered byte for
//! byte; one odd value can neither quarantine its own command nor stall the
//! commands claimed with it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRng, TestRunner};
use serde_json::Value;
use uuid::Uuid;
use wiremock::matchers::method;
use wiremock::{Mock, Request, Respond, ResponseTemplate};

use crate::helpers::{spawn_app, TestApp};
use crate::integrity::{api_only, start_worker};

/// Numbers that a float parser may not read back to the same `f64` (17
/// significant digits), that no `f64` holds (`1e400`, integers beyond 2^64),
/// the extremes, and negative zero.
const ODD_BODY: &str = r#"{"x": -965.56748141547666, "y": 0.30000000000000004, "z": 1.2345678901234567e-7, "max": 1.7976931348623157e308, "tiny": 2.5e-308, "nz": -0.0, "big": 123456789012345678901234567890, "huge": 1e400, "s": "a\u0000b\ud83d\ude00\"\\/"}"#;

/// What the vendor answers: the same kinds of numbers.
const ODD_ANSWER: &str = r#"{"a": 1.7976931348623157e308, "b": 1.79e308, "c": -965.56748141547666, "d": 2.5e-308, "e": -0.0, "f": 123456789012345678901234567890, "g": 1e400, "h": 1E+2}"#;

/// An upstream that records every request body (raw bytes) and answers
/// `answer` as `application/json`.
#[derive(Clone)]
struct Recorder {
    bodies: Arc<Mutex<Vec<Vec<u8>>>>,
    answer: &'static str,
}

impl Respond for Recorder {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        self.bodies.lock().expect("lock").push(req.body.clone());
        ResponseTemplate::new(200).set_body_raw(self.answer.as_bytes().to_vec(), "application/json")
    }
}

async fn record_upstream(app: &TestApp, answer: &'static str) -> Arc<Mutex<Vec<Vec<u8>>>> {
    let bodies = Arc::new(Mutex::new(Vec::new()));
    Mock::given(method("POST"))
        .respond_with(Recorder {
            bodies: bodies.clone(),
            answer,
        })
        .mount(&app.upstream)
        .await;
    bodies
}

/// The command request as raw text, so the body's bytes are exactly `body`.
fn raw_command(app: &TestApp, thing_id: &str, body: &str) -> String {
    format!(
        r#"{{"integration": "httpbin", "operation": "create_thing", "params": {{"thing_id": "{thing_id}"}}, "body": {body}, "callback_url": "{}"}}"#,
        app.receiver.url()
    )
}

async fn post_raw(app: &TestApp, token: &str, request: String) -> reqwest::Response {
    app.http
        .post(format!("{}/v1/commands", app.address))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(request)
        .send()
        .await
        .expect("POST /v1/commands")
}

async fn post_raw_id(app: &TestApp, token: &str, request: String) -> String {
    let resp = post_raw(app, token, request).await;
    let status = resp.status();
    let text = resp.text().await.expect("text");
    assert_eq!(status, 202, "{text}");
    let doc: Value = serde_json::from_str(&text).expect("json");
    doc["id"].as_str().expect("id").to_owned()
}

/// The parts of a status document these tests check. `result` is skipped
/// unparsed: serde_json cannot hold `1e400` in a `Value`, and a partner (or
/// this test) reading the vendor's numbers is the point.
#[derive(serde::Deserialize)]
struct Settled {
    status: String,
    callback: Value,
}

/// Polls the status document until the command and its callback settled.
async fn wait_settled(app: &TestApp, token: &str, id: &str, within: Duration) -> Settled {
    let deadline = Instant::now() + within;
    loop {
        let (status, text) = get_text(app, token, &format!("/v1/commands/{id}")).await;
        assert_eq!(status, 200, "{text}");
        let doc: Settled = serde_json::from_str(&text).expect("status document");
        let done = matches!(doc.status.as_str(), "succeeded" | "failed")
            && doc.callback["status"] != "pending";
        if done || Instant::now() > deadline {
            return doc;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn get_text(app: &TestApp, token: &str, path: &str) -> (u16, String) {
    let resp = app.get(token, path).await;
    let status = resp.status().as_u16();
    (status, resp.text().await.expect("text"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_survive_intake_upstream_result_read_and_callback_unchanged() {
    let app = spawn_app().await;
    let sent = record_upstream(&app, ODD_ANSWER).await;
    let token = app.trusted_client("acme").await;
    let id = post_raw_id(&app, &token, raw_command(&app, "1", ODD_BODY)).await;

    let doc = wait_settled(&app, &token, &id, Duration::from_secs(15)).await;
    assert_eq!(doc.status, "succeeded");
    assert_eq!(doc.callback["status"], "delivered", "{}", doc.callback);

    // The vendor got the client's bytes, not a re-formatting of them.
    let upstream = sent.lock().expect("lock").clone();
    assert_eq!(upstream.len(), 1);
    assert_eq!(String::from_utf8_lossy(&upstream[0]), ODD_BODY);

    // The partner got the vendor's bytes inside a verified webhook.
    let hooks = app.receiver.wait_for(1, Duration::from_secs(5)).await;
    assert!(hooks[0].verified);
    let raw = String::from_utf8_lossy(&hooks[0].raw_body).into_owned();
    assert!(raw.contains(ODD_ANSWER), "callback body: {raw}");

    // Every read of the command answers, with the same bytes.
    let admin = app.token("ops", &["admin"]);
    for (who, path) in [
        (&token, format!("/v1/commands/{id}")),
        (&token, "/v1/commands".to_owned()),
        (&token, format!("/v1/commands/{id}/attempts")),
        (&admin, "/v1/commands".to_owned()),
        (&admin, format!("/v1/commands/{id}")),
    ] {
        let (status, text) = get_text(&app, who, &path).await;
        assert_eq!(status, 200, "{path}: {text}");
        if !path.ends_with("attempts") {
            assert!(text.contains(ODD_ANSWER), "{path}: {text}");
        }
    }
}

/// Bodies that once broke a claim, a seal or a read, each a valid JSON text.
fn edge_bodies() -> Vec<String> {
    let deep = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
    vec![
        "1.7976931348623157e308".into(),
        "-1.7976931348623157e308".into(),
        "[1e400, -1e400, 1e-400]".into(),
        r#"{"x": -965.56748141547666, "y": 0.30000000000000004, "z": 1.2345678901234567e-7}"#
            .into(),
        "[2.5e-308, 4.9e-324, -0.0, 0e0, 1E+2]".into(),
        "[9007199254740993, 18446744073709551616, -9223372036854775809]".into(),
        r#""\u0000 \ud800 \udfff \u2028""#.into(),
        // The request object itself is one level: 126 more is serde_json's
        // limit of 128 for the whole request.
        deep(126),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_poison_value_does_not_stall_the_commands_claimed_with_it() {
    let app = spawn_app().await;
    let sent = record_upstream(&app, ODD_ANSWER).await;
    let token = app.trusted_client("acme").await;
    let started = Instant::now();

    // The edge cases and 30 ordinary commands, all at once, so they share
    // claims.
    let edge = edge_bodies();
    let mut requests: Vec<(bool, String)> = edge
        .iter()
        .enumerate()
        .map(|(i, b)| (true, raw_command(&app, &format!("edge-{i}"), b)))
        .collect();
    for i in 0..30 {
        requests.push((
            false,
            raw_command(&app, &format!("plain-{i}"), &format!(r#"{{"n": {i}}}"#)),
        ));
    }
    let ids = futures_util::future::join_all(requests.into_iter().map(|(edge, r)| {
        let (app, token) = (&app, &token);
        async move { (edge, post_raw_id(app, token, r).await) }
    }))
    .await;

    for (edge, id) in &ids {
        let doc = wait_settled(&app, &token, id, Duration::from_secs(20)).await;
        assert_eq!(doc.status, "succeeded", "edge case: {edge}");
        assert_eq!(doc.callback["status"], "delivered", "{}", doc.callback);
    }
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "every command finished promptly: {:?}",
        started.elapsed()
    );
    let upstream: Vec<String> = sent
        .lock()
        .expect("lock")
        .iter()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .collect();
    assert_eq!(upstream.len(), ids.len(), "one upstream call each");
    for body in &edge {
        assert!(upstream.contains(body), "sent upstream unchanged: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_that_cannot_be_decoded_fails_alone_with_its_reason() {
    let app = api_only(|_| {}).await;
    record_upstream(&app, r#"{"ok": true}"#).await;
    let token = app.trusted_client("acme").await;
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(post_raw_id(&app, &token, raw_command(&app, &i.to_string(), "{}")).await);
    }
    // A value no client can send, but that makes the claim's decode fail for
    // this row: a timestamp chrono cannot hold.
    let poisoned = Uuid::parse_str(&ids[3]).expect("uuid");
    sqlx::query("UPDATE commands SET created_at = 'infinity' WHERE id = $1")
        .bind(poisoned)
        .execute(&app.pool)
        .await
        .expect("poison");

    let (stop, worker) = start_worker(&app).await;
    let hooks = app.receiver.wait_for(10, Duration::from_secs(15)).await;
    assert_eq!(hooks.len(), 10, "every command got its callback");
    let failed: Vec<_> = hooks
        .iter()
        .filter(|h| h.body["data"]["command_id"] == ids[3].as_str())
        .collect();
    assert_eq!(failed.len(), 1);
    let data = &failed[0].body["data"];
    assert_eq!(data["status"], "failed", "{data}");
    let error = data["result"]["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("undecodable:") && error.contains("command_created_at"),
        "{data}"
    );
    // The outcomes of the last deliveries are written just after they arrive.
    let deadline = Instant::now() + Duration::from_secs(5);
    while app.count("jobs").await > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(app.count("jobs").await, 0, "nothing left to retry");
    let statuses: Vec<(Uuid, String)> =
        sqlx::query_as("SELECT id, status FROM commands ORDER BY id")
            .fetch_all(&app.pool)
            .await
            .expect("statuses");
    for (id, status) in statuses {
        let want = if id == poisoned {
            "failed"
        } else {
            "succeeded"
        };
        assert_eq!(status, want, "{id}");
    }
    stop.cancel();
    worker.await.expect("worker");
}

/// JSON text with the spellings that matter: floats of 15 to 20 significant
/// digits with and without exponents, negative zero, integers beyond 2^53
/// and 2^64, escapes, and nesting.
fn json_text() -> impl Strategy<Value = String> {
    let number = prop_oneof![
        "-?[1-9][0-9]{14,19}",
        ("-?[0-9]\\.[0-9]{14,19}", "[eE][+-]?[0-9]{1,3}").prop_map(|(m, e)| format!("{m}{e}")),
        "-?0\\.[0-9]{15,20}",
        Just("-0.0".to_owned()),
        Just("-0".to_owned()),
        "-?[1-9][0-9]{16,40}",
        "-?[1-9]\\.[0-9]{1,17}[eE][+-]?3[0-2][0-9]",
    ];
    let string = prop_oneof![
        "[a-z ]{0,8}".prop_map(|s| format!("\"{s}\"")),
        Just(r#""\u0000\"\\\/\b\f\n\r\t""#.to_owned()),
        Just(r#""\ud83d\ude00 é \u00e9 \ud800""#.to_owned()),
    ];
    let leaf = prop_oneof![
        4 => number,
        2 => string,
        1 => Just("true".to_owned()),
        1 => Just("null".to_owned()),
    ];
    leaf.prop_recursive(6, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(|v| format!("[{}]", v.join(", "))),
            prop::collection::vec(("[a-z]{1,6}", inner), 0..6).prop_map(|kv| {
                let members: Vec<String> = kv
                    .into_iter()
                    .map(|(k, v)| format!("\"{k}\": {v}"))
                    .collect();
                format!("{{{}}}", members.join(","))
            }),
        ]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arbitrary_json_goes_intake_store_claim_verify_without_quarantine() {
    // intake (the real API) → store (Postgres) → claim (the outbox) → verify
    // (the seal), for generated bodies; nothing runs them but this test.
    let app = api_only(|_| {}).await;
    let token = app.trusted_client("acme").await;
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::from_seed(proptest::test_runner::RngAlgorithm::ChaCha, &[7; 32]),
    );
    let strategy = json_text();
    let mut bodies: Vec<String> = (0..150)
        .map(|_| strategy.new_tree(&mut runner).expect("tree").current())
        .collect();
    bodies.extend(edge_bodies());
    let mut sent = std::collections::HashMap::new();
    for chunk in bodies.chunks(25) {
        let ids = futures_util::future::join_all(chunk.iter().enumerate().map(|(i, b)| {
            let (app, token) = (&app, &token);
            async move { post_raw_id(app, token, raw_command(app, &i.to_string(), b)).await }
        }))
        .await;
        for (id, body) in ids.into_iter().zip(chunk) {
            sent.insert(Uuid::parse_str(&id).expect("uuid"), body.clone());
        }
    }
    let keys = &app.settings.security.job_mac_keys;
    let mut claimed = 0;
    loop {
        let jobs = hookrelay::testing::outbox::claim(&app.pool, 64, Duration::from_secs(60))
            .await
            .expect("claim");
        if jobs.is_empty() {
            break;
        }
        for row in jobs {
            assert!(row.undecodable.is_none(), "{:?}", row.undecodable);
            let hookrelay::jobs::Job::Execute(job) = row.job else {
                panic!("only execute jobs were created")
            };
            let body = &sent[&job.command.id];
            // `"body": null` is no body.
            let want = (body != "null").then_some(body.as_str());
            assert_eq!(job.body.as_deref(), want, "stored unchanged");
            assert_eq!(
                hookrelay::testing::outbox::execute_seal_verifies(keys, &job).expect("keys"),
                Ok(()),
                "seal of {body}"
            );
            claimed += 1;
        }
    }
    assert_eq!(claimed, sent.len());
}
