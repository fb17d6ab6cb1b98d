//! Dead letters: admin listing with filters and pagination, single and bulk
//! replay, 409 on a delivery that is not dead-lettered, and a bulk replay of
//! 1,000 dead letters that survives a restart midway.

use std::collections::HashSet;
use std::time::Duration;

use hookrelay::startup::{Application, ServeRole};
use serde_json::{json, Value};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer};

use crate::helpers::{settled, spawn_app, spawn_with_settings, test_settings, Echo, TestApp};

/// Sends `n` commands for `client` and waits until all are dead-lettered
/// (the receiver must be failing). Returns the command ids.
async fn dead_letters(app: &TestApp, client: &str, thing: &str, n: usize) -> Vec<String> {
    let token = app.token(client, &["client"]);
    app.trust_client(&token).await;
    let mut ids = Vec::new();
    for i in 0..n {
        let resp = app
            .post_command(
                &token,
                &app.command(&format!("{thing}{i}"), json!({"i": i})),
                None,
            )
            .await;
        assert_eq!(resp.status(), 202);
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
        assert_eq!(doc["callback"]["status"], "dead_lettered");
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_filtered_and_paginated_for_admins_only() {
    let app = spawn_app().await;
    Mock::given(method("POST"))
        .respond_with(Echo::new(200))
        .mount(&app.upstream)
        .await;
    app.receiver.always(500);
    let a_ids = dead_letters(&app, "client-a", "a", 3).await;
    let between = chrono::Utc::now();
    let b_ids = dead_letters(&app, "client-b", "b", 2).await;
    let admin = app.token("root", &["admin"]);

    let page: Value = app.get_json(&admin, "/v1/dead-letters").await;
    let data = page["data"].as_array().expect("data");
    assert_eq!(data.len(), 5);
    let first = &data[0];
    assert_eq!(first["reason"], "exhausted");
    assert_eq!(first["last_error"], "HTTP 500");
    assert_eq!(first["attempts"], 3);
    assert!(first["dead_lettered_at"].is_string());
    assert!(
        b_ids.contains(&first["command_id"].as_str().expect("command id").to_owned()),
        "newest first"
    );

    let only_a: Value = app
        .get_json(&admin, "/v1/dead-letters?client_id=client-a")
        .await;
    let got: HashSet<String> = only_a["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|d| d["command_id"].as_str().expect("id").to_owned())
        .collect();
    assert_eq!(got, a_ids.iter().cloned().collect());

    let since = between.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let recent: Value = app
        .get_json(
            &admin,
            &format!("/v1/dead-letters?since={}", urlencode(&since)),
        )
        .await;
    assert_eq!(recent["data"].as_array().expect("data").len(), 2);
    let older: Value = app
        .get_json(
            &admin,
            &format!("/v1/dead-letters?until={}", urlencode(&since)),
        )
        .await;
    assert_eq!(older["data"].as_array().expect("data").len(), 3);
    let none: Value = app
        .get_json(&admin, "/v1/dead-letters?integration=other")
        .await;
    assert_eq!(none["data"].as_array().expect("data").len(), 0);

    // Pages of 2 walk all 5 without repeats.
    let mut seen = Vec::new();
    let mut path = "/v1/dead-letters?limit=2".to_owned();
    loop {
        let page: Value = app.get_json(&admin, &path).await;
        seen.extend(
            page["data"]
                .as_array()
                .expect("data")
                .iter()
                .map(|d| d["id"].as_str().expect("id").to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => path = format!("/v1/dead-letters?limit=2&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 5);
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 5);

    for (token, status) in [
        (app.token("client-a", &["client"]), 403),
        (app.token("ops", &["reader"]), 403),
    ] {
        assert_eq!(app.get(&token, "/v1/dead-letters").await.status(), status);
    }
    assert_eq!(
        app.get(&admin, "/v1/dead-letters?since=yesterday")
            .await
            .status(),
        422
    );
    assert_eq!(
        app.get(&admin, "/v1/dead-letters?cursor=nope")
            .await
            .status(),
        422
    );
}

fn urlencode(s: &str) -> String {
    s.replace('+', "%2B").replace(':', "%3A")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_one_is_a_fresh_run_with_the_same_webhook_id() {
    let app = spawn_app().await;
    Mock::given(method("POST"))
        .respond_with(Echo::new(200))
        .mount(&app.upstream)
        .await;
    app.receiver.always(410);
    let ids = dead_letters(&app, "acme", "x", 1).await;
    let client = app.token("acme", &["client"]);
    let admin = app.token("root", &["admin"]);
    let doc = app.status(&client, &ids[0]).await;
    let delivery = doc["callback"]["webhook_id"]
        .as_str()
        .expect("webhook id")
        .to_owned();

    let url = |id: &str| format!("{}/v1/dead-letters/{id}/replay", app.address);
    let resp = app
        .http
        .post(url(&delivery))
        .bearer_auth(&client)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 403, "clients cannot replay");

    app.receiver.always(200);
    let resp = app
        .http
        .post(url(&delivery))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 202);
    assert_eq!(
        resp.json::<Value>().await.expect("json")["id"],
        delivery.as_str()
    );

    let doc = app
        .wait_status(&client, &ids[0], Duration::from_secs(10), |d| {
            d["callback"]["status"] == "delivered"
        })
        .await;
    assert_eq!(doc["callback"]["attempts"], 2);
    let received = app.receiver.received();
    assert_eq!(received.len(), 2);
    assert!(
        received
            .iter()
            .all(|r| r.verified && r.webhook_id == delivery),
        "same webhook-id on replay"
    );

    let attempts: Value = app
        .get_json(&client, &format!("/v1/commands/{}/attempts", ids[0]))
        .await;
    let triggers: Vec<&str> = attempts["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|a| a["trigger"].as_str().expect("trigger"))
        .collect();
    assert_eq!(triggers, vec!["scheduled", "replay"]);

    let resp = app
        .http
        .post(url(&delivery))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("send");
    assert_eq!(
        resp.status(),
        409,
        "a delivered delivery is not a dead letter"
    );
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let resp = app
        .http
        .post(url(&uuid::Uuid::now_v7().to_string()))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_replay_by_filter_answers_the_count() {
    let app = spawn_app().await;
    Mock::given(method("POST"))
        .respond_with(Echo::new(200))
        .mount(&app.upstream)
        .await;
    app.receiver.always(410);
    dead_letters(&app, "client-a", "a", 3).await;
    dead_letters(&app, "client-b", "b", 2).await;
    let admin = app.token("root", &["admin"]);
    app.receiver.always(200);
    let url = format!("{}/v1/dead-letters/replay", app.address);

    let resp = app
        .http
        .post(&url)
        .bearer_auth(&admin)
        .json(&json!({"client_id": "client-a"}))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 202);
    assert_eq!(resp.json::<Value>().await.expect("json")["replayed"], 3);
    let resp = app
        .http
        .post(&url)
        .bearer_auth(&admin)
        .json(&json!({"bogus": 1}))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 422);
    let resp = app
        .http
        .post(&url)
        .bearer_auth(&admin)
        .json(&json!({"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"}))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 422);

    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while app
        .receiver
        .received()
        .iter()
        .filter(|r| r.body["data"]["status"] == "succeeded")
        .count()
        < 5 + 3
    {
        assert!(
            std::time::Instant::now() < deadline,
            "replayed deliveries arrive"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left: Value = app.get_json(&admin, "/v1/dead-letters").await;
    let left = left["data"].as_array().expect("data");
    assert_eq!(left.len(), 2);
    assert!(left.iter().all(|d| d["client_id"] == "client-b"));

    let resp = app
        .http
        .post(&url)
        .bearer_auth(&admin)
        .send()
        .await
        .expect("send");
    assert_eq!(
        resp.status(),
        202,
        "an empty body replays every dead letter"
    );
    assert_eq!(resp.json::<Value>().await.expect("json")["replayed"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_replay_of_1000_dead_letters_survives_a_restart_midway() {
    let upstream = MockServer::start().await;
    let settings = test_settings(&upstream.uri());
    let app = spawn_with_settings(settings.clone(), upstream, ServeRole::All).await;
    Mock::given(method("POST"))
        .respond_with(Echo::new(200))
        .mount(&app.upstream)
        .await;
    let token = app.trusted_client("acme").await;
    app.receiver.always(410);
    let posts = (0..1000).map(|i| {
        let body = app.command(&i.to_string(), json!({}));
        let (app, token) = (&app, token.clone());
        async move { assert_eq!(app.post_command(&token, &body, None).await.status(), 202) }
    });
    use futures_util::StreamExt;
    futures_util::stream::iter(posts)
        .buffer_unordered(64)
        .collect::<Vec<()>>()
        .await;
    let dead = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM deliveries WHERE status = 'dead_lettered'",
        )
        .fetch_one(&app.pool)
        .await
        .expect("count")
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while dead().await < 1000 {
        assert!(std::time::Instant::now() < deadline, "1000 dead letters");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A slow receiver, so the restart lands in the middle of the replay.
    app.receiver.always(200);
    app.receiver.delay(Duration::from_millis(20));
    let admin = app.token("root", &["admin"]);
    let resp = app
        .http
        .post(format!("{}/v1/dead-letters/replay", app.address))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 202);
    assert_eq!(resp.json::<Value>().await.expect("json")["replayed"], 1000);
    let delivered = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM deliveries WHERE status = 'delivered'")
            .fetch_one(&app.pool)
            .await
            .expect("count")
    };
    while delivered().await < 50 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    app.shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let midway = delivered().await;
    assert!(
        midway < 1000,
        "the restart happened midway ({midway} delivered)"
    );

    let worker = Application::build(settings, ServeRole::Worker)
        .await
        .expect("worker");
    let stop = worker.shutdown_token();
    let task = tokio::spawn(worker.run_until_stopped());
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while delivered().await < 1000 {
        assert!(
            std::time::Instant::now() < deadline,
            "all replays delivered after the restart"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    task.await.expect("join").expect("clean stop");

    let ok: HashSet<String> = app
        .receiver
        .received()
        .into_iter()
        .filter(|r| r.body["data"]["status"] == "succeeded" && r.verified)
        .map(|r| r.webhook_id)
        .collect();
    assert_eq!(
        ok.len(),
        1000,
        "every replayed delivery reached the receiver"
    );
    assert_eq!(app.count("jobs").await, 0);
}
