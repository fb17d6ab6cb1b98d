//! Bounded queues and flat cost as history grows: admission control refuses
//! new commands (503 `overloaded`) while the outbox is over its bound and
//! accepts again once a worker drains it; retention deletes finished history
//! past its bound and keeps everything recent, live or still replayable.

use std::time::{Duration, Instant};

use hookrelay::startup::{Application, ServeRole};
use serde_json::{json, Value};
use uuid::Uuid;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer};

use crate::helpers::{spawn_with_settings, test_settings, Echo, TestApp};

/// Posts until the answer is `status` (admission decisions follow a sample
/// taken every `sample_interval_ms`), returning that response.
async fn post_until(
    app: &TestApp,
    token: &str,
    status: u16,
    within: Duration,
) -> reqwest::Response {
    let deadline = Instant::now() + within;
    let mut n = 0;
    loop {
        n += 1;
        let resp = app
            .post_command(token, &app.command(&format!("probe-{n}"), json!({})), None)
            .await;
        if resp.status() == status {
            return resp;
        }
        assert!(
            Instant::now() < deadline,
            "no {status} within {within:?}; last answer {}",
            resp.status()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_backlog_sheds_new_commands_until_a_worker_drains_it() {
    // API only: nobody drains the outbox until the worker below starts.
    let upstream = MockServer::start().await;
    let mut settings = test_settings(&upstream.uri());
    settings.admission.max_ready_backlog = 3;
    settings.admission.max_outbox_lag_ms = 0;
    settings.admission.sample_interval_ms = 50;
    settings.admission.retry_after_s = 7;
    let app = spawn_with_settings(settings.clone(), upstream, ServeRole::Api).await;
    Mock::given(method("POST"))
        .respond_with(Echo::new(200))
        .mount(&app.upstream)
        .await;
    let token = app.trusted_client("acme").await;
    for i in 0..4 {
        app.post_command_id(
            &token,
            &app.command(&i.to_string(), json!({})),
            Some(&format!("k{i}")),
        )
        .await;
    }
    // Four ready jobs, bound three: the next command is refused, once the
    // sampler has seen them.
    let resp = post_until(&app, &token, 503, Duration::from_secs(5)).await;
    assert_eq!(resp.headers()["retry-after"].to_str().expect("ascii"), "7");
    assert_eq!(
        resp.headers()["content-type"].to_str().expect("ascii"),
        "application/problem+json"
    );
    let problem: Value = resp.json().await.expect("json");
    assert_eq!(
        problem["type"], "urn:hookrelay:problem:overloaded",
        "{problem}"
    );
    assert_eq!(problem["status"], 503);
    assert!(
        problem["detail"]
            .as_str()
            .expect("detail")
            .contains("ready backlog"),
        "{problem}"
    );
    let before = app.count("commands").await;
    // A repeated key adds no work: still answered with its command.
    let replay = app
        .post_command(&token, &app.command("0", json!({})), Some("k0"))
        .await;
    assert_eq!(replay.status(), 202);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    // A new key is refused like any new command, and nothing was stored.
    let refused = app
        .post_command(&token, &app.command("9", json!({})), Some("new-key"))
        .await;
    assert_eq!(refused.status(), 503);
    assert_eq!(app.count("commands").await, before);
    // (The recorder is process-wide: other tests share the series.)
    let page = app
        .http
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics");
    assert!(
        page.contains("hookrelay_intake_shed_total{reason=\"ready_backlog\"}"),
        "{page}"
    );
    assert!(
        page.contains("# TYPE hookrelay_ready_backlog gauge"),
        "{page}"
    );

    // A worker drains the outbox: commands are accepted again.
    let worker = Application::build(settings, ServeRole::Worker)
        .await
        .expect("worker");
    let worker_stop = worker.shutdown_token();
    let worker_task = tokio::spawn(worker.run_until_stopped());
    post_until(&app, &token, 202, Duration::from_secs(15)).await;
    worker_stop.cancel();
    worker_task.await.expect("join").expect("worker stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_ready_job_sheds_by_outbox_lag() {
    let upstream = MockServer::start().await;
    let mut settings = test_settings(&upstream.uri());
    settings.admission.max_ready_backlog = 0;
    settings.admission.max_outbox_lag_ms = 1_000;
    settings.admission.sample_interval_ms = 50;
    let app = spawn_with_settings(settings, upstream, ServeRole::Api).await;
    let token = app.token("acme", &["client"]);
    let id = app
        .post_command_id(&token, &app.command("1", json!({})), None)
        .await;
    sqlx::query(
        "UPDATE jobs SET run_at = now() - interval '5 seconds' WHERE command_id = $1::uuid",
    )
    .bind(&id)
    .execute(&app.pool)
    .await
    .expect("age the job");
    let resp = post_until(&app, &token, 503, Duration::from_secs(5)).await;
    let problem: Value = resp.json().await.expect("json");
    assert_eq!(problem["type"], "urn:hookrelay:problem:overloaded");
    assert!(
        problem["detail"]
            .as_str()
            .expect("detail")
            .contains("outbox lag"),
        "{problem}"
    );
    // The job is claimed (its run_at moves to the lease end): no lag, 202.
    sqlx::query("UPDATE jobs SET run_at = now() + interval '1 minute'")
        .execute(&app.pool)
        .await
        .expect("lease");
    post_until(&app, &token, 202, Duration::from_secs(5)).await;
}

/// One synthetic command of the history, `age_days` old (its id is a UUIDv7
/// of that time, as intake would have made it).
struct Row {
    status: &'static str,
    /// `(delivery status, days since it was delivered or dead-lettered)`.
    delivery: Option<(&'static str, i32)>,
    idempotency_key: Option<&'static str>,
    job: bool,
}

async fn insert(pool: &sqlx::PgPool, age_days: i32, row: &Row) -> Uuid {
    let created = std::time::SystemTime::now() - Duration::from_secs(age_days as u64 * 86_400);
    let since = created
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970");
    let id = Uuid::new_v7(uuid::Timestamp::from_unix(
        uuid::NoContext,
        since.as_secs(),
        since.subsec_nanos(),
    ));
    sqlx::query(
        "INSERT INTO commands (id, client_id, integration, operation, method, path, params,
                               callback_url, idempotency_key, request_hash, status, result,
                               created_at, updated_at)
         VALUES ($1, 'acme', 'httpbin', 'create_thing', 'POST', '/x', '{}', 'http://127.0.0.1:9/cb',
                 $2, '\\x00', $3, '{\"status_code\":200}',
                 now() - make_interval(days => $4), now() - make_interval(days => $4))",
    )
    .bind(id)
    .bind(row.idempotency_key)
    .bind(row.status)
    .bind(age_days)
    .execute(pool)
    .await
    .expect("insert command");
    if let Some((status, days)) = row.delivery {
        let delivery = Uuid::new_v4();
        sqlx::query(
            "INSERT INTO deliveries (id, command_id, client_id, url, payload, status, attempts,
                                     delivered_at, dead_lettered_at)
             VALUES ($1, $2, 'acme', 'http://127.0.0.1:9/cb', '{}', $3, 1,
                     CASE WHEN $3 = 'delivered' THEN now() - make_interval(days => $4) END,
                     CASE WHEN $3 = 'dead_lettered' THEN now() - make_interval(days => $4) END)",
        )
        .bind(delivery)
        .bind(id)
        .bind(status)
        .bind(days)
        .execute(pool)
        .await
        .expect("insert delivery");
        sqlx::query(
            "INSERT INTO delivery_attempts (delivery_id, attempt, started_at, duration_ms, response_status)
             VALUES ($1, 1, now() - make_interval(days => $2), 5, 200)",
        )
        .bind(delivery)
        .bind(days)
        .execute(pool)
        .await
        .expect("insert attempt");
    }
    if row.job {
        sqlx::query("INSERT INTO jobs (kind, command_id, run_at) VALUES ('execute', $1, now() + interval '1 hour')")
            .bind(id)
            .execute(pool)
            .await
            .expect("insert job");
    }
    id
}

async fn exists(pool: &sqlx::PgPool, id: Uuid) -> bool {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM commands WHERE id = $1)")
        .bind(id)
        .fetch_one(pool)
        .await
        .expect("exists")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_old_finished_history_and_keeps_the_rest() {
    use hookrelay::maintenance::retention::purge_finished;
    let upstream = MockServer::start().await;
    let settings = test_settings(&upstream.uri());
    let app = spawn_with_settings(settings.clone(), upstream, ServeRole::Api).await;
    let pool = &app.pool;
    let retention = &settings.retention;
    assert_eq!(
        (retention.finished_days, retention.dead_letter_days),
        (30, 90)
    );
    let finished = |delivery| Row {
        status: "succeeded",
        delivery,
        idempotency_key: None,
        job: false,
    };

    let old_delivered = insert(pool, 40, &finished(Some(("delivered", 40)))).await;
    let old_without_callback = insert(
        pool,
        40,
        &Row {
            status: "failed",
            ..finished(None)
        },
    )
    .await;
    let recent = insert(pool, 10, &finished(Some(("delivered", 10)))).await;
    let delivered_late = insert(pool, 40, &finished(Some(("delivered", 5)))).await;
    let pending_callback = insert(pool, 40, &finished(Some(("pending", 40)))).await;
    let running = insert(
        pool,
        40,
        &Row {
            status: "in_progress",
            job: true,
            ..finished(None)
        },
    )
    .await;
    let with_job = insert(
        pool,
        40,
        &Row {
            job: true,
            ..finished(Some(("delivered", 40)))
        },
    )
    .await;
    let young_dead_letter = insert(pool, 40, &finished(Some(("dead_lettered", 40)))).await;
    let old_dead_letter = insert(pool, 100, &finished(Some(("dead_lettered", 95)))).await;
    let keyed = insert(
        pool,
        40,
        &Row {
            idempotency_key: Some("still-honoured"),
            ..finished(Some(("delivered", 40)))
        },
    )
    .await;
    // More than one batch of old history (1,000 commands per statement).
    for _ in 0..3 {
        sqlx::query(
            "INSERT INTO commands (id, client_id, integration, operation, method, path, params,
                                   callback_url, request_hash, status, created_at, updated_at)
             SELECT (lpad(to_hex((extract(epoch FROM now() - interval '50 days') * 1000)::bigint), 12, '0')
                     || '7000' || '8' || lpad(to_hex(n), 15, '0'))::uuid,
                    'bulk', 'httpbin', 'create_thing', 'POST', '/x', '{}', 'http://127.0.0.1:9/cb',
                    '\\x00', 'failed', now() - interval '50 days', now() - interval '50 days'
               FROM generate_series((SELECT count(*) FROM commands WHERE client_id = 'bulk'),
                                    (SELECT count(*) FROM commands WHERE client_id = 'bulk') + 899) n",
        )
        .execute(pool)
        .await
        .expect("bulk history");
    }
    assert_eq!(app.count("commands WHERE client_id = 'bulk'").await, 2700);

    // The idempotency window (60 days here) keeps the keyed command.
    let deleted = purge_finished(pool, retention, 60 * 86_400)
        .await
        .expect("purge");
    assert_eq!(
        deleted,
        2700 + 3,
        "bulk, old delivered, old without callback, old dead letter"
    );
    for gone in [old_delivered, old_without_callback, old_dead_letter] {
        assert!(!exists(pool, gone).await, "{gone} should be deleted");
    }
    for kept in [
        recent,
        delivered_late,
        pending_callback,
        running,
        with_job,
        young_dead_letter,
        keyed,
    ] {
        assert!(exists(pool, kept).await, "{kept} should be kept");
    }
    // Their children went with them; nothing else's did.
    for table in ["deliveries", "command_events"] {
        let orphans: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM {table} t WHERE NOT EXISTS (SELECT 1 FROM commands c WHERE c.id = t.command_id)"
        ))
        .fetch_one(pool)
        .await
        .expect("orphans");
        assert_eq!(orphans, 0, "{table}");
    }
    let orphan_attempts: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM delivery_attempts a WHERE NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.id = a.delivery_id)",
    )
    .fetch_one(pool)
    .await
    .expect("orphans");
    assert_eq!(orphan_attempts, 0);
    assert_eq!(app.count("deliveries").await, 6);
    assert_eq!(app.count("delivery_attempts").await, 6);
    let events: i64 =
        sqlx::query_scalar("SELECT count(*) FROM command_events WHERE command_id = $1")
            .bind(recent)
            .fetch_one(pool)
            .await
            .expect("events");
    assert_eq!(events, 1, "the kept command keeps its events");

    // With the default window (24 h) the keyed command goes too; a second
    // run finds nothing else.
    let deleted = purge_finished(pool, retention, settings.maintenance.idempotency_key_ttl_s)
        .await
        .expect("purge");
    assert_eq!(deleted, 1);
    assert!(!exists(pool, keyed).await);
    let mut forever = retention.clone();
    forever.finished_days = 0;
    forever.dead_letter_days = 0;
    let none = insert(pool, 400, &finished(Some(("dead_lettered", 400)))).await;
    assert_eq!(purge_finished(pool, &forever, 0).await.expect("purge"), 0);
    assert!(exists(pool, none).await, "0 days keeps forever");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_runs_the_retention_task() {
    let upstream = MockServer::start().await;
    let mut settings = test_settings(&upstream.uri());
    settings.retention.purge_cron = "* * * * * *".into(); // every second
    let app = spawn_with_settings(settings, upstream, ServeRole::All).await;
    let old = insert(
        &app.pool,
        40,
        &Row {
            status: "succeeded",
            delivery: Some(("delivered", 40)),
            idempotency_key: None,
            job: false,
        },
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while exists(&app.pool, old).await {
        assert!(Instant::now() < deadline, "purge_finished did not run");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let runs: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM maintenance_runs WHERE task = 'purge_finished' AND done_at IS NOT NULL",
    )
    .fetch_one(&app.pool)
    .await
    .expect("runs");
    assert!(runs >= 1);
}
