//! Postgres pools, database creation and migrations.

pub mod batch;

use std::str::FromStr;
use std::time::Duration;

use secrecy::ExposeSecret;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};

use crate::config::{mask_url, DatabaseSettings};

/// The primary (write) pool, shared by every handler through the application state.
#[derive(Clone)]
pub struct WritePool(pub PgPool);

/// The read pool (replica, or the primary), shared by every handler through the application state.
#[derive(Clone)]
pub struct ReadPool(pub PgPool);

/// Migrations embedded from `migrations/`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Why the database could not be used; the message is meant for an operator.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// Postgres could not be reached or refused the login.
    #[error(
        "cannot connect to Postgres at {url}: {cause}. Is Postgres running? Start it \
         (e.g. `pg_ctlcluster --skip-systemctl-redirect 15 main start`, or \
         `docker run -d -p 5432:5432 -e POSTGRES_HOST_AUTH_METHOD=trust postgres:16`) \
         or point DATABASE_URL at a running server."
    )]
    Unreachable {
        /// The URL with its password masked.
        url: String,
        /// The driver's message.
        cause: String,
    },
    /// Creating the database or migrating failed.
    #[error("database setup failed for {url}: {cause}")]
    Setup {
        /// The URL with its password masked.
        url: String,
        /// What failed.
        cause: String,
    },
}

fn options(url: &str) -> Result<PgConnectOptions, DbError> {
    let opts = PgConnectOptions::from_str(url)
        .map(|o| o.log_statements(tracing::log::LevelFilter::Trace))
        .map_err(|e| DbError::Setup {
            url: mask_url(url),
            cause: e.to_string(),
        })?;
    // No TLS to a loopback Postgres unless configured: sqlx's
    // default `prefer` would encrypt local traffic, unverified, for nothing.
    let ssl_configured =
        url.to_ascii_lowercase().contains("sslmode=") || std::env::var_os("PGSSLMODE").is_some();
    let loopback = matches!(opts.get_host(), "localhost" | "127.0.0.1" | "::1" | "[::1]")
        || opts.get_host().starts_with('/');
    Ok(if loopback && !ssl_configured {
        opts.ssl_mode(sqlx::postgres::PgSslMode::Disable)
    } else {
        opts
    })
}

/// Creates the database named in `url` when it does not exist. It first
/// connects to that database itself, so a login that may reach only its own
/// database (PgBouncer, managed Postgres, a strict `pg_hba.conf`) works;
/// only when Postgres answers "database does not exist" (SQLSTATE 3D000)
/// does it connect to the server's `postgres` database to create it.
///
/// # Errors
/// [`DbError::Unreachable`] when the server cannot be reached.
pub async fn ensure_database(url: &str) -> Result<(), DbError> {
    let opts = options(url)?;
    let name = opts.get_database().unwrap_or("postgres").to_owned();
    let unreachable = |e: sqlx::Error| DbError::Unreachable {
        url: mask_url(url),
        cause: e.to_string(),
    };
    match sqlx::PgConnection::connect_with(&opts).await {
        Ok(conn) => {
            let _ = conn.close().await;
            return Ok(());
        }
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("3D000") => {}
        Err(e) => return Err(unreachable(e)),
    }
    let mut conn = sqlx::PgConnection::connect_with(&opts.clone().database("postgres"))
        .await
        .map_err(unreachable)?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut conn)
            .await
            .map_err(unreachable)?;
    if !exists {
        let sql = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
        match sqlx::query(&sql).execute(&mut conn).await {
            Ok(_) => tracing::info!(database = %name, "created database"),
            // 42P04 duplicate_database: another process won the race.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
            Err(e) => {
                return Err(DbError::Setup {
                    url: mask_url(url),
                    cause: format!("CREATE DATABASE failed: {e}"),
                })
            }
        }
    }
    let _ = conn.close().await;
    Ok(())
}

/// Opens a pool of `max` connections and checks that one connection works.
///
/// Every connection runs `SET synchronous_commit = on` before the pool hands
/// it out, so a server, database or role configured with
/// `synchronous_commit = off` (or `local`) cannot turn a commit that
/// hookrelay answers for — a 202, a recorded upstream outcome — into one a
/// server crash loses (PostgreSQL docs, "Asynchronous Commit"). A session
/// `SET` outranks `postgresql.conf`, `ALTER SYSTEM`, `ALTER DATABASE` and
/// `ALTER ROLE` defaults.
///
/// # Errors
/// [`DbError::Unreachable`] when the server cannot be reached (or refuses
/// the `SET`).
pub async fn connect(url: &str, max: u32, acquire_timeout: Duration) -> Result<PgPool, DbError> {
    let pool = PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(acquire_timeout)
        .after_connect(|conn, _meta| {
            Box::pin(async move {
                sqlx::query("SET synchronous_commit = on")
                    .execute(&mut *conn)
                    .await
                    .map(drop)
            })
        })
        .connect_with(options(url)?)
        .await
        .map_err(|e| DbError::Unreachable {
            url: mask_url(url),
            cause: e.to_string(),
        })?;
    Ok(pool)
}

/// Applies pending migrations.
///
/// # Errors
/// [`DbError::Setup`] naming the failed migration.
pub async fn migrate(pool: &PgPool, url: &str) -> Result<(), DbError> {
    MIGRATOR.run(pool).await.map_err(|e| DbError::Setup {
        url: mask_url(url),
        cause: format!("migration failed: {e}"),
    })
}

/// The primary and read pools for `settings`; the read pool is the primary
/// when `read_url` is empty. Creates the database and migrates when configured.
///
/// # Errors
/// [`DbError`] with an operator-facing message.
pub async fn pools(
    settings: &DatabaseSettings,
    prepare: bool,
) -> Result<(PgPool, PgPool), DbError> {
    let url = settings.url.expose_secret();
    if prepare && settings.create_if_missing {
        ensure_database(url).await?;
    }
    let timeout = Duration::from_millis(settings.acquire_timeout_ms);
    let primary = connect(url, settings.max_connections, timeout).await?;
    if prepare && settings.migrate_on_start {
        migrate(&primary, url).await?;
    }
    let read_url = settings.read_url.expose_secret();
    let read = if read_url.is_empty() {
        primary.clone()
    } else {
        connect(read_url, settings.read_max_connections, timeout).await?
    };
    Ok((primary, read))
}
