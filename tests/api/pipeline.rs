//! The main job end to end: command → outbox → upstream → signed callback.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{json, Value};
use wiremock::matchers::{body_json, header, method, path, path_regex};
use wiremock::Mock;

use crate::helpers::{settled, spawn_app, Echo};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_commands_succeed_and_deliver_verified_callbacks() {
    let app = spawn_app().await;
    Mock::given(method("POST"))
        .and(path_regex(r"^/anything/things/[0-9]+$"))
        .respond_with(Echo::new(200))
        .expect(50)
        .mount(&app.upstream)
        .await;
    let token = app.trusted_client("acme").await;

    let posts = (0..50).map(|i| {
        let body = app.command(&i.to_string(), json!({"n": i}));
        let token = token.clone();
        let app = &app;
        async move {
            let resp = app.post_command(&token, &body, None).await;
            assert_eq!(resp.status(), 202);
            let location = resp.headers()["location"]
                .to_str()
                .expect("location")
                .to_owned();
            assert!(resp.headers().contains_key("retry-after"));
            let doc: Value = resp.json().await.expect("json");
            assert_eq!(doc["status"], "accepted");
            assert_eq!(
                location,
                format!("/v1/commands/{}", doc["id"].as_str().expect("id"))
            );
            (i, doc["id"].as_str().expect("id").to_owned())
        }
    });
    let ids: Vec<(i32, String)> = futures_util::future::join_all(posts).await;

    let received = app.receiver.wait_for(50, Duration::from_secs(30)).await;
    assert_eq!(received.len(), 50, "every command is called back");
    assert!(
        received.iter().all(|r| r.verified),
        "standardwebhooks verifies every callback"
    );
    let webhook_ids: HashSet<&str> = received.iter().map(|r| r.webhook_id.as_str()).collect();
    assert_eq!(webhook_ids.len(), 50, "one webhook-id per delivery");

    for (i, id) in &ids {
        let doc = app
            .wait_status(&token, id, Duration::from_secs(10), settled)
            .await;
        assert_eq!(doc["status"], "succeeded");
        assert_eq!(doc["callback"]["status"], "delivered");
        assert_eq!(doc["callback"]["attempts"], 1);
        assert_eq!(doc["result"]["status_code"], 200);
        assert_eq!(
            doc["result"]["body"]["path"],
            format!("/anything/things/{i}")
        );
        assert_eq!(doc["result"]["body"]["received"], json!({"n": i}));
        assert_eq!(
            doc["result"]["body"]["idempotency_key"],
            id.as_str(),
            "command id forwarded upstream"
        );

        let hook = received
            .iter()
            .find(|r| r.body["data"]["command_id"] == id.as_str())
            .expect("callback for command");
        assert_eq!(
            hook.webhook_id,
            doc["callback"]["webhook_id"].as_str().expect("webhook id")
        );
        assert_eq!(hook.body["type"], "command.succeeded");
        assert_eq!(hook.body["data"]["status"], "succeeded");
        assert_eq!(hook.body["data"]["integration"], "httpbin");
        assert_eq!(hook.body["data"]["operation"], "create_thing");
        assert_eq!(
            hook.body["data"]["result"], doc["result"],
            "callback carries the upstream response"
        );
        assert!(hook.body["timestamp"]
            .as_str()
            .is_some_and(|t| chrono::DateTime::parse_from_rfc3339(t).is_ok()));
    }
    assert_eq!(app.count("jobs").await, 0, "finished jobs leave the outbox");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_idempotency_key_same_body_is_one_command() {
    let app = spawn_app().await;
    Mock::given(method("POST"))
        .respond_with(Echo::new(201))
        .expect(1)
        .mount(&app.upstream)
        .await;
    let token = app.trusted_client("acme").await;
    let body = app.command("7", json!({"a": 1, "b": [1, 2]}));

    let first = app.post_command(&token, &body, Some("order-7")).await;
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.expect("json");

    // Concurrent retries of the same request, as a flaky client would send them.
    let again = futures_util::future::join_all(
        (0..5).map(|_| app.post_command(&token, &body, Some("order-7"))),
    )
    .await;
    for resp in again {
        assert_eq!(resp.status(), 202);
        assert_eq!(resp.headers()["idempotent-replayed"], "true");
        let doc: Value = resp.json().await.expect("json");
        assert_eq!(doc["id"], first["id"]);
    }

    // Same key, key order shuffled: still the same request.
    let shuffled = json!({
        "callback_url": body["callback_url"], "body": {"b": [1, 2], "a": 1},
        "params": {"thing_id": "7"}, "operation": "create_thing", "integration": "httpbin",
    });
    let resp = app.post_command(&token, &shuffled, Some("order-7")).await;
    assert_eq!(resp.status(), 202);
    assert_eq!(resp.json::<Value>().await.expect("json")["id"], first["id"]);

    let id = first["id"].as_str().expect("id");
    let doc = app
        .wait_status(&token, id, Duration::from_secs(10), settled)
        .await;
    assert_eq!(doc["status"], "succeeded");
    assert_eq!(
        doc["result"]["body"]["idempotency_key"], id,
        "the command id, not the client's key, goes upstream"
    );
    assert_eq!(app.count("commands").await, 1);
    // Give a wrongly enqueued second job time to call the upstream before verifying expect(1).
    tokio::time::sleep(Duration::from_millis(300)).await;
    app.upstream.verify().await;
    assert_eq!(app.receiver.received().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_idempotency_key_other_body_is_409_and_keys_are_per_client() {
    let app = spawn_app().await;
    Mock::given(method("POST"))
        .respond_with(Echo::new(200))
        .mount(&app.upstream)
        .await;
    let a = app.token("client-a", &["client"]);
    let b = app.token("client-b", &["client"]);

    let body = app.command("1", json!({"v": 1}));
    let first = app.post_command(&a, &body, Some("k1")).await;
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.expect("json");

    let other = app.command("1", json!({"v": 2}));
    let resp = app.post_command(&a, &other, Some("k1")).await;
    assert_eq!(resp.status(), 409);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let problem: Value = resp.json().await.expect("json");
    assert_eq!(problem["status"], 409);

    let resp = app.post_command(&b, &body, Some("k1")).await;
    assert_eq!(resp.status(), 202, "another client's key space is separate");
    let doc: Value = resp.json().await.expect("json");
    assert_ne!(doc["id"], first["id"]);
    assert_eq!(app.count("commands").await, 2);
}

/// Two tenants pick the same `Idempotency-Key` for the same integration: the
/// vendor (one credential for both) must see two different keys, each stable
/// across that command's retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_with_one_key_reach_the_vendor_with_distinct_stable_keys() {
    let app = spawn_app().await;
    // The first two calls fail retryably, so at least one command is retried.
    Mock::given(method("POST"))
        .respond_with(wiremock::ResponseTemplate::new(503))
        .up_to_n_times(2)
        .mount(&app.upstream)
        .await;
    Mock::given(method("POST"))
        .respond_with(Echo::new(200))
        .mount(&app.upstream)
        .await;
    let acme = app.trusted_client("acme").await;
    let globex = app.trusted_client("globex").await;
    let body = app.command("42", json!({"order": 42}));
    let acme_id = app.post_command_id(&acme, &body, Some("order-42")).await;
    let globex_id = app.post_command_id(&globex, &body, Some("order-42")).await;
    assert_ne!(acme_id, globex_id);
    for (token, id) in [(&acme, &acme_id), (&globex, &globex_id)] {
        let doc = app
            .wait_status(token, id, Duration::from_secs(15), settled)
            .await;
        assert_eq!(doc["status"], "succeeded", "{doc}");
        assert_eq!(doc["result"]["body"]["idempotency_key"], id.as_str());
    }

    let keys: Vec<String> = app
        .upstream
        .received_requests()
        .await
        .expect("requests recorded")
        .iter()
        .map(|r| {
            r.headers
                .get("idempotency-key")
                .and_then(|v| v.to_str().ok())
                .expect("every upstream call carries an Idempotency-Key")
                .to_owned()
        })
        .collect();
    assert_eq!(
        keys.len(),
        4,
        "two failed tries and two successes: {keys:?}"
    );
    assert!(
        keys.iter().all(|k| *k == acme_id || *k == globex_id),
        "each call carries its command's id, never the client's key: {keys:?}"
    );
    assert!(
        keys.contains(&acme_id) && keys.contains(&globex_id),
        "{keys:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_request_is_built_from_the_declared_operation_with_credentials() {
    // The credential value lives only in the environment, never in config files.
    std::env::set_var("HOOKRELAY_TEST_VENDOR_TOKEN", "Bearer vendor-secret-42");
    let app = crate::helpers::spawn_app_with(|s| {
        s.integrations
            .get_mut("httpbin")
            .expect("httpbin")
            .credential = Some(hookrelay::config::CredentialSettings {
            header: "Authorization".into(),
            value_env: "HOOKRELAY_TEST_VENDOR_TOKEN".into(),
            value: None,
        });
    })
    .await;
    Mock::given(method("DELETE"))
        .and(path("/anything/things/a%2Fb%20c"))
        .and(header("authorization", "Bearer vendor-secret-42"))
        .and(header("content-type", "application/json"))
        .and(body_json(json!({"reason": "cleanup"})))
        .respond_with(Echo::new(200))
        .expect(1)
        .mount(&app.upstream)
        .await;
    let token = app.trusted_client("acme").await;
    let body = json!({
        "integration": "httpbin", "operation": "delete_thing",
        "params": {"thing_id": "a/b c"}, "body": {"reason": "cleanup"},
        "callback_url": app.receiver.url(),
    });
    let resp = app.post_command(&token, &body, None).await;
    assert_eq!(resp.status(), 202);
    let id = resp.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let doc = app
        .wait_status(&token, &id, Duration::from_secs(10), settled)
        .await;
    assert_eq!(doc["status"], "succeeded", "{doc}");
    assert_eq!(doc["result"]["body"]["method"], "DELETE");
    app.upstream.verify().await;
}
