//! Upstream resilience: circuit breaker, throttling (configured and adaptive),
//! retry identity and fallbacks, against wiremock vendors.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hookrelay::config::{FallbackSettings, IntegrationSettings};
use serde_json::{json, Value};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use crate::helpers::{settled, spawn_app_with, Echo, TestApp};

/// A vendor that records when each request arrived and its Idempotency-Key,
/// and answers from a script (then 200 with the echo body).
#[derive(Clone, Default)]
struct Vendor {
    seen: Arc<Mutex<Vec<(Instant, String)>>>,
    script: Arc<Mutex<Vec<ResponseTemplate>>>,
}

impl Respond for Vendor {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        let key = req
            .headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        self.seen.lock().expect("lock").push((Instant::now(), key));
        let mut script = self.script.lock().expect("lock");
        if script.is_empty() {
            Echo::new(200).respond(req)
        } else {
            script.remove(0)
        }
    }
}

impl Vendor {
    fn times(&self) -> Vec<Instant> {
        self.seen
            .lock()
            .expect("lock")
            .iter()
            .map(|(t, _)| *t)
            .collect()
    }
}

async fn send(app: &TestApp, token: &str, thing: &str) -> String {
    app.post_command_id(token, &app.command(thing, json!({"t": thing})), None)
        .await
}

fn httpbin(s: &mut hookrelay::config::Settings) -> &mut IntegrationSettings {
    s.integrations.get_mut("httpbin").expect("httpbin")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_opens_blocks_calls_and_closes_after_a_successful_probe() {
    let app = spawn_app_with(|s| {
        let h = httpbin(s);
        // Only 3 calls fail in all, so 4 tries always suffice: a command that
        // fails here spent tries while waiting on the open breaker.
        h.max_attempts = 4;
        h.breaker.min_calls = 3;
        h.breaker.failure_rate = 0.5;
        h.breaker.cool_down_s = 1.0;
        h.breaker.half_open_probes = 1;
    })
    .await;
    let vendor = Vendor::default();
    *vendor.script.lock().expect("lock") = (0..3).map(|_| ResponseTemplate::new(503)).collect();
    Mock::given(method("POST"))
        .respond_with(vendor.clone())
        .mount(&app.upstream)
        .await;
    let token = app.token("acme", &["client"]);
    let admin = app.token("root", &["admin"]);
    app.trust_client(&token).await;

    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(send(&app, &token, &i.to_string()).await);
    }
    // The three failures open the breaker; the admin view shows it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let opened_at = loop {
        let view: Value = app.get_json(&admin, "/v1/admin/integrations").await;
        if view["data"][0]["breaker"] == "open" {
            assert_eq!(view["data"][0]["name"], "httpbin");
            break Instant::now();
        }
        assert!(Instant::now() < deadline, "breaker never opened: {view}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Commands queued while it is open wait without spending attempts.
    for i in 3..6 {
        ids.push(send(&app, &token, &i.to_string()).await);
    }
    for id in &ids {
        let doc = app
            .wait_status(&token, id, Duration::from_secs(20), settled)
            .await;
        assert_eq!(doc["status"], "succeeded", "{doc}");
    }
    let times = vendor.times();
    assert_eq!(
        times.len(),
        3 + 6,
        "3 failures, then one success per command"
    );
    // Calls admitted before it opened may still land just after; none may
    // start while it is open (cool-down 1 s).
    let during = times
        .iter()
        .filter(|t| {
            **t > opened_at + Duration::from_millis(100)
                && **t < opened_at + Duration::from_millis(900)
        })
        .count();
    assert_eq!(
        during, 0,
        "calls reached the vendor while the breaker was open"
    );
    assert!(
        times
            .iter()
            .any(|t| *t >= opened_at + Duration::from_millis(900)),
        "calls resumed after the cool-down"
    );
    let view: Value = app.get_json(&admin, "/v1/admin/integrations").await;
    assert_eq!(view["data"][0]["breaker"], "closed", "{view}");
    assert!(view["data"][0]["p99_ms"].is_number());
    assert_eq!(
        app.get(&token, "/v1/admin/integrations").await.status(),
        403
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_rate_limit_is_never_exceeded() {
    let app = spawn_app_with(|s| {
        let h = httpbin(s);
        h.throttle.rate_per_s = 20;
        h.throttle.burst = 1;
    })
    .await;
    let vendor = Vendor::default();
    Mock::given(method("POST"))
        .respond_with(vendor.clone())
        .mount(&app.upstream)
        .await;
    let token = app.trusted_client("acme").await;
    let ids = futures_util::future::join_all((0..45).map(|i| {
        let (app, token) = (&app, token.clone());
        async move { send(app, &token, &i.to_string()).await }
    }))
    .await;
    for id in &ids {
        app.wait_status(&token, id, Duration::from_secs(30), settled)
            .await;
    }
    let mut times = vendor.times();
    times.sort();
    assert_eq!(times.len(), 45);
    for w in times.windows(21) {
        // 21 calls at 20/s with a burst of 1 span at least 1 s.
        assert!(
            w[20] - w[0] >= Duration::from_millis(950),
            "faster than 20/s: {:?}",
            w[20] - w[0]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vendor_rate_limit_headers_make_the_next_calls_wait() {
    let app = spawn_app_with(|_| {}).await;
    let vendor = Vendor::default();
    *vendor.script.lock().expect("lock") = vec![ResponseTemplate::new(200)
        .insert_header("x-ratelimit-remaining", "0")
        .insert_header("x-ratelimit-reset", "1")
        .set_body_json(json!({"ok": true}))];
    Mock::given(method("POST"))
        .respond_with(vendor.clone())
        .mount(&app.upstream)
        .await;
    let token = app.trusted_client("acme").await;
    let first = send(&app, &token, "1").await;
    app.wait_status(&token, &first, Duration::from_secs(10), settled)
        .await;
    let second = send(&app, &token, "2").await;
    let doc = app
        .wait_status(&token, &second, Duration::from_secs(10), settled)
        .await;
    assert_eq!(doc["status"], "succeeded");
    let times = vendor.times();
    assert!(
        times[1] - times[0] >= Duration::from_millis(900),
        "waited for the vendor's reset: {:?}",
        times[1] - times[0]
    );

    // 429 with Retry-After: the command waits and then succeeds, on one key.
    *vendor.script.lock().expect("lock") =
        vec![ResponseTemplate::new(429).insert_header("retry-after", "1")];
    let third = send(&app, &token, "3").await;
    let doc = app
        .wait_status(&token, &third, Duration::from_secs(10), settled)
        .await;
    assert_eq!(doc["status"], "succeeded");
    let seen = vendor.seen.lock().expect("lock").clone();
    let (t429, t_ok) = (seen[2].0, seen[3].0);
    assert!(
        t_ok - t429 >= Duration::from_millis(900),
        "Retry-After honoured"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_retry_of_a_command_carries_the_same_idempotency_key() {
    let app = spawn_app_with(|s| httpbin(s).max_attempts = 4).await;
    let vendor = Vendor::default();
    *vendor.script.lock().expect("lock") = vec![
        ResponseTemplate::new(503),
        ResponseTemplate::new(500),
        ResponseTemplate::new(408),
    ];
    Mock::given(method("POST"))
        .respond_with(vendor.clone())
        .mount(&app.upstream)
        .await;
    let token = app.trusted_client("acme").await;
    let id = app
        .post_command_id(&token, &app.command("1", json!({})), Some("client-key-9"))
        .await;
    let doc = app
        .wait_status(&token, &id, Duration::from_secs(10), settled)
        .await;
    assert_eq!(doc["status"], "succeeded");
    let keys: Vec<String> = vendor
        .seen
        .lock()
        .expect("lock")
        .iter()
        .map(|(_, k)| k.clone())
        .collect();
    // The command id, not the client's key (which another client may share).
    assert_eq!(keys, vec![id.as_str(); 4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallback_answers_while_the_primary_breaker_is_open_and_says_so() {
    let backup = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(Echo::new(201))
        .expect(1)
        .mount(&backup)
        .await;
    let backup_uri = backup.uri();
    let app = spawn_app_with(move |s| {
        let mut b = httpbin(s).clone();
        b.base_url = backup_uri.parse().expect("url");
        b.operations.retain(|k, _| k == "create_thing");
        b.operations.get_mut("create_thing").expect("op").path =
            "/backup/{thing_id}".parse().expect("template");
        s.integrations.insert("backup".into(), b);
        let h = httpbin(s);
        h.max_attempts = 1;
        h.breaker.min_calls = 1;
        h.breaker.cool_down_s = 60.0;
        h.operations.get_mut("create_thing").expect("op").fallback = Some(FallbackSettings {
            integration: Some("backup".into()),
            operation: Some("create_thing".into()),
            query: None,
            status: None,
            body: None,
        });
    })
    .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503))
        .expect(1)
        .mount(&app.upstream)
        .await;
    let token = app.trusted_client("acme").await;
    let first = send(&app, &token, "1").await;
    let doc = app
        .wait_status(&token, &first, Duration::from_secs(10), settled)
        .await;
    assert_eq!(
        doc["status"], "failed",
        "the call that opened the breaker failed"
    );

    let second = send(&app, &token, "2").await;
    let doc = app
        .wait_status(&token, &second, Duration::from_secs(10), settled)
        .await;
    assert_eq!(doc["status"], "succeeded", "{doc}");
    assert_eq!(doc["result"]["fallback"], true);
    assert_eq!(doc["result"]["body"]["path"], "/backup/2");
    let hook = app
        .receiver
        .received()
        .into_iter()
        .find(|r| r.body["data"]["command_id"] == second.as_str())
        .expect("callback");
    assert!(hook.verified);
    assert_eq!(
        hook.body["data"]["result"]["fallback"], true,
        "the callback says it came from the fallback"
    );
    app.upstream.verify().await;
    backup.verify().await;
}

/// A vendor's rate-limit headers pause its calls for at most
/// `throttle.max_pause_s`: a `Retry-After` of u64::MAX seconds on a 429 (which
/// used to overflow and panic the job after the call) and a reset time sent
/// in milliseconds (read as a Unix time ~54,000 years away, which used to
/// defer every later command that far, durably) each pause for 1 s here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vendor_pauses_are_capped_by_max_pause_s() {
    let app = spawn_app_with(|s| {
        let httpbin = s.integrations.get_mut("httpbin").expect("httpbin");
        httpbin.throttle.max_pause_s = 1;
        s.delivery.max_retry_after_s = 1;
    })
    .await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(429).insert_header("retry-after", "18446744073709551615"),
        )
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&app.upstream)
        .await;
    let reset_ms = (chrono::Utc::now().timestamp_millis() + 60_000).to_string();
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"ok": true}))
                .insert_header("x-ratelimit-remaining", "0")
                .insert_header("x-ratelimit-reset", reset_ms.as_str()),
        )
        .with_priority(2)
        .mount(&app.upstream)
        .await;
    let token = app.trusted_client("acme").await;
    let first = app
        .post_command_id(&token, &app.command("a", json!({})), None)
        .await;
    let doc = app
        .wait_status(&token, &first, Duration::from_secs(10), settled)
        .await;
    assert_eq!(doc["status"], "succeeded", "{doc}");
    // Nothing remains until the (millisecond) reset: the next call waits,
    // but only max_pause_s.
    let second = app
        .post_command_id(&token, &app.command("b", json!({})), None)
        .await;
    let doc = app
        .wait_status(&token, &second, Duration::from_secs(10), settled)
        .await;
    assert_eq!(doc["status"], "succeeded", "{doc}");
    let far: i64 =
        sqlx::query_scalar("SELECT count(*) FROM jobs WHERE run_at > now() + interval '1 hour'")
            .fetch_one(&app.pool)
            .await
            .expect("jobs");
    assert_eq!(far, 0, "no job deferred beyond the cap");
}
