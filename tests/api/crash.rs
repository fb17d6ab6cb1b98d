//! Crash safety: a job whose worker died is reclaimed after its lease and
//! completed exactly once more; a stale worker cannot overwrite the outcome.

use std::time::Duration;

use hookrelay::domain::CommandStatus;
use hookrelay::domain::JsonText;
use hookrelay::integration::UpstreamResult;
use hookrelay::startup::{Application, ServeRole};
use hookrelay::testing::outbox;
use serde_json::json;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer};

use crate::helpers::{settled, spawn_with_settings, test_settings, Echo};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_lease_is_reclaimed_and_completed_exactly_once() {
    // An API-only process: commands are accepted but nobody dispatches them.
    let upstream = MockServer::start().await;
    let settings = test_settings(&upstream.uri());
    let app = spawn_with_settings(settings.clone(), upstream, ServeRole::Api).await;
    Mock::given(method("POST"))
        .respond_with(Echo::new(200))
        .expect(1)
        .mount(&app.upstream)
        .await;
    let token = app.trusted_client("acme").await;
    let id = app
        .post_command_id(&token, &app.command("1", json!({})), None)
        .await;

    // A worker claims the job with a short lease and dies without finishing.
    let dead = outbox::claim(&app.pool, 10, Duration::from_millis(300))
        .await
        .expect("claim");
    assert_eq!(dead.len(), 1);
    assert_eq!(app.status(&token, &id).await["status"], "in_progress");
    // While the lease holds, nobody else can claim the job.
    assert!(outbox::claim(&app.pool, 10, Duration::from_secs(10))
        .await
        .expect("claim")
        .is_empty());

    // A live worker process on the same database picks it up after the lease.
    let worker = Application::build(settings, ServeRole::Worker)
        .await
        .expect("worker");
    let worker_stop = worker.shutdown_token();
    let worker_task = tokio::spawn(worker.run_until_stopped());

    let doc = app
        .wait_status(&token, &id, Duration::from_secs(15), settled)
        .await;
    assert_eq!(doc["status"], "succeeded");
    assert_eq!(doc["callback"]["status"], "delivered");
    let attempts: i32 = sqlx::query_scalar("SELECT attempts FROM jobs WHERE kind = 'execute'")
        .fetch_optional(&app.pool)
        .await
        .expect("query")
        .unwrap_or(-1);
    assert_eq!(attempts, -1, "the execute job is finished and gone");

    // The dead worker wakes up and tries to record its own outcome: refused.
    let stale = UpstreamResult {
        status_code: Some(500),
        body: JsonText::string("stale"),
        truncated: false,
        error: None,
        fallback: false,
    };
    let written = outbox::finish_execute(
        &app.pool,
        &dead[0],
        CommandStatus::Failed,
        &stale,
        uuid::Uuid::now_v7(),
        "{}",
    )
    .await
    .expect("finish");
    assert!(!written, "a stale lease writes nothing");
    let doc = app.status(&token, &id).await;
    assert_eq!(doc["status"], "succeeded");
    assert_eq!(doc["result"]["status_code"], 200);
    assert_eq!(app.count("deliveries").await, 1);
    assert_eq!(app.count("jobs").await, 0);
    assert_eq!(app.receiver.received().len(), 1);
    assert!(app.receiver.received()[0].verified);

    worker_stop.cancel();
    worker_task
        .await
        .expect("join")
        .expect("worker stops cleanly");
    app.upstream.verify().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_longer_than_the_lease_keeps_its_lease_and_runs_once() {
    // Lease 3 s, upstream answers after 4.5 s; a second worker is waiting to
    // claim anything whose lease expires. Renewal must keep the job ours.
    let upstream = MockServer::start().await;
    let mut settings = test_settings(&upstream.uri());
    settings.dispatcher.lease_s = 3;
    settings
        .integrations
        .get_mut("httpbin")
        .expect("httpbin")
        .timeout_ms = 8_000;
    let app = spawn_with_settings(settings.clone(), upstream, ServeRole::All).await;
    Mock::given(method("POST"))
        .respond_with(Echo::new(200).delayed(Duration::from_millis(4_500)))
        .expect(1)
        .mount(&app.upstream)
        .await;
    let other = Application::build(settings, ServeRole::Worker)
        .await
        .expect("worker");
    let other_stop = other.shutdown_token();
    let other_task = tokio::spawn(other.run_until_stopped());

    let token = app.trusted_client("acme").await;
    let id = app
        .post_command_id(&token, &app.command("slow", json!({})), None)
        .await;
    let doc = app
        .wait_status(&token, &id, Duration::from_secs(20), settled)
        .await;
    assert_eq!(doc["status"], "succeeded");
    assert_eq!(doc["callback"]["status"], "delivered");
    other_stop.cancel();
    other_task.await.expect("join").expect("clean stop");
    app.upstream.verify().await;
}

/// One process can hold a job twice (its lease lapsed and it claimed the job
/// again). When both outcomes land in one batched write, only the current
/// lease's is applied and reported written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_and_a_current_outcome_in_one_batch_apply_only_the_current() {
    let upstream = MockServer::start().await;
    let settings = test_settings(&upstream.uri());
    let app = spawn_with_settings(settings, upstream, ServeRole::Api).await;
    let token = app.trusted_client("acme").await;
    let id = app
        .post_command_id(&token, &app.command("1", json!({})), None)
        .await;
    let stale = outbox::claim(&app.pool, 10, Duration::from_millis(200))
        .await
        .expect("claim")
        .pop()
        .expect("job");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let current = outbox::claim(&app.pool, 10, Duration::from_secs(10))
        .await
        .expect("claim")
        .pop()
        .expect("the same job again");
    assert_eq!(stale.id, current.id);
    let finish = |job: &outbox::ClaimedJob, status: CommandStatus, code: u16| outbox::Finish {
        job_id: job.id,
        lease_token: job.lease_token,
        status,
        result: UpstreamResult {
            status_code: Some(code),
            body: JsonText::from_value(&json!({"code": code})),
            truncated: false,
            error: None,
            fallback: false,
        },
        delivery_id: uuid::Uuid::now_v7(),
        payload: "{}".into(),
        url: app.receiver.url(),
        seal: None,
    };
    let old = finish(&stale, CommandStatus::Failed, 500);
    let new = finish(&current, CommandStatus::Succeeded, 200);
    let written = outbox::finish_batch(&app.pool, vec![&old, &new])
        .await
        .expect("finish");
    assert_eq!(written, [false, true]);
    let doc = app.status(&token, &id).await;
    assert_eq!(doc["status"], "succeeded", "{doc}");
    assert_eq!(doc["result"]["status_code"], 200, "{doc}");
    assert_eq!(app.count("deliveries").await, 1);
}
