//! Connecting to Postgres: a login limited to its own database, no TLS to a
//! loopback server unless configured, and commits flushed before answering.

use std::time::Duration;

use uuid::Uuid;

use crate::helpers::pg_base;

async fn admin() -> sqlx::PgPool {
    hookrelay::db::connect(
        &format!("{}/postgres", pg_base()),
        1,
        Duration::from_secs(10),
    )
    .await
    .expect("connect as postgres")
}

/// A login that may connect only to its own database (as behind PgBouncer or
/// on managed Postgres) can still `ensure_database` and migrate: the target
/// database is tried first; `postgres` is used only to create a missing one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_limited_to_its_own_database_can_migrate() {
    let pg = admin().await;
    let suffix = Uuid::new_v4().simple().to_string();
    let (role, db) = (
        format!("hr_app_{suffix}"),
        format!("hookrelay_test_{suffix}"),
    );
    for sql in [
        format!("CREATE ROLE {role} LOGIN"),
        format!("CREATE DATABASE {db} OWNER {role}"),
    ] {
        sqlx::query(&sql).execute(&pg).await.expect(&sql);
    }
    // Keep non-superusers out of `postgres` for the test (every other test
    // connects as the superuser), and restore the grant whatever happens.
    let revoke = "REVOKE CONNECT ON DATABASE postgres FROM PUBLIC";
    sqlx::query(revoke).execute(&pg).await.expect(revoke);
    let as_role = pg_base().replacen("postgres@", &format!("{role}@"), 1);
    let url = format!("{as_role}/{db}");
    let outcome = async {
        hookrelay::db::ensure_database(&url)
            .await
            .map_err(|e| format!("ensure_database: {e}"))?;
        let pool = hookrelay::db::connect(&url, 1, Duration::from_secs(10))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let migrated = hookrelay::db::migrate(&pool, &url).await;
        pool.close().await;
        migrated.map_err(|e| format!("migrate: {e}"))
    }
    .await;
    for sql in [
        "GRANT CONNECT ON DATABASE postgres TO PUBLIC".to_owned(),
        format!("DROP DATABASE {db} WITH (FORCE)"),
        format!("DROP ROLE {role}"),
    ] {
        sqlx::query(&sql).execute(&pg).await.expect(&sql);
    }
    outcome.expect("an existing database needs no connection to `postgres`");
}

/// DESIGN: no TLS to a loopback Postgres unless configured (`sslmode=`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_connections_do_not_use_tls_unless_asked() {
    let pool = admin().await;
    let ssl: Option<bool> =
        sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_optional(&pool)
            .await
            .expect("pg_stat_ssl");
    assert_eq!(ssl, Some(false));
}

/// A role tuned to `synchronous_commit = off` (here: for the application's
/// own database only) cannot weaken the service's commits: every connection
/// of the running service has `synchronous_commit = on`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synchronous_commit_stays_on_whatever_the_role_and_database_say() {
    use secrecy::ExposeSecret;
    use sqlx::Connection;
    let upstream = wiremock::MockServer::start().await;
    let settings = crate::helpers::test_settings(&upstream.uri());
    let url = settings.database.url.expose_secret().to_owned();
    hookrelay::db::ensure_database(&url)
        .await
        .expect("create database");
    let db = url.rsplit('/').next().expect("database name").to_owned();
    let pg = admin().await;
    for sql in [
        format!("ALTER DATABASE {db} SET synchronous_commit = off"),
        format!("ALTER ROLE postgres IN DATABASE {db} SET synchronous_commit = off"),
    ] {
        sqlx::query(&sql).execute(&pg).await.expect(&sql);
    }
    // The tuning is in effect for a plain connection...
    let mut plain = sqlx::PgConnection::connect(&url).await.expect("connect");
    let plain_setting: String = sqlx::query_scalar("SHOW synchronous_commit")
        .fetch_one(&mut plain)
        .await
        .expect("show");
    assert_eq!(plain_setting, "off", "the test's tuning applies");

    // ...but not for the service's connections (all of them at once).
    let app =
        crate::helpers::spawn_with_settings(settings, upstream, hookrelay::startup::ServeRole::All)
            .await;
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut conn = app.pool.acquire().await.expect("acquire");
        let setting: String = sqlx::query_scalar("SHOW synchronous_commit")
            .fetch_one(&mut *conn)
            .await
            .expect("show");
        assert_eq!(setting, "on");
        held.push(conn);
    }
}
