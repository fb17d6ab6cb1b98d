//! Cron maintenance: each scheduled run happens once across processes, and
//! the tasks purge old attempt bodies, expire idempotency keys and retire
//! rotated signing secrets.

use std::time::{Duration, Instant};

use hookrelay::startup::{Application, ServeRole};
use serde_json::{json, Value};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer};

use crate::helpers::{settled, spawn_with_settings, test_settings, Echo};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_runs_once_per_schedule_and_does_its_work() {
    let upstream = MockServer::start().await;
    let mut settings = test_settings(&upstream.uri());
    for cron in [
        &mut settings.maintenance.purge_attempt_bodies_cron,
        &mut settings.maintenance.expire_idempotency_keys_cron,
        &mut settings.maintenance.retire_signing_secrets_cron,
    ] {
        *cron = "* * * * * *".into(); // every second
    }
    settings.maintenance.idempotency_key_ttl_s = 3600;
    settings.maintenance.attempt_body_retention_s = 86_400;
    let app = spawn_with_settings(settings.clone(), upstream, ServeRole::All).await;
    Mock::given(method("POST"))
        .respond_with(Echo::new(200))
        .mount(&app.upstream)
        .await;
    let token = app.trusted_client("acme").await;
    let first = app
        .post_command(&token, &app.command("1", json!({"v": 1})), Some("reuse-me"))
        .await;
    let first_id = first.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    app.wait_status(&token, &first_id, Duration::from_secs(10), settled)
        .await;
    // Same key, other body: refused while the key is fresh.
    let resp = app
        .post_command(&token, &app.command("1", json!({"v": 2})), Some("reuse-me"))
        .await;
    assert_eq!(resp.status(), 409);

    // A second worker process's scheduler on the same database.
    let other = Application::build(settings, ServeRole::Worker)
        .await
        .expect("worker");
    let other_stop = other.shutdown_token();
    let other_task = tokio::spawn(other.run_until_stopped());

    // Age the data past its retention, and leave a secret whose grace ended.
    for sql in [
        "UPDATE commands SET created_at = now() - interval '2 hours'",
        "UPDATE delivery_attempts SET started_at = now() - interval '2 days'",
        "INSERT INTO signing_secrets (id, client_id, secret, created_at, expires_at)
         VALUES (gen_random_uuid(), 'acme', 'dev:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA', now() - interval '3 days', now() - interval '1 day')",
    ] {
        sqlx::query(sql).execute(&app.pool).await.expect(sql);
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let bodies: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM delivery_attempts WHERE response_body IS NOT NULL",
        )
        .fetch_one(&app.pool)
        .await
        .expect("bodies");
        let keys: i64 =
            sqlx::query_scalar("SELECT count(*) FROM commands WHERE idempotency_key IS NOT NULL")
                .fetch_one(&app.pool)
                .await
                .expect("keys");
        let retired: i64 =
            sqlx::query_scalar("SELECT count(*) FROM signing_secrets WHERE expires_at < now()")
                .fetch_one(&app.pool)
                .await
                .expect("secrets");
        if bodies == 0 && keys == 0 && retired == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "maintenance did not run: bodies {bodies}, keys {keys}, retired secrets {retired}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        app.count("delivery_attempts").await,
        1,
        "attempt rows stay; only bodies go"
    );

    // The expired key can be used again: a new command, not 409.
    let resp = app
        .post_command(&token, &app.command("1", json!({"v": 2})), Some("reuse-me"))
        .await;
    assert_eq!(resp.status(), 202);
    assert_ne!(
        resp.json::<Value>().await.expect("json")["id"],
        first_id.as_str()
    );

    other_stop.cancel();
    other_task.await.expect("join").expect("clean stop");
    let (runs, claimed_twice): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE attempts > 1) FROM maintenance_runs WHERE done_at IS NOT NULL",
    )
    .fetch_one(&app.pool)
    .await
    .expect("runs");
    assert!(runs >= 3, "runs were recorded ({runs})");
    assert_eq!(claimed_twice, 0, "each run executed by one process only");
}
