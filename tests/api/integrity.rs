//! Sealed outbox jobs: a job whose rows were edited in the database is
//! quarantined (dead letter `integrity`), never executed; a copied or replayed
//! job row never executes a command (or sends its callback) twice. A row that
//! no longer decodes (a stored callback URL that is not one) fails on its own
//! (dead letter `undecodable`); the jobs claimed with it run.

use std::time::{Duration, Instant};

use hookrelay::startup::{Application, ServeRole};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer};

use crate::helpers::{settled, spawn_with_settings, test_settings, Echo, TestApp};

/// An API-only app (commands are accepted, nothing runs them) and the
/// settings to start a worker on the same database later.
pub(crate) async fn api_only(customize: impl FnOnce(&mut hookrelay::config::Settings)) -> TestApp {
    let upstream = MockServer::start().await;
    let mut settings = test_settings(&upstream.uri());
    customize(&mut settings);
    spawn_with_settings(settings, upstream, ServeRole::Api).await
}

/// Starts a worker process on the app's database; cancel the token to stop it.
pub(crate) async fn start_worker(
    app: &TestApp,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let worker = Application::build(app.settings.clone(), ServeRole::Worker)
        .await
        .expect("worker");
    let stop = worker.shutdown_token();
    let task = tokio::spawn(async move {
        worker
            .run_until_stopped()
            .await
            .expect("worker stops cleanly");
    });
    (stop, task)
}

async fn wait_until(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn dead_letter_of(app: &TestApp, command_id: &str) -> Value {
    let admin = app.token("ops", &["admin"]);
    let list = app.get_json(&admin, "/v1/dead-letters").await;
    list["data"]
        .as_array()
        .expect("dead letters")
        .iter()
        .find(|d| d["command_id"] == command_id)
        .cloned()
        .unwrap_or_else(|| panic!("no dead letter for {command_id}: {list}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_command_was_edited_with_sql_is_quarantined_not_executed() {
    let app = api_only(|_| {}).await;
    Mock::given(method("POST"))
        .respond_with(Echo::new(200))
        .expect(0)
        .mount(&app.upstream)
        .await;
    let token = app.trusted_client("acme").await;
    let id = app
        .post_command_id(&token, &app.command("7", json!({"amount": 10})), None)
        .await;

    // Someone with database access changes what the job will act on.
    let edited = sqlx::query("UPDATE commands SET body = '{\"amount\": 1000000}' WHERE id = $1")
        .bind(Uuid::parse_str(&id).expect("uuid"))
        .execute(&app.pool)
        .await
        .expect("edit")
        .rows_affected();
    assert_eq!(edited, 1);

    let (stop, worker) = start_worker(&app).await;
    let doc = app
        .wait_status(&token, &id, Duration::from_secs(15), settled)
        .await;
    assert_eq!(doc["status"], "failed", "{doc}");
    assert_eq!(doc["callback"]["status"], "dead_lettered", "{doc}");
    let error = doc["result"]["error"].as_str().unwrap_or_default();
    assert!(error.starts_with("integrity:"), "{doc}");
    let dead = dead_letter_of(&app, &id).await;
    assert_eq!(dead["reason"], "integrity", "{dead}");
    assert_eq!(app.count("jobs").await, 0, "the job is gone, not retried");
    // Watchers of the event log learn both ends: the command failed and its
    // callback was dead-lettered (the delivery was created that way).
    let types: Vec<String> = sqlx::query_scalar(
        "SELECT type FROM command_events WHERE command_id = $1 ORDER BY xid, id",
    )
    .bind(uuid::Uuid::parse_str(&id).expect("uuid"))
    .fetch_all(&app.pool)
    .await
    .expect("events");
    assert_eq!(
        types,
        [
            "command.accepted",
            "command.in_progress",
            "command.failed",
            "callback.dead_lettered"
        ]
        .map(String::from)
        .to_vec(),
        "event log of the quarantined command"
    );

    // Nothing left the process: no upstream call (expect(0)), no callback.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(app.receiver.received().is_empty());

    // Counted, per kind.
    let page = app
        .http
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        page.contains("hookrelay_jobs_quarantined_total{kind=\"execute\"}"),
        "{page}"
    );

    // An integrity dead letter is not replayed (singly or in bulk).
    let admin = app.token("ops", &["admin"]);
    let delivery_id = dead["id"].as_str().expect("delivery id");
    let resp = app
        .post(&admin, &format!("/v1/dead-letters/{delivery_id}/replay"))
        .await;
    assert_eq!(resp.status(), 409);
    let body: Value = resp.json().await.expect("problem");
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("integrity"),
        "{body}"
    );
    let bulk: Value = app
        .post(&admin, "/v1/dead-letters/replay")
        .await
        .json()
        .await
        .expect("bulk");
    assert_eq!(bulk["replayed"], 0, "{bulk}");

    stop.cancel();
    worker.await.expect("join");
    app.upstream.verify().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_edited_with_sql_is_quarantined_and_not_sent() {
    let upstream = MockServer::start().await;
    let mut settings = test_settings(&upstream.uri());
    // One retry, late enough to edit the row between the two attempts.
    settings.delivery.retry_schedule_s = vec![1.5];
    settings.delivery.jitter = 0.0;
    let app = spawn_with_settings(settings, upstream, ServeRole::All).await;
    Mock::given(method("POST"))
        .respond_with(Echo::new(200))
        .expect(1)
        .mount(&app.upstream)
        .await;
    let token = app.trusted_client("acme").await;
    app.receiver.script(&[500]);
    let id = app
        .post_command_id(&token, &app.command("8", json!({})), None)
        .await;
    let command_id = Uuid::parse_str(&id).expect("uuid");
    wait_until("the first attempt", Duration::from_secs(10), async || {
        sqlx::query_scalar::<_, i32>("SELECT attempts FROM deliveries WHERE command_id = $1")
            .bind(command_id)
            .fetch_optional(&app.pool)
            .await
            .expect("query")
            == Some(1)
    })
    .await;

    // The callback's body is rewritten before the retry.
    sqlx::query(
        "UPDATE deliveries SET payload = replace(payload, 'succeeded', 'failed') WHERE command_id = $1",
    )
    .bind(command_id)
    .execute(&app.pool)
    .await
    .expect("edit");

    let doc = app
        .wait_status(&token, &id, Duration::from_secs(15), settled)
        .await;
    assert_eq!(doc["status"], "succeeded", "the command itself ran: {doc}");
    assert_eq!(doc["callback"]["status"], "dead_lettered", "{doc}");
    assert_eq!(dead_letter_of(&app, &id).await["reason"], "integrity");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let received = app.receiver.received();
    assert_eq!(
        received.len(),
        1,
        "only the attempt before the edit was sent"
    );
    assert_eq!(received[0].body["data"]["status"], "succeeded");
    // The audit log shows the one real attempt only.
    let attempts = app
        .get_json(&token, &format!("/v1/commands/{id}/attempts"))
        .await;
    assert_eq!(
        attempts["data"].as_array().map(Vec::len),
        Some(1),
        "{attempts}"
    );
    app.upstream.verify().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_callback_url_that_does_not_decode_fails_only_its_own_delivery() {
    let upstream = MockServer::start().await;
    let mut settings = test_settings(&upstream.uri());
    // Retries wait long enough that only this test decides when they run.
    settings.delivery.retry_schedule_s = vec![600.0];
    settings.delivery.jitter = 0.0;
    let app = spawn_with_settings(settings, upstream, ServeRole::Api).await;
    Mock::given(method("POST"))
        .respond_with(Echo::new(200))
        .mount(&app.upstream)
        .await;
    let token = app.trusted_client("acme").await;
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(
            app.post_command_id(&token, &app.command(&i.to_string(), json!({})), None)
                .await,
        );
    }
    // First round: every command runs, every first callback attempt fails.
    app.receiver.always(500);
    let (stop, worker) = start_worker(&app).await;
    wait_until(
        "six failed first attempts",
        Duration::from_secs(15),
        async || {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM deliveries WHERE attempts = 1")
                .fetch_one(&app.pool)
                .await
                .expect("query")
                == 6
        },
    )
    .await;
    stop.cancel();
    worker.await.expect("join");

    // One stored URL is no longer a URL; all retries become due at once, so
    // one claim takes the six deliver jobs together.
    let poisoned = &ids[2];
    sqlx::query("UPDATE deliveries SET url = 'not a url' WHERE command_id = $1")
        .bind(Uuid::parse_str(poisoned).expect("uuid"))
        .execute(&app.pool)
        .await
        .expect("edit");
    sqlx::query("UPDATE jobs SET run_at = now() WHERE kind = 'deliver'")
        .execute(&app.pool)
        .await
        .expect("due");
    app.receiver.always(200);
    let (stop, worker) = start_worker(&app).await;
    for id in &ids {
        let doc = app
            .wait_status(&token, id, Duration::from_secs(15), settled)
            .await;
        let want = if id == poisoned {
            "dead_lettered"
        } else {
            "delivered"
        };
        assert_eq!(doc["callback"]["status"], want, "{id}: {doc}");
    }
    let dead = dead_letter_of(&app, poisoned).await;
    assert_eq!(dead["reason"], "undecodable", "{dead}");
    let error = dead["last_error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("undecodable:") && error.contains("url"),
        "{dead}"
    );
    let second_round: Vec<_> = app.receiver.received().into_iter().skip(6).collect();
    assert_eq!(second_round.len(), 5, "the other five were sent once more");
    assert!(second_round
        .iter()
        .all(|h| h.body["data"]["command_id"] != poisoned.as_str()));
    stop.cancel();
    worker.await.expect("join");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copied_job_row_never_executes_a_command_twice() {
    let app = api_only(|_| {}).await;
    Mock::given(method("POST"))
        .respond_with(Echo::new(200))
        .expect(1)
        .mount(&app.upstream)
        .await;
    let token = app.trusted_client("acme").await;
    let id = app
        .post_command_id(&token, &app.command("9", json!({"n": 1})), None)
        .await;
    let command_id = Uuid::parse_str(&id).expect("uuid");

    // A copy of the live execute job is refused by the database.
    let copy = sqlx::query(
        "INSERT INTO jobs (kind, command_id, delivery_id, trigger)
         SELECT kind, command_id, delivery_id, trigger FROM jobs WHERE command_id = $1",
    )
    .bind(command_id)
    .execute(&app.pool)
    .await;
    let err = copy.expect_err("a second execute job for one command is refused");
    assert!(
        err.to_string().contains("jobs_one_execute_per_command"),
        "{err}"
    );

    let (stop, worker) = start_worker(&app).await;
    let doc = app
        .wait_status(&token, &id, Duration::from_secs(15), settled)
        .await;
    assert_eq!(doc["status"], "succeeded", "{doc}");
    assert_eq!(doc["callback"]["status"], "delivered", "{doc}");

    // Replayed rows after the command finished: an execute job and a deliver
    // job pointing at the finished command and delivery are claimed and
    // dropped, not run.
    sqlx::query("INSERT INTO jobs (kind, command_id) VALUES ('execute', $1)")
        .bind(command_id)
        .execute(&app.pool)
        .await
        .expect("replayed execute job");
    sqlx::query(
        "INSERT INTO jobs (kind, command_id, delivery_id)
         SELECT 'deliver', command_id, id FROM deliveries WHERE command_id = $1",
    )
    .bind(command_id)
    .execute(&app.pool)
    .await
    .expect("replayed deliver job");
    wait_until(
        "the copies to be dropped",
        Duration::from_secs(10),
        async || app.count("jobs").await == 0,
    )
    .await;

    // Even with the command's state set back, a replayed job does not run:
    // the command's execute seal was consumed when it finished.
    sqlx::query("UPDATE commands SET status = 'in_progress' WHERE id = $1")
        .bind(command_id)
        .execute(&app.pool)
        .await
        .expect("revert state");
    sqlx::query("INSERT INTO jobs (kind, command_id) VALUES ('execute', $1)")
        .bind(command_id)
        .execute(&app.pool)
        .await
        .expect("replayed execute job");
    wait_until(
        "the replay to be quarantined",
        Duration::from_secs(10),
        async || app.count("jobs").await == 0,
    )
    .await;
    let doc = app.status(&token, &id).await;
    assert_eq!(doc["status"], "failed", "quarantined: {doc}");
    assert_eq!(
        doc["callback"]["status"], "delivered",
        "the delivered callback stays delivered: {doc}"
    );

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.receiver.received().len(), 1, "one callback");
    stop.cancel();
    worker.await.expect("join");
    // expect(1): the upstream was called exactly once.
    app.upstream.verify().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reseal_jobs_moves_live_rows_to_the_new_key_and_skips_altered_ones() {
    let app = api_only(|_| {}).await;
    Mock::given(method("POST"))
        .respond_with(Echo::new(200))
        .expect(1)
        .mount(&app.upstream)
        .await;
    let token = app.trusted_client("acme").await;
    let good = app
        .post_command_id(&token, &app.command("10", json!({})), None)
        .await;
    let bad = app
        .post_command_id(&token, &app.command("11", json!({})), None)
        .await;
    sqlx::query("UPDATE commands SET path = '/anything/things/12' WHERE id = $1")
        .bind(Uuid::parse_str(&bad).expect("uuid"))
        .execute(&app.pool)
        .await
        .expect("edit");

    // A new key first, the old (development) key still configured.
    let new_key = format!(
        "m2:{}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            Uuid::new_v4().as_bytes().repeat(2)
        )
    );
    let mut rotated = app.settings.clone();
    rotated
        .security
        .job_mac_keys
        .insert(0, secrecy::SecretString::from(new_key.clone()));
    let report = hookrelay::testing::reseal_jobs(&app.pool, &rotated.security.job_mac_keys)
        .await
        .expect("reseal");
    assert_eq!(report.resealed, 1, "{report:?}");
    assert_eq!(report.unverified, 1, "the altered row is not laundered");
    // Running it again finds nothing left to do but the altered row.
    let again = hookrelay::testing::reseal_jobs(&app.pool, &rotated.security.job_mac_keys)
        .await
        .expect("reseal");
    assert_eq!(again.resealed, 0);

    // A worker that knows only the new key runs the re-sealed command and
    // quarantines the altered one.
    rotated.security.job_mac_keys = vec![secrecy::SecretString::from(new_key)];
    let worker = Application::build(rotated, ServeRole::Worker)
        .await
        .expect("worker");
    let stop = worker.shutdown_token();
    let task = tokio::spawn(worker.run_until_stopped());
    let doc = app
        .wait_status(&token, &good, Duration::from_secs(15), settled)
        .await;
    assert_eq!(doc["status"], "succeeded", "{doc}");
    assert_eq!(doc["callback"]["status"], "delivered", "{doc}");
    let doc = app
        .wait_status(&token, &bad, Duration::from_secs(15), settled)
        .await;
    assert_eq!(doc["callback"]["status"], "dead_lettered", "{doc}");
    assert_eq!(dead_letter_of(&app, &bad).await["reason"], "integrity");
    stop.cancel();
    task.await.expect("join").expect("clean stop");
    app.upstream.verify().await;
}
