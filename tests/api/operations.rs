//! Probes, OpenAPI, unknown routes, listing and pagination.

use std::time::Duration;

use serde_json::{json, Value};
use wiremock::matchers::method;
use wiremock::Mock;

use crate::helpers::{settled, spawn_app, Echo};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_openapi_and_unknown_routes() {
    let app = spawn_app().await;
    for probe in ["/healthz", "/readyz"] {
        let resp = app
            .http
            .get(format!("{}{probe}", app.address))
            .send()
            .await
            .expect("get");
        assert_eq!(resp.status(), 200, "{probe}");
    }
    let doc = app.openapi().await;
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    for (path, verb) in [
        ("/v1/commands", "post"),
        ("/v1/commands", "get"),
        ("/v1/commands/{id}", "get"),
        ("/v1/commands/{id}/attempts", "get"),
        ("/v1/signing-secret", "get"),
        ("/v1/dead-letters", "get"),
        ("/v1/dead-letters/{id}/replay", "post"),
        ("/v1/dead-letters/replay", "post"),
        ("/v1/signing-secret/rotate", "post"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/openapi.json", "get"),
        ("/metrics", "get"),
    ] {
        assert!(
            doc["paths"][path][verb].is_object(),
            "openapi lacks {verb} {path}"
        );
    }
    let resp = app
        .http
        .get(format!("{}/v1/nope", app.address))
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_are_newest_first_with_cursor_pagination_and_filters() {
    let app = spawn_app().await;
    Mock::given(method("POST"))
        .respond_with(Echo::new(200))
        .mount(&app.upstream)
        .await;
    let token = app.trusted_client("acme").await;
    let mut ids = Vec::new();
    for i in 0..5 {
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
        app.wait_status(&token, id, Duration::from_secs(10), settled)
            .await;
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/commands?limit=2&cursor={c}"),
            None => "/v1/commands?limit=2".to_owned(),
        };
        let page: Value = app.get_json(&token, &path).await;
        let data = page["data"].as_array().expect("data");
        assert!(data.len() <= 2);
        seen.extend(
            data.iter()
                .map(|d| d["id"].as_str().expect("id").to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
    assert_eq!(seen, newest_first);

    let page: Value = app
        .get_json(&token, "/v1/commands?status=succeeded&integration=httpbin")
        .await;
    assert_eq!(page["data"].as_array().expect("data").len(), 5);
    let page: Value = app.get_json(&token, "/v1/commands?status=failed").await;
    assert_eq!(page["data"].as_array().expect("data").len(), 0);

    for bad in [
        "/v1/commands?status=bogus",
        "/v1/commands?limit=0",
        "/v1/commands?limit=abc",
        "/v1/commands?cursor=zzz",
    ] {
        let resp = app.get(&token, bad).await;
        assert_eq!(resp.status(), 422, "{bad}");
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
        let field = bad
            .split('?')
            .nth(1)
            .and_then(|q| q.split('=').next())
            .expect("param");
        assert_eq!(
            resp.json::<Value>().await.expect("json")["field"],
            field,
            "{bad}"
        );
    }

    let attempts: Value = app
        .get_json(&token, &format!("/v1/commands/{}/attempts", ids[0]))
        .await;
    let data = attempts["data"].as_array().expect("data");
    assert_eq!(data.len(), 1);
    assert_eq!(data[0]["attempt"], 1);
    assert_eq!(data[0]["response_status"], 200);
    assert_eq!(data[0]["trigger"], "scheduled");
    assert_eq!(data[0]["error"], Value::Null);
    assert_eq!(attempts["next_cursor"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_documents_have_etags_and_long_poll_returns_on_completion() {
    let app = crate::helpers::spawn_app().await;
    Mock::given(method("POST"))
        .respond_with(Echo::new(200).delayed(Duration::from_millis(800)))
        .mount(&app.upstream)
        .await;
    let token = app.trusted_client("acme").await;
    let id = app
        .post_command_id(&token, &app.command("1", json!({})), None)
        .await;
    let url = format!("{}/v1/commands/{id}", app.address);

    // Wait until the upstream call is in progress, then long-poll for the change.
    let etag = loop {
        let r = app
            .http
            .get(&url)
            .bearer_auth(&token)
            .send()
            .await
            .expect("get");
        let etag = r.headers()["etag"].to_str().expect("etag").to_owned();
        let doc: Value = r.json().await.expect("json");
        if doc["status"] == "in_progress" {
            break etag;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let unchanged = app
        .http
        .get(&url)
        .bearer_auth(&token)
        .header("if-none-match", &etag)
        .send()
        .await
        .expect("get");
    assert_eq!(unchanged.status(), 304);
    assert_eq!(unchanged.headers()["etag"].to_str().expect("etag"), etag);

    let r = app
        .http
        .get(format!("{url}?wait=10"))
        .bearer_auth(&token)
        .header("if-none-match", &etag)
        .send()
        .await
        .expect("long-poll");
    let returned_at = chrono::Utc::now();
    assert_eq!(r.status(), 200);
    assert_ne!(r.headers()["etag"].to_str().expect("etag"), etag);
    let doc: Value = r.json().await.expect("json");
    assert_ne!(doc["status"], "in_progress", "{doc}");
    let changed_at =
        chrono::DateTime::parse_from_rfc3339(doc["updated_at"].as_str().expect("updated_at"))
            .expect("time");
    let lag = returned_at - changed_at.with_timezone(&chrono::Utc);
    assert!(
        lag < chrono::Duration::milliseconds(200),
        "long-poll answered {lag} after the change"
    );

    let bad = app
        .http
        .get(format!("{url}?wait=61"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("get");
    assert_eq!(bad.status(), 422);
    let quick = app
        .http
        .get(format!("{url}?wait=1"))
        .bearer_auth(&token)
        .header("if-none-match", "\"nope\"")
        .send()
        .await
        .expect("get");
    assert_eq!(quick.status(), 200, "a stale If-None-Match answers at once");
}

/// Many long-polls at once cost one database read per tick between them,
/// not one each: 20 waiters on settled commands for 2 s make about 40 reads
/// (2 s / 50 ms), where polling per waiter would make about 800. Then ten
/// long-polls on commands still running all answer with the changed document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_long_polls_share_their_reads_and_all_wake() {
    use crate::metrics::{sample, scrape};
    use futures_util::future::join_all;

    const READS: &str = "hookrelay_long_poll_reads_total";
    const WAITERS: &str = "hookrelay_long_poll_waiters";
    let app = spawn_app().await;
    Mock::given(method("POST"))
        .respond_with(Echo::new(200).delayed(Duration::from_millis(300)))
        .mount(&app.upstream)
        .await;
    let token = app.trusted_client("acme").await;

    let mut settled_ids = Vec::new();
    for i in 0..20 {
        let id = app
            .post_command_id(&token, &app.command(&format!("s{i}"), json!({})), None)
            .await;
        settled_ids.push(id);
    }
    let mut etags = Vec::new();
    for id in &settled_ids {
        app.wait_status(&token, id, Duration::from_secs(20), settled)
            .await;
        let r = app.get(&token, &format!("/v1/commands/{id}")).await;
        etags.push(r.headers()["etag"].to_str().expect("etag").to_owned());
    }

    let reads_before = sample(&scrape(&app).await, READS, &[]).unwrap_or(0.0);
    let started = std::time::Instant::now();
    let waits = settled_ids.iter().zip(&etags).map(|(id, etag)| {
        let req = app
            .http
            .get(format!("{}/v1/commands/{id}?wait=2", app.address))
            .bearer_auth(&token)
            .header("if-none-match", etag);
        async move { req.send().await.expect("long-poll").status() }
    });
    let watch = async {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        sample(&scrape(&app).await, WAITERS, &[]).unwrap_or(0.0)
    };
    let (statuses, waiting) = tokio::join!(join_all(waits), watch);
    let elapsed = started.elapsed();
    let reads = sample(&scrape(&app).await, READS, &[]).unwrap_or(0.0) - reads_before;
    assert!(
        statuses.iter().all(|s| *s == 304),
        "unchanged documents answer 304 when the wait ends: {statuses:?}"
    );
    assert!(elapsed >= Duration::from_millis(1900), "{elapsed:?}");
    assert!(waiting >= 20.0, "{WAITERS} was {waiting} mid-wait");
    // One read per 50 ms tick, with room for other tests' long-polls in
    // this process; per-waiter polling would be ~20 × 40 = 800.
    let ticks = elapsed.as_secs_f64() / 0.05;
    assert!(
        reads <= 3.0 * ticks + 20.0,
        "{reads} long-poll reads in {elapsed:?} for 20 waiters"
    );

    let mut running = Vec::new();
    for i in 0..10 {
        let id = app
            .post_command_id(&token, &app.command(&format!("r{i}"), json!({})), None)
            .await;
        let r = app.get(&token, &format!("/v1/commands/{id}")).await;
        let etag = r.headers()["etag"].to_str().expect("etag").to_owned();
        running.push((id, etag));
    }
    let waits = running.iter().map(|(id, etag)| {
        let req = app
            .http
            .get(format!("{}/v1/commands/{id}?wait=20", app.address))
            .bearer_auth(&token)
            .header("if-none-match", etag);
        async move {
            let r = req.send().await.expect("long-poll");
            let status = r.status();
            let tag = r.headers()["etag"].to_str().expect("etag").to_owned();
            (status, tag, etag.clone())
        }
    });
    let started = std::time::Instant::now();
    for (status, tag, sent) in join_all(waits).await {
        assert_eq!(status, 200);
        assert_ne!(tag, sent, "a long-poll answers with the changed document");
    }
    assert!(started.elapsed() < Duration::from_secs(15));
}

/// A graceful shutdown answers open long-polls at once (with the document
/// they have) instead of holding the stop for their whole wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_open_long_polls_at_once() {
    let app = spawn_app().await;
    Mock::given(method("POST"))
        .respond_with(Echo::new(200))
        .mount(&app.upstream)
        .await;
    let token = app.trusted_client("acme").await;
    let id = app
        .post_command_id(&token, &app.command("1", json!({})), None)
        .await;
    app.wait_status(&token, &id, Duration::from_secs(10), settled)
        .await;
    let r = app.get(&token, &format!("/v1/commands/{id}")).await;
    let etag = r.headers()["etag"].to_str().expect("etag").to_owned();
    let poll = app
        .http
        .get(format!("{}/v1/commands/{id}?wait=30", app.address))
        .bearer_auth(&token)
        .header("if-none-match", &etag)
        .send();
    let stop = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        app.shutdown.cancel();
    };
    let started = std::time::Instant::now();
    let (resp, ()) = tokio::join!(poll, stop);
    assert_eq!(
        resp.expect("an answer, not a dropped connection").status(),
        304
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered after {:?}",
        started.elapsed()
    );
}
