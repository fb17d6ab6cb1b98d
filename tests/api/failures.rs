//! Failure paths: upstream rejections and outages, receivers that fail or say Gone.

use std::time::Duration;

use serde_json::{json, Value};
use wiremock::matchers::method;
use wiremock::{Mock, ResponseTemplate};

use crate::helpers::{settled, spawn_app, Echo};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_400_fails_without_retry_and_calls_back() {
    let app = spawn_app().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({"error": "bad thing"})))
        .expect(1)
        .mount(&app.upstream)
        .await;
    let token = app.trusted_client("acme").await;
    let id = app
        .post_command_id(&token, &app.command("9", json!({})), None)
        .await;

    let doc = app
        .wait_status(&token, &id, Duration::from_secs(10), settled)
        .await;
    assert_eq!(doc["status"], "failed");
    assert_eq!(doc["result"]["status_code"], 400);
    assert_eq!(doc["result"]["body"], json!({"error": "bad thing"}));
    assert_eq!(doc["callback"]["status"], "delivered");

    let received = app.receiver.received();
    assert_eq!(received.len(), 1);
    assert!(received[0].verified);
    assert_eq!(received[0].body["type"], "command.failed");
    assert_eq!(received[0].body["data"]["status"], "failed");
    assert_eq!(received[0].body["data"]["result"]["status_code"], 400);
    tokio::time::sleep(Duration::from_millis(200)).await;
    app.upstream.verify().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_5xx_is_retried_then_recovers() {
    let app = spawn_app().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(2)
        .expect(2)
        .mount(&app.upstream)
        .await;
    Mock::given(method("POST"))
        .respond_with(Echo::new(200))
        .expect(1)
        .mount(&app.upstream)
        .await;
    let token = app.trusted_client("acme").await;
    let id = app
        .post_command_id(&token, &app.command("5", json!({"x": 1})), None)
        .await;
    let doc = app
        .wait_status(&token, &id, Duration::from_secs(10), settled)
        .await;
    assert_eq!(doc["status"], "succeeded");
    assert_eq!(doc["result"]["status_code"], 200);
    app.upstream.verify().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_exhausts_attempts_then_fails() {
    // Nothing listens on the upstream port: connection errors every time.
    let app = crate::helpers::spawn_app_with(|s| {
        let httpbin = s.integrations.get_mut("httpbin").expect("httpbin");
        httpbin.base_url = "http://127.0.0.1:9".parse().expect("url");
    })
    .await;
    let token = app.trusted_client("acme").await;
    let id = app
        .post_command_id(&token, &app.command("1", json!({})), None)
        .await;
    let doc = app
        .wait_status(&token, &id, Duration::from_secs(15), settled)
        .await;
    assert_eq!(doc["status"], "failed");
    assert_eq!(doc["result"]["status_code"], Value::Null);
    assert!(
        doc["result"]["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("connect")),
        "{doc}"
    );
    assert_eq!(app.receiver.received()[0].body["type"], "command.failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_always_500_is_dead_lettered_after_the_schedule() {
    let app = spawn_app().await;
    Mock::given(method("POST"))
        .respond_with(Echo::new(200))
        .mount(&app.upstream)
        .await;
    app.receiver.always(500);
    let token = app.trusted_client("acme").await;
    let id = app
        .post_command_id(&token, &app.command("1", json!({})), None)
        .await;

    let doc = app
        .wait_status(&token, &id, Duration::from_secs(15), settled)
        .await;
    assert_eq!(doc["status"], "succeeded");
    assert_eq!(doc["callback"]["status"], "dead_lettered");
    // Schedule [0.05 s, 0.1 s]: the first attempt plus one per delay.
    assert_eq!(doc["callback"]["attempts"], 3);

    let received = app.receiver.received();
    assert_eq!(received.len(), 3);
    assert!(received.iter().all(|r| r.verified));
    assert!(
        received
            .iter()
            .all(|r| r.webhook_id == received[0].webhook_id),
        "webhook-id is stable across retries"
    );
    let gaps: Vec<Duration> = received.windows(2).map(|w| w[1].at - w[0].at).collect();
    assert!(
        gaps[0] >= Duration::from_millis(35),
        "first retry waits ~50 ms ±20%: {gaps:?}"
    );
    assert!(
        gaps[1] >= Duration::from_millis(75),
        "second retry waits ~100 ms ±20%: {gaps:?}"
    );

    let attempts: Value = app
        .get_json(&token, &format!("/v1/commands/{id}/attempts"))
        .await;
    let data = attempts["data"].as_array().expect("data");
    assert_eq!(data.len(), 3);
    for (i, a) in data.iter().enumerate() {
        assert_eq!(a["attempt"], i + 1);
        assert_eq!(a["response_status"], 500);
        assert_eq!(a["response_body"], "receiver says 500");
        assert_eq!(a["error"], "HTTP 500");
        assert!(a["duration_ms"].as_i64().is_some());
        assert!(a["started_at"].as_str().is_some());
    }
    let reason: Option<String> = sqlx::query_scalar("SELECT dead_letter_reason FROM deliveries")
        .fetch_one(&app.pool)
        .await
        .expect("reason");
    assert_eq!(reason.as_deref(), Some("exhausted"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_410_stops_after_one_attempt() {
    let app = spawn_app().await;
    Mock::given(method("POST"))
        .respond_with(Echo::new(200))
        .mount(&app.upstream)
        .await;
    app.receiver.always(410);
    let token = app.trusted_client("acme").await;
    let id = app
        .post_command_id(&token, &app.command("1", json!({})), None)
        .await;
    let doc = app
        .wait_status(&token, &id, Duration::from_secs(10), settled)
        .await;
    assert_eq!(doc["callback"]["status"], "dead_lettered");
    assert_eq!(doc["callback"]["attempts"], 1);
    // Longer than the whole retry schedule: no further attempt may arrive.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.receiver.received().len(), 1);
    let reason: Option<String> = sqlx::query_scalar("SELECT dead_letter_reason FROM deliveries")
        .fetch_one(&app.pool)
        .await
        .expect("reason");
    assert_eq!(reason.as_deref(), Some("gone"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_that_recovers_gets_the_same_webhook_id() {
    let app = spawn_app().await;
    Mock::given(method("POST"))
        .respond_with(Echo::new(200))
        .mount(&app.upstream)
        .await;
    app.receiver.script(&[503, 302]);
    let token = app.trusted_client("acme").await;
    let id = app
        .post_command_id(&token, &app.command("1", json!({})), None)
        .await;
    let doc = app
        .wait_status(&token, &id, Duration::from_secs(10), settled)
        .await;
    assert_eq!(doc["callback"]["status"], "delivered");
    assert_eq!(
        doc["callback"]["attempts"], 3,
        "503, then 302 (not followed), then 200"
    );
    let received = app.receiver.received();
    assert_eq!(received.len(), 3);
    assert!(received
        .iter()
        .all(|r| r.verified && r.webhook_id == received[0].webhook_id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_slow_receiver_gets_at_most_its_host_limit_in_flight() {
    let app = crate::helpers::spawn_app_with(|s| s.delivery.max_in_flight_per_host = 2).await;
    Mock::given(method("POST"))
        .respond_with(Echo::new(200))
        .mount(&app.upstream)
        .await;
    app.receiver.delay(Duration::from_millis(300));
    let token = app.trusted_client("acme").await;
    let mut ids = Vec::new();
    for i in 0..6 {
        let resp = app
            .post_command(&token, &app.command(&i.to_string(), json!({})), None)
            .await;
        ids.push(
            resp.json::<Value>().await.expect("json")["id"]
                .as_str()
                .expect("id")
                .to_owned(),
        );
    }
    for id in &ids {
        let doc = app
            .wait_status(&token, id, Duration::from_secs(20), settled)
            .await;
        assert_eq!(doc["callback"]["status"], "delivered");
        assert_eq!(
            doc["callback"]["attempts"], 1,
            "waiting for the host spends no attempt"
        );
    }
    let mut arrivals: Vec<_> = app.receiver.received().iter().map(|r| r.at).collect();
    arrivals.sort();
    assert_eq!(arrivals.len(), 6);
    for w in arrivals.windows(3) {
        // With 2 in flight and 300 ms each, a third request cannot start
        // before one of the first two has been answered.
        assert!(
            w[2] - w[0] >= Duration::from_millis(250),
            "more than 2 in flight: {arrivals:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_retry_after_is_honoured_and_capped() {
    // Schedule delays are 50 and 100 ms; the receiver asks for more.
    let app = crate::helpers::spawn_app_with(|s| s.delivery.max_retry_after_s = 2).await;
    Mock::given(method("POST"))
        .respond_with(Echo::new(200))
        .mount(&app.upstream)
        .await;
    app.receiver.script(&[429, 503]);
    app.receiver.retry_after("1");
    let token = app.trusted_client("acme").await;
    let id = app
        .post_command_id(&token, &app.command("1", json!({})), None)
        .await;
    let doc = app
        .wait_status(&token, &id, Duration::from_secs(15), settled)
        .await;
    assert_eq!(doc["callback"]["status"], "delivered");
    let first: Vec<_> = app.receiver.received().iter().map(|r| r.at).collect();
    assert_eq!(first.len(), 3);
    assert!(
        first[1] - first[0] >= Duration::from_millis(950),
        "429 Retry-After: 1 waited: {:?}",
        first[1] - first[0]
    );
    assert!(
        first[2] - first[1] >= Duration::from_millis(950),
        "503 Retry-After: 1 waited"
    );

    // A huge Retry-After is capped at delivery.max_retry_after_s (2 s).
    app.receiver.script(&[503]);
    app.receiver.retry_after("86400");
    let id = app
        .post_command_id(&token, &app.command("2", json!({})), None)
        .await;
    let doc = app
        .wait_status(&token, &id, Duration::from_secs(15), settled)
        .await;
    assert_eq!(doc["callback"]["status"], "delivered");
    let all = app.receiver.received();
    let gap = all[4].at - all[3].at;
    assert!(
        gap >= Duration::from_millis(1_900) && gap < Duration::from_secs(6),
        "capped wait: {gap:?}"
    );
}

/// A `Retry-After` too large for 64 bits means "longer than the cap": the
/// next attempt waits `delivery.max_retry_after_s`, as for `Retry-After: 100000`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_retry_after_beyond_64_bits_waits_the_cap() {
    let app = crate::helpers::spawn_app_with(|s| s.delivery.max_retry_after_s = 2).await;
    Mock::given(method("POST"))
        .respond_with(Echo::new(200))
        .mount(&app.upstream)
        .await;
    app.receiver.script(&[429]);
    app.receiver.retry_after("99999999999999999999");
    let token = app.trusted_client("acme").await;
    let id = app
        .post_command_id(&token, &app.command("1", json!({})), None)
        .await;
    let doc = app
        .wait_status(&token, &id, Duration::from_secs(15), settled)
        .await;
    assert_eq!(doc["callback"]["status"], "delivered", "{doc}");
    let got = app.receiver.received();
    assert_eq!(got.len(), 2, "one 429, then the delivery");
    let gap = got[1].at - got[0].at;
    assert!(
        gap >= Duration::from_millis(1_900) && gap < Duration::from_secs(6),
        "waited the 2 s cap: {gap:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_bytes_from_vendor_and_receiver_do_not_wedge_the_pipeline() {
    let app = spawn_app().await;
    // JSON with an escaped NUL (Postgres jsonb would refuse it; the vendor's
    // text is stored as it is).
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200).set_body_raw(r#"{"note":"a\u0000b"}"#, "application/json"),
        )
        .mount(&app.upstream)
        .await;
    let token = app.trusted_client("acme").await;
    // A receiver answering a binary body with NUL bytes, once, then 200.
    app.receiver.script(&[500]);
    app.receiver.body(b"bin\0ary\xff");
    let id = app
        .post_command_id(&token, &app.command("1", json!({})), None)
        .await;
    let doc = app
        .wait_status(&token, &id, Duration::from_secs(10), settled)
        .await;
    assert_eq!(doc["status"], "succeeded");
    assert_eq!(doc["result"]["body"]["note"], "a\u{0}b");
    assert_eq!(doc["callback"]["status"], "delivered");
    assert_eq!(doc["callback"]["attempts"], 2);
    let attempts: Value = app
        .get_json(&token, &format!("/v1/commands/{id}/attempts"))
        .await;
    assert_eq!(
        attempts["data"][0]["response_body"],
        "bin\u{FFFD}ary\u{FFFD}"
    );
}
