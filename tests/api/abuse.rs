//! Abuse limits: API rate limits (per IP, per client), header size, slow
//! clients, caps on params and callback URLs, the admin listener, and the
//! SSRF guard on integrations' base URLs.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use hookrelay::startup::ServeRole;
use serde_json::{json, Value};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::{spawn_app_with, spawn_with_settings, test_settings, Echo};

/// Asserts a problem document with `status` and returns it.
async fn problem(resp: reqwest::Response, status: u16) -> (reqwest::header::HeaderMap, Value) {
    assert_eq!(resp.status(), status);
    let headers = resp.headers().clone();
    assert_eq!(
        headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default(),
        "application/problem+json"
    );
    (headers, resp.json().await.expect("problem json"))
}

fn retry_after(headers: &reqwest::header::HeaderMap) -> u64 {
    headers
        .get("retry-after")
        .expect("Retry-After")
        .to_str()
        .expect("ascii")
        .parse()
        .expect("whole seconds")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_over_the_client_limit_gets_429_with_retry_after() {
    // 1 request/s sustained, 3 at once: the 4th in the same second is refused.
    let app = spawn_app_with(|s| {
        s.limits.per_client_per_s = 1;
        s.limits.per_client_burst = 3;
    })
    .await;
    let acme = app.token("acme", &["client"]);
    for i in 1..=3 {
        let resp = app.get(&acme, "/v1/commands").await;
        assert_eq!(resp.status(), 200, "request {i} is within the burst");
    }
    let (headers, doc) = problem(app.get(&acme, "/v1/commands").await, 429).await;
    assert_eq!(doc["type"], "urn:hookrelay:problem:rate-limited");
    let wait = retry_after(&headers);
    assert!((1..=2).contains(&wait), "Retry-After {wait}");

    // Another client has its own allowance; probes are never limited.
    let beta = app.token("beta", &["client"]);
    assert_eq!(app.get(&beta, "/v1/commands").await.status(), 200);
    for _ in 0..5 {
        let resp = app
            .http
            .get(format!("{}/healthz", app.address))
            .send()
            .await;
        assert_eq!(resp.expect("healthz").status(), 200);
    }

    // After Retry-After the client is admitted again.
    tokio::time::sleep(Duration::from_secs(wait)).await;
    assert_eq!(app.get(&acme, "/v1/commands").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_n_queries_costs_n_requests_of_the_client_limit() {
    let app = spawn_app_with(|s| {
        s.limits.per_client_per_s = 1;
        s.limits.per_client_burst = 4;
    })
    .await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"ok": true})))
        .mount(&app.upstream)
        .await;
    let acme = app.token("acme", &["client"]);
    let batch = |n: usize| {
        let queries: Vec<Value> = (0..n)
            .map(|i| json!({"integration": "httpbin", "query": "get_json", "params": {"i": i.to_string()}}))
            .collect();
        app.http
            .post(format!("{}/v1/queries/batch", app.address))
            .bearer_auth(&acme)
            .json(&json!({ "queries": queries }))
            .send()
    };
    // Four queries use the whole burst of four...
    assert_eq!(batch(4).await.expect("batch").status(), 200);
    // ...so the next request in the same second is refused.
    let (headers, _) = problem(app.get(&acme, "/v1/commands").await, 429).await;
    assert!(retry_after(&headers) >= 1);
    // A batch larger than the burst can never pass: 429, not 100 upstream calls.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let resp = batch(5).await.expect("batch");
    assert_eq!(resp.status(), 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_over_the_ip_limit_gets_429_before_authentication() {
    let app = spawn_app_with(|s| {
        s.limits.per_ip_per_s = 1;
        s.limits.per_ip_burst = 2;
    })
    .await;
    for _ in 0..2 {
        let resp = app.get("not-a-token", "/v1/commands").await;
        assert_eq!(resp.status(), 401, "within the burst: the token is checked");
    }
    let (headers, doc) = problem(app.get("not-a-token", "/v1/commands").await, 429).await;
    assert_eq!(doc["type"], "urn:hookrelay:problem:rate-limited");
    assert!(retry_after(&headers) >= 1);
    // A valid token does not help: the address is over its limit.
    let token = app.token("acme", &["client"]);
    assert_eq!(app.get(&token, "/v1/commands").await.status(), 429);
    let metrics = app
        .http
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .expect("metrics");
    assert_eq!(metrics.status(), 200, "/metrics is exempt");
    let text = metrics.text().await.expect("text");
    assert!(
        text.lines()
            .any(|l| l.starts_with("hookrelay_http_rate_limited_total{scope=\"ip\"}")),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_get_431() {
    let app = spawn_app_with(|s| s.server.max_header_bytes = 4096).await;
    let token = app.token("acme", &["client"]);
    let resp = app
        .http
        .get(format!("{}/v1/commands", app.address))
        .bearer_auth(&token)
        .header("x-padding", "a".repeat(5000))
        .send()
        .await
        .expect("send");
    let (_, doc) = problem(resp, 431).await;
    assert_eq!(doc["type"], "urn:hookrelay:problem:headers-too-large");
    assert_eq!(app.get(&token, "/v1/commands").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_sends_its_headers_too_slowly_is_cut_off() {
    let app = spawn_app_with(|s| s.server.client_request_timeout_ms = 300).await;
    let addr = app.address.trim_start_matches("http://").to_owned();
    let answer = tokio::task::spawn_blocking(move || {
        let mut conn = std::net::TcpStream::connect(addr).expect("connect");
        conn.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        // Slowloris: a request line and one header, never the final CRLF.
        conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .expect("write");
        let started = Instant::now();
        let mut buf = Vec::new();
        let _ = conn.read_to_end(&mut buf);
        (
            started.elapsed(),
            String::from_utf8_lossy(&buf).into_owned(),
        )
    })
    .await
    .expect("join");
    let (waited, text) = answer;
    assert!(
        waited < Duration::from_secs(3),
        "the server closed the connection after {waited:?}"
    );
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "408 or a plain close: {text:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn params_and_callback_urls_are_capped() {
    let app = spawn_app_with(|s| {
        s.commands.max_params = 3;
        s.commands.max_params_bytes = 64;
        s.commands.max_callback_url_len = 100;
    })
    .await;
    let token = app.token("acme", &["client"]);
    let mut body = app.command("1", json!({}));
    body["params"] = json!({"thing_id": "1", "a": 1, "b": 2, "c": 3});
    let (_, doc) = problem(app.post_command(&token, &body, None).await, 422).await;
    assert_eq!(doc["field"], "params");

    let mut body = app.command(&"x".repeat(80), json!({}));
    body["callback_url"] = json!(app.receiver.url());
    let (_, doc) = problem(app.post_command(&token, &body, None).await, 422).await;
    assert_eq!(doc["field"], "params");
    assert!(doc["detail"]
        .as_str()
        .is_some_and(|d| d.contains("64 bytes")));

    let mut body = app.command("1", json!({}));
    body["callback_url"] = json!(format!("{}?{}", app.receiver.url(), "q".repeat(100)));
    let (_, doc) = problem(app.post_command(&token, &body, None).await, 422).await;
    assert_eq!(doc["field"], "callback_url");
    assert_eq!(app.count("commands").await, 0, "nothing was written");
}

/// A free loopback port (bound, then released) for `server.admin_bind`.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_admin_bind_metrics_and_admin_routes_move_to_the_admin_listener() {
    let admin_port = free_port();
    let app = spawn_app_with(|s| s.server.admin_bind = format!("127.0.0.1:{admin_port}")).await;
    let admin = format!("http://127.0.0.1:{admin_port}");
    let root = app.token("ops", &["admin"]);
    let client = app.token("acme", &["client"]);

    let get = |url: String, token: Option<String>| {
        let http = app.http.clone();
        async move {
            let mut req = http.get(url);
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            req.send().await.expect("GET").status().as_u16()
        }
    };
    // Main listener: admin paths are gone, the API stays.
    assert_eq!(get(format!("{}/metrics", app.address), None).await, 404);
    // Also when spelled with percent-encoding (the router decodes it).
    for path in [
        "/%6Detrics",
        "/v1/%61dmin/integrations",
        "/v1/dead%2Dletters",
    ] {
        let url = format!("{}{path}", app.address);
        assert_eq!(get(url, Some(root.clone())).await, 404, "{path}");
    }
    for path in ["/v1/admin/integrations", "/v1/dead-letters"] {
        let url = format!("{}{path}", app.address);
        assert_eq!(get(url, Some(root.clone())).await, 404, "{path}");
    }
    let url = format!("{}/v1/commands", app.address);
    assert_eq!(get(url, Some(client.clone())).await, 200);
    // Admin listener: the admin paths and the probes, nothing else.
    assert_eq!(get(format!("{admin}/metrics"), None).await, 200);
    for path in ["/v1/admin/integrations", "/v1/dead-letters"] {
        let url = format!("{admin}{path}");
        assert_eq!(get(url, Some(root.clone())).await, 200, "{path}");
    }
    assert_eq!(get(format!("{admin}/healthz"), None).await, 200);
    let url = format!("{admin}/v1/commands");
    assert_eq!(get(url, Some(client)).await, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_process_serves_its_metrics_on_the_admin_listener() {
    let admin_port = free_port();
    let upstream = MockServer::start().await;
    let mut settings = test_settings(&upstream.uri());
    settings.server.admin_bind = format!("127.0.0.1:{admin_port}");
    let _worker = spawn_with_settings(settings, upstream, ServeRole::Worker).await;
    let resp = reqwest::get(format!("http://127.0.0.1:{admin_port}/metrics"))
        .await
        .expect("scrape");
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.expect("text");
    assert!(text.contains("hookrelay_"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_integration_whose_name_resolves_to_loopback_is_not_called() {
    // This machine's own hostname resolves to a loopback address (/etc/hosts).
    let host = crate::helpers::loopback_hostname().await;
    let upstream = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(Echo::new(200))
        .mount(&upstream)
        .await;
    let mut settings = test_settings(&upstream.uri());
    // Not the development switch (it trusts every integration); the local
    // receiver is allowed by CIDR instead.
    settings.security.allow_private_callbacks = false;
    settings.security.allowed_callback_cidrs = vec!["127.0.0.0/8".to_owned()];
    let httpbin = settings.integrations.get_mut("httpbin").expect("httpbin");
    httpbin.trusted = false;
    httpbin.base_url = format!("http://{host}:{}", upstream.address().port())
        .parse()
        .expect("url");
    let app = spawn_with_settings(settings, MockServer::start().await, ServeRole::All).await;
    let token = app.trusted_client("acme").await;
    let id = app
        .post_command_id(&token, &app.command("1", json!({})), None)
        .await;
    let doc = app
        .wait_status(&token, &id, Duration::from_secs(15), |d| {
            d["status"] == "failed"
        })
        .await;
    let error = doc["result"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("non-public"), "the result says why: {doc:#}");
    assert_eq!(
        upstream.received_requests().await.expect("recorded").len(),
        0,
        "nothing reached the loopback upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_integration_with_a_private_literal_base_url_is_a_config_error() {
    for base in [
        "http://127.0.0.1:9",
        "http://10.0.0.5",
        "http://[::1]:80",
        "http://localhost:8080",
    ] {
        let mut settings = test_settings(base);
        settings.security.allow_private_callbacks = false;
        settings
            .integrations
            .get_mut("httpbin")
            .expect("httpbin")
            .trusted = false;
        let err = settings.validate().expect_err("refused").to_string();
        assert!(
            err.contains("integrations.httpbin.base_url"),
            "{base}: {err}"
        );
        assert!(err.contains("trusted"), "says how to opt out: {err}");
    }
    let mut settings = test_settings("https://api.vendor.example");
    settings
        .integrations
        .get_mut("httpbin")
        .expect("httpbin")
        .trusted = false;
    assert!(settings.validate().is_ok(), "a public name is fine");
    // SPEC's example (a loopback base_url) works as-is in development and
    // tests, which set security.allow_private_callbacks.
    let mut settings = test_settings("http://127.0.0.1:18081");
    settings.security.allow_private_callbacks = true;
    settings
        .integrations
        .get_mut("httpbin")
        .expect("httpbin")
        .trusted = false;
    assert!(
        settings.validate().is_ok(),
        "allow_private_callbacks trusts"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_redirecting_to_an_internal_address_is_not_followed() {
    let internal = MockServer::start().await;
    Mock::given(wiremock::matchers::any())
        .respond_with(ResponseTemplate::new(200))
        .mount(&internal)
        .await;
    let redirector = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(302)
                .insert_header("location", format!("{}/internal", internal.uri()).as_str()),
        )
        .mount(&redirector)
        .await;
    let app = crate::helpers::spawn_app().await;
    Mock::given(method("POST"))
        .respond_with(Echo::new(200))
        .mount(&app.upstream)
        .await;
    let token = app.token("acme", &["client"]);
    let mut body = app.command("1", json!({}));
    body["callback_url"] = json!(format!("{}/hooks", redirector.uri()));
    let id = app.post_command_id(&token, &body, None).await;
    let doc = app
        .wait_status(
            &token,
            &id,
            Duration::from_secs(10),
            crate::helpers::settled,
        )
        .await;
    assert_eq!(doc["callback"]["status"], "dead_lettered");
    let attempts = app
        .get_json(&token, &format!("/v1/commands/{id}/attempts"))
        .await;
    assert_eq!(attempts["data"][0]["response_status"], 302);
    assert_eq!(
        internal.received_requests().await.expect("recorded").len(),
        0,
        "the redirect target was never called"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_response_bodies_are_capped() {
    let app = spawn_app_with(|s| {
        s.delivery.response_body_limit_bytes = 100;
        s.integrations
            .get_mut("httpbin")
            .expect("httpbin")
            .max_response_bytes = 200;
    })
    .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_string("u".repeat(50_000)))
        .mount(&app.upstream)
        .await;
    app.receiver.body("r".repeat(50_000).as_bytes());
    let token = app.trusted_client("acme").await;
    let id = app
        .post_command_id(&token, &app.command("1", json!({})), None)
        .await;
    let doc = app
        .wait_status(
            &token,
            &id,
            Duration::from_secs(10),
            crate::helpers::settled,
        )
        .await;
    assert_eq!(doc["status"], "succeeded");
    assert_eq!(doc["result"]["truncated"], true);
    let kept = doc["result"]["body"].as_str().expect("text body");
    assert!(
        !kept.is_empty() && kept.len() <= 200 && kept.chars().all(|c| c == 'u'),
        "{} bytes kept",
        kept.len()
    );
    let attempts = app
        .get_json(&token, &format!("/v1/commands/{id}/attempts"))
        .await;
    let body = attempts["data"][0]["response_body"]
        .as_str()
        .expect("response body");
    assert!(
        !body.is_empty() && body.len() <= 100 && body.chars().all(|c| c == 'r'),
        "{} bytes kept",
        body.len()
    );
}

/// The limits' answers are in the API description: 429 with `Retry-After` on
/// every route but the probes and `/metrics`, 431 on every route, 413 on every
/// route that takes a body, each a problem document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_description_documents_the_limits_answers() {
    let app = spawn_app_with(|_| {}).await;
    let doc = app.openapi().await;
    let rate_limited = &doc["components"]["responses"]["RateLimited"];
    assert!(
        rate_limited["headers"]["Retry-After"].is_object(),
        "{rate_limited}"
    );
    for name in ["RateLimited", "HeadersTooLarge", "PayloadTooLarge"] {
        assert_eq!(
            doc["components"]["responses"][name]["content"]["application/problem+json"]["schema"]
                ["$ref"],
            "#/components/schemas/Problem",
            "{name}"
        );
    }
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (verb, op) in item.as_object().expect("path item") {
            let answers = &op["responses"];
            let exempt = matches!(path.as_str(), "/healthz" | "/readyz" | "/metrics");
            assert_eq!(answers["429"].is_object(), !exempt, "429 on {verb} {path}");
            assert!(answers["431"].is_object(), "431 on {verb} {path}");
            assert_eq!(
                answers["413"].is_object(),
                op["requestBody"].is_object(),
                "413 on {verb} {path}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 17, "{checked} operations");
}
