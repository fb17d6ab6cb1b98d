//! Bad input: clear problem documents naming the field, and nothing written.

use serde_json::{json, Value};

use crate::helpers::{spawn_app, spawn_app_with, TestApp};

async fn expect_problem(resp: reqwest::Response, status: u16, field: Option<&str>) -> Value {
    assert_eq!(resp.status(), status);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let problem: Value = resp.json().await.expect("problem json");
    assert_eq!(problem["status"], status);
    assert!(problem["type"]
        .as_str()
        .is_some_and(|t| t.starts_with("urn:hookrelay:problem:")));
    assert!(problem["title"].is_string() && problem["detail"].is_string());
    if let Some(field) = field {
        assert_eq!(problem["field"], field, "{problem}");
    }
    problem
}

async fn assert_nothing_written(app: &TestApp) {
    assert_eq!(app.count("commands").await, 0);
    assert_eq!(app.count("jobs").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_commands_name_the_field_and_write_nothing() {
    let app = spawn_app().await;
    let token = app.token("acme", &["client"]);
    let good = app.command("1", json!({}));
    let with = |k: &str, v: Value| {
        let mut b = good.clone();
        b[k] = v;
        b
    };
    let cases: Vec<(Value, u16, &str)> = vec![
        (with("integration", json!("nope")), 422, "integration"),
        (with("operation", json!("nope")), 422, "operation"),
        (with("params", json!({})), 422, "params.thing_id"),
        (
            with("params", json!({"thing_id": ""})),
            422,
            "params.thing_id",
        ),
        (
            with("params", json!({"thing_id": "1", "extra": "x"})),
            422,
            "params.extra",
        ),
        (
            with("params", json!({"thing_id": {"a": 1}})),
            422,
            "params.thing_id",
        ),
        (
            with("callback_url", json!("ftp://partner.example/hook")),
            422,
            "callback_url",
        ),
        (
            with("callback_url", json!("not a url")),
            422,
            "callback_url",
        ),
        (
            with(
                "callback_url",
                json!(format!("https://p.example/{}", "a".repeat(3000))),
            ),
            422,
            "callback_url",
        ),
        (with("callback_url", json!(42)), 422, "callback_url"),
        // Params fill the path: NUL has no place there. (In `body` it is
        // kept as sent: tests/api/numbers.rs.)
        (
            with("params", json!({"thing_id": "nul\u{0}byte"})),
            422,
            "params.thing_id",
        ),
        (with("surprise", json!(1)), 422, "surprise"),
    ];
    for (body, status, field) in cases {
        let resp = app.post_command(&token, &body, None).await;
        expect_problem(resp, status, Some(field)).await;
    }
    let mut missing = good.clone();
    missing
        .as_object_mut()
        .expect("object")
        .remove("callback_url");
    expect_problem(
        app.post_command(&token, &missing, None).await,
        422,
        Some("callback_url"),
    )
    .await;

    let long_key = "k".repeat(256);
    expect_problem(
        app.post_command(&token, &good, Some(&long_key)).await,
        422,
        Some("Idempotency-Key"),
    )
    .await;
    assert_nothing_written(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_oversized_and_non_json_bodies_are_refused() {
    let app = spawn_app().await;
    let token = app.token("acme", &["client"]);
    let url = format!("{}/v1/commands", app.address);
    let send = |body: Vec<u8>, ct: &'static str| {
        app.http
            .post(&url)
            .bearer_auth(&token)
            .header("content-type", ct)
            .body(body)
            .send()
    };
    expect_problem(
        send(b"{\"integration\": ".to_vec(), "application/json")
            .await
            .expect("send"),
        400,
        None,
    )
    .await;
    expect_problem(
        send(b"[1, 2]".to_vec(), "application/json")
            .await
            .expect("send"),
        422,
        None,
    )
    .await;
    expect_problem(
        send(Vec::new(), "application/json").await.expect("send"),
        400,
        None,
    )
    .await;
    expect_problem(
        send(
            b"integration=x".to_vec(),
            "application/x-www-form-urlencoded",
        )
        .await
        .expect("send"),
        415,
        None,
    )
    .await;

    let mut big = app.command("1", json!({"blob": "x".repeat(1024 * 1024)}));
    big["params"] = json!({"thing_id": "1"});
    let big = serde_json::to_vec(&big).expect("json");
    assert!(big.len() > 1024 * 1024);
    expect_problem(
        send(big, "application/json").await.expect("send"),
        413,
        None,
    )
    .await;
    assert_nothing_written(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_callbacks_are_refused_unless_allowed() {
    let app = spawn_app_with(|s| s.security.allow_private_callbacks = false).await;
    let token = app.token("acme", &["client"]);
    for url in [
        "http://localhost:9000/hook",
        "http://127.0.0.1:9000/hook",
        "http://[::1]/hook",
        "http://10.1.2.3/hook",
        "http://192.168.0.10/hook",
        "http://169.254.169.254/latest/meta-data",
    ] {
        let mut body = app.command("1", json!({}));
        body["callback_url"] = json!(url);
        let resp = app.post_command(&token, &body, None).await;
        expect_problem(resp, 422, Some("callback_url")).await;
    }
    assert_nothing_written(&app).await;
}

/// Dead-letter filters and times Postgres cannot take answer 422 naming the
/// field, not a database error (500).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_filters_postgres_cannot_hold_are_422() {
    let app = spawn_app().await;
    let admin = app.token("ops", &["admin"]);
    for (query, field) in [
        ("?client_id=a%00b", "client_id"),
        ("?integration=%00", "integration"),
        (
            "?cursor=-300000000000000000_00000000-0000-0000-0000-000000000000",
            "cursor",
        ),
    ] {
        let resp = app.get(&admin, &format!("/v1/dead-letters{query}")).await;
        expect_problem(resp, 422, Some(field)).await;
    }
    for (body, field) in [
        (json!({"since": "-5000-01-01T00:00:00Z"}), "since"),
        (json!({"until": "+20000-01-01T00:00:00Z"}), "until"),
    ] {
        let resp = app
            .http
            .post(format!("{}/v1/dead-letters/replay", app.address))
            .bearer_auth(&admin)
            .json(&body)
            .send()
            .await
            .expect("replay");
        expect_problem(resp, 422, Some(field)).await;
    }
}

/// An upstream answer nested as deep as serde_json will parse (127 levels)
/// is kept as text: stored as JSON one level down, it could never be read
/// back, and the command's status and every list page holding it would
/// answer 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deeply_nested_upstream_answer_is_kept_as_text() {
    use wiremock::matchers::method;
    use wiremock::{Mock, ResponseTemplate};

    let app = spawn_app().await;
    let deep = format!("{}{}", "[".repeat(127), "]".repeat(127));
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(deep.clone(), "application/json"))
        .mount(&app.upstream)
        .await;
    let token = app.trusted_client("acme").await;
    let id = app
        .post_command_id(&token, &app.command("deep", json!({})), None)
        .await;
    let doc = app
        .wait_status(&token, &id, std::time::Duration::from_secs(10), |d| {
            d["status"] == "succeeded"
        })
        .await;
    assert_eq!(doc["result"]["body"], deep.as_str(), "{doc}");
    let list = app.get(&token, "/v1/commands").await;
    assert_eq!(list.status(), 200);
    let reader = app.token("audit", &["reader"]);
    assert_eq!(app.get(&reader, "/v1/commands").await.status(), 200);
}

/// A key sent twice answers 422 naming that key, not the whole body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicated_key_is_named() {
    let app = spawn_app().await;
    let token = app.token("acme", &["client"]);
    let send = |path: &str, body: String| {
        app.http
            .post(format!("{}{path}", app.address))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let command = format!(
        r#"{{"integration": "httpbin", "operation": "create_thing", "operation": "ping",
             "params": {{"thing_id": "1"}}, "callback_url": "{}"}}"#,
        app.receiver.url()
    );
    let resp = send("/v1/commands", command).await.expect("send");
    expect_problem(resp, 422, Some("operation")).await;
    let batch = r#"{"queries": [{"integration": "httpbin", "query": "get_json", "query": "x"}]}"#;
    let resp = send("/v1/queries/batch", batch.to_owned())
        .await
        .expect("send");
    expect_problem(resp, 422, Some("queries[0].query")).await;
    assert_nothing_written(&app).await;
}
