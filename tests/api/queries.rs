//! Upstream queries through the cache: coalescing, Cache-Control, private
//! responses, and the resilience policy (stale copies, 503, 429).

use std::time::Duration;

use serde_json::json;
use wiremock::matchers::{method, path, query_param};
use wiremock::{Mock, ResponseTemplate};

use crate::helpers::spawn_app_with;

fn get_json(app: &crate::helpers::TestApp, token: &str, qs: &str) -> reqwest::RequestBuilder {
    app.http
        .get(format!("{}/v1/queries/httpbin/get_json{qs}", app.address))
        .bearer_auth(token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_queries_make_one_upstream_call_sequential_and_concurrent() {
    let app = spawn_app_with(|_| {}).await;
    Mock::given(method("GET"))
        .and(path("/json"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"slides": 3}))
                .insert_header("cache-control", "max-age=30")
                .set_delay(Duration::from_millis(200)),
        )
        .expect(1)
        .mount(&app.upstream)
        .await;
    let token = app.token("acme", &["client"]);
    // 100 concurrent: one call, everyone gets the body.
    let resps =
        futures_util::future::join_all((0..100).map(|_| get_json(&app, &token, "").send())).await;
    for r in resps {
        let r = r.expect("send");
        assert_eq!(r.status(), 200);
        assert!(matches!(
            r.headers()["x-cache"].to_str().expect("h"),
            "miss" | "hit"
        ));
        assert_eq!(
            r.json::<serde_json::Value>().await.expect("json"),
            json!({"slides": 3})
        );
    }
    // 100 sequential: all hits.
    for _ in 0..100 {
        let r = get_json(&app, &token, "").send().await.expect("send");
        assert_eq!(r.headers()["x-cache"], "hit");
        assert!(r.headers().contains_key("age"));
    }
    app.upstream.verify().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_store_is_never_cached_and_max_age_expiry_refetches() {
    let app = spawn_app_with(|_| {}).await;
    Mock::given(method("GET"))
        .and(query_param("kind", "volatile"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"v": 1}))
                .insert_header("cache-control", "no-store"),
        )
        .expect(3)
        .mount(&app.upstream)
        .await;
    Mock::given(method("GET"))
        .and(query_param("kind", "short"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"v": 2}))
                .insert_header("cache-control", "max-age=1"),
        )
        .expect(2)
        .mount(&app.upstream)
        .await;
    let token = app.token("acme", &["client"]);
    for _ in 0..3 {
        let r = get_json(&app, &token, "?kind=volatile")
            .send()
            .await
            .expect("send");
        assert_eq!(r.headers()["x-cache"], "miss");
    }
    assert_eq!(
        get_json(&app, &token, "?kind=short")
            .send()
            .await
            .expect("send")
            .headers()["x-cache"],
        "miss"
    );
    assert_eq!(
        get_json(&app, &token, "?kind=short")
            .send()
            .await
            .expect("send")
            .headers()["x-cache"],
        "hit"
    );
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(
        get_json(&app, &token, "?kind=short")
            .send()
            .await
            .expect("send")
            .headers()["x-cache"],
        "miss",
        "expired copy refetched"
    );
    app.upstream.verify().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_responses_are_never_served_to_another_client() {
    let app = spawn_app_with(|_| {}).await;
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"mine": true}))
                .insert_header("cache-control", "private, max-age=60"),
        )
        .expect(2)
        .mount(&app.upstream)
        .await;
    let a = app.token("client-a", &["client"]);
    let b = app.token("client-b", &["client"]);
    assert_eq!(
        get_json(&app, &a, "").send().await.expect("send").headers()["x-cache"],
        "miss"
    );
    assert_eq!(
        get_json(&app, &a, "").send().await.expect("send").headers()["x-cache"],
        "hit",
        "the same client may reuse it"
    );
    assert_eq!(
        get_json(&app, &b, "").send().await.expect("send").headers()["x-cache"],
        "miss",
        "another client never gets it"
    );
    app.upstream.verify().await;
}

/// A response that is `private` as well as `no-store` (or not a 200) is
/// still private: a concurrent request of another client that joined the
/// fetch gets its own upstream call, never the first client's answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_no_store_responses_are_not_handed_to_a_coalesced_client() {
    let app = spawn_app_with(|_| {}).await;
    for (qs, status, cache_control) in
        [("?v=1", 200, "no-store, private"), ("?v=2", 404, "private")]
    {
        Mock::given(method("GET"))
            .and(query_param("v", &qs[3..]))
            .respond_with(
                ResponseTemplate::new(status)
                    .set_body_json(json!({"for": "whoever asked first"}))
                    .insert_header("cache-control", cache_control)
                    .set_delay(Duration::from_millis(400)),
            )
            .expect(2)
            .mount(&app.upstream)
            .await;
    }
    let a = app.token("client-a", &["client"]);
    let b = app.token("client-b", &["client"]);
    for qs in ["?v=1", "?v=2"] {
        let first = get_json(&app, &a, qs).send();
        let second = async {
            // Joins the fetch client-a started.
            tokio::time::sleep(Duration::from_millis(100)).await;
            get_json(&app, &b, qs).send().await
        };
        let (ra, rb) = tokio::join!(first, second);
        assert_eq!(ra.expect("a").status(), rb.expect("b").status(), "{qs}");
    }
    app.upstream.verify().await;
}

/// A `|` in the query string cannot name another client's private entry
/// (`|` separates the client in that entry's key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_string_cannot_address_another_clients_private_entry() {
    let app = spawn_app_with(|_| {}).await;
    Mock::given(method("GET"))
        .and(query_param("a", "1"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"owner": "acme"}))
                .insert_header("cache-control", "private, max-age=60"),
        )
        .mount(&app.upstream)
        .await;
    Mock::given(method("GET"))
        .and(query_param("a", "1|acme"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"owner": "mallory"}))
                .insert_header("cache-control", "public, max-age=60"),
        )
        .mount(&app.upstream)
        .await;
    let acme = app.token("acme", &["client"]);
    let mallory = app.token("mallory", &["client"]);
    let first: serde_json::Value = get_json(&app, &acme, "?a=1")
        .send()
        .await
        .expect("acme")
        .json()
        .await
        .expect("json");
    assert_eq!(first["owner"], "acme");
    let planted = get_json(&app, &mallory, "?a=1|acme")
        .send()
        .await
        .expect("mallory");
    assert_eq!(planted.status(), 200);
    let again: serde_json::Value = get_json(&app, &acme, "?a=1")
        .send()
        .await
        .expect("acme")
        .json()
        .await
        .expect("json");
    assert_eq!(again["owner"], "acme", "acme's entry was overwritten");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_breaker_serves_stale_or_503_and_throttling_answers_429() {
    let app = spawn_app_with(|s| {
        let h = s.integrations.get_mut("httpbin").expect("httpbin");
        h.breaker.min_calls = 1;
        h.breaker.cool_down_s = 30.0;
        let q = h.queries.get_mut("get_json").expect("query");
        q.cache_ttl_s = 1;
    })
    .await;
    Mock::given(method("GET"))
        .and(query_param("n", "1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"n": 1})))
        .up_to_n_times(1)
        .mount(&app.upstream)
        .await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&app.upstream)
        .await;
    let token = app.token("acme", &["client"]);
    assert_eq!(
        get_json(&app, &token, "?n=1")
            .send()
            .await
            .expect("send")
            .status(),
        200
    );
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    // The refresh fails (503 opens the breaker): the stale copy answers.
    let r = get_json(&app, &token, "?n=1").send().await.expect("send");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-cache"], "stale");
    assert_eq!(
        r.json::<serde_json::Value>().await.expect("json"),
        json!({"n": 1})
    );
    // Breaker open and nothing cached: 503 with Retry-After, fast.
    let r = get_json(&app, &token, "?n=2").send().await.expect("send");
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(r.headers()["content-type"], "application/problem+json");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_query_without_a_copy_is_429_with_retry_after() {
    let app = spawn_app_with(|s| {
        let h = s.integrations.get_mut("httpbin").expect("httpbin");
        h.throttle.rate_per_s = 1;
        h.throttle.burst = 1;
        h.queries.get_mut("get_json").expect("query").cache_ttl_s = 0;
    })
    .await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({})))
        .mount(&app.upstream)
        .await;
    let token = app.token("acme", &["client"]);
    assert_eq!(
        get_json(&app, &token, "")
            .send()
            .await
            .expect("send")
            .status(),
        200
    );
    let r = get_json(&app, &token, "").send().await.expect("send");
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    let unknown = app
        .http
        .get(format!("{}/v1/queries/httpbin/nope", app.address))
        .bearer_auth(&token)
        .send()
        .await
        .expect("send");
    assert_eq!(unknown.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_fallback_answers_while_the_breaker_is_open() {
    let app = spawn_app_with(|s| {
        let h = s.integrations.get_mut("httpbin").expect("httpbin");
        h.breaker.min_calls = 1;
        h.breaker.cool_down_s = 30.0;
        h.queries.get_mut("get_json").expect("query").fallback =
            Some(hookrelay::config::FallbackSettings {
                integration: None,
                operation: None,
                query: None,
                status: Some(200),
                body: Some(json!({"degraded": true})),
            });
    })
    .await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(500))
        .expect(1)
        .mount(&app.upstream)
        .await;
    let token = app.token("acme", &["client"]);
    let r = get_json(&app, &token, "").send().await.expect("send");
    assert_eq!(r.status(), 502, "the failing call itself");
    let r = get_json(&app, &token, "").send().await.expect("send");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-fallback"], "true");
    assert_eq!(
        r.json::<serde_json::Value>().await.expect("json"),
        json!({"degraded": true})
    );
    app.upstream.verify().await;
}

/// The vendor refusing hookrelay's own credential (401/403/407) or
/// redirecting (3xx, never followed) is the gateway's failure: 502
/// problem+json, never a bare 401 the caller would take for its own token.
/// Other 4xx pass through with the vendor's status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vendor_auth_refusals_and_redirects_are_502_other_4xx_pass_through() {
    let app = spawn_app_with(|_| {}).await;
    for (v, status) in [("1", 401), ("2", 403), ("3", 302), ("4", 404)] {
        Mock::given(method("GET"))
            .and(query_param("v", v))
            .respond_with(
                ResponseTemplate::new(status)
                    .insert_header("location", "http://10.0.0.1/")
                    .set_body_string("vendor says no"),
            )
            .mount(&app.upstream)
            .await;
    }
    let token = app.token("acme", &["client"]);
    for v in ["1", "2", "3"] {
        let resp = get_json(&app, &token, &format!("?v={v}"))
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), 502, "v={v}");
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
        assert!(resp.headers().get("location").is_none());
    }
    let resp = get_json(&app, &token, "?v=4").send().await.expect("send");
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.text().await.expect("body"), "vendor says no");
}
