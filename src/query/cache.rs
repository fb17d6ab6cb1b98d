//! The read side's caches: status documents, the shared Redis backend, and
//! the read-your-writes window (see `docs/queries.md`).
//!
//! **Backends.** Without `cache.redis_url` every process caches in its own
//! memory (moka). With it, Redis *is* the cache (no local tier in front of
//! it), so every API instance sees the same entries and one `DEL` invalidates
//! a status document everywhere. Values are stored with an expiry (`SET … PX`)
//! under keys prefixed with `cache.key_prefix`. A Redis error or timeout never
//! fails a request: it is logged (warn), counted
//! (`hookrelay_cache_errors_total`) and treated as a miss, so the request reads
//! the database or the upstream instead.
//!
//! **Staleness.** A status document is cached for `query.max_staleness_ms`
//! after it was read; that TTL alone bounds how stale a served document can be
//! (plus the duration of the database read that produced it). Invalidation
//! ([`StatusCache::invalidate`]) only shortens it.
//!
//! **Per principal.** A cached document carries its owner's `client_id`; the
//! handler applies the same visibility rule to a cached document as to one read
//! from the database, so the cache never shows a caller what it could not read
//! uncached.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::StatusDocument;
use crate::config::{CacheSettings, QuerySideSettings};

/// A Redis connection used as a cache: lazy connection (a Redis that is down
/// at start does not stop the service), a timeout on every command, and
/// errors reported as misses.
pub struct RedisCache {
    client: redis::Client,
    conn: tokio::sync::OnceCell<ConnectionManager>,
    prefix: String,
    timeout: Duration,
    /// When connecting last failed: for [`RECONNECT_AFTER`] after it, requests
    /// skip Redis at once instead of each waiting for a timeout.
    failed_at: std::sync::Mutex<Option<std::time::Instant>>,
}

/// How long after a failed connection attempt Redis is skipped.
pub const RECONNECT_AFTER: Duration = Duration::from_secs(1);

impl RedisCache {
    /// A cache on `settings.redis_url`; `None` when it is empty.
    ///
    /// # Errors
    /// The URL cannot be parsed by the Redis client (validated config makes
    /// this unlikely).
    pub fn from_settings(settings: &CacheSettings) -> anyhow::Result<Option<Arc<RedisCache>>> {
        let url = settings.redis_url.expose_secret();
        if url.is_empty() {
            return Ok(None);
        }
        let client =
            redis::Client::open(url).map_err(|e| anyhow::anyhow!("cache.redis_url: {e}"))?;
        Ok(Some(Arc::new(RedisCache {
            client,
            conn: tokio::sync::OnceCell::new(),
            prefix: settings.key_prefix.clone(),
            timeout: Duration::from_millis(settings.redis_timeout_ms),
            failed_at: std::sync::Mutex::new(None),
        })))
    }

    /// The full Redis key of `key` (with the configured prefix).
    pub fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    async fn conn(&self) -> Option<ConnectionManager> {
        if let Some(c) = self.conn.get() {
            return Some(c.clone());
        }
        let recently_failed = self
            .failed_at
            .lock()
            .ok()
            .and_then(|f| *f)
            .is_some_and(|at| at.elapsed() < RECONNECT_AFTER);
        if recently_failed {
            crate::telemetry::metrics::cache_error("connect");
            return None;
        }
        let init = async {
            tokio::time::timeout(self.timeout, self.client.get_connection_manager())
                .await
                .map_err(|_| "timed out".to_owned())?
                .map_err(|e| e.to_string())
        };
        match self.conn.get_or_try_init(|| init).await {
            Ok(c) => Some(c.clone()),
            Err(e) => {
                if let Ok(mut f) = self.failed_at.lock() {
                    *f = Some(std::time::Instant::now());
                }
                tracing::warn!(target: "hookrelay::query", error = %e, "redis cache: cannot connect; reading without the cache");
                crate::telemetry::metrics::cache_error("connect");
                None
            }
        }
    }

    async fn run<T: redis::FromRedisValue>(&self, op: &'static str, cmd: redis::Cmd) -> Option<T> {
        let mut conn = self.conn().await?;
        match tokio::time::timeout(self.timeout, cmd.query_async::<T>(&mut conn)).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                tracing::warn!(target: "hookrelay::query", op, error = %e, "redis cache error; falling back");
                crate::telemetry::metrics::cache_error(op);
                None
            }
            Err(_) => {
                tracing::warn!(target: "hookrelay::query", op, timeout_ms = self.timeout.as_millis() as u64, "redis cache timed out; falling back");
                crate::telemetry::metrics::cache_error(op);
                None
            }
        }
    }

    /// The value under `key` (unprefixed); `None` when absent or on error.
    pub async fn get(&self, key: &str) -> Option<Vec<u8>> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(self.key(key));
        self.run::<Option<Vec<u8>>>("get", cmd).await.flatten()
    }

    /// Stores `value` under `key` (unprefixed) for `ttl` (at least 1 ms).
    pub async fn set(&self, key: &str, value: &[u8], ttl: Duration) {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key(key))
            .arg(value)
            .arg("PX")
            .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1));
        self.run::<()>("set", cmd).await;
    }

    /// Deletes `keys` (unprefixed).
    pub async fn del(&self, keys: &[String]) {
        if keys.is_empty() {
            return;
        }
        let mut cmd = redis::cmd("DEL");
        for k in keys {
            cmd.arg(self.key(k));
        }
        self.run::<()>("del", cmd).await;
    }
}

/// A cached status document with what the visibility rule needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CachedStatus {
    /// The command's owner (`sub` of the client that sent it).
    pub client_id: String,
    /// The document's ETag.
    pub etag: String,
    /// The document as read from the database.
    pub doc: StatusDocument,
}

/// Why [`StatusCache::get_or_load`] has no document.
#[derive(Debug, thiserror::Error)]
pub enum StatusCacheError {
    /// No such command (not cached: the next read looks again).
    #[error("no such command")]
    NotFound,
    /// This caller's own database read failed.
    #[error(transparent)]
    Database(sqlx::Error),
    /// A read shared with concurrent callers failed (its error is theirs
    /// too; only the first caller owns it).
    #[error("reading the status failed: {0}")]
    Shared(Arc<StatusCacheError>),
}

/// The status-document cache: key = command id, TTL = `query.max_staleness_ms`.
pub struct StatusCache {
    ttl: Duration,
    local: moka::future::Cache<Uuid, Arc<CachedStatus>>,
    redis: Option<Arc<RedisCache>>,
}

impl StatusCache {
    /// A cache per `settings`; in Redis when `redis` is given, else in memory.
    pub fn new(settings: &QuerySideSettings, redis: Option<Arc<RedisCache>>) -> Self {
        let ttl = Duration::from_millis(settings.max_staleness_ms);
        StatusCache {
            ttl,
            local: moka::future::Cache::builder()
                .max_capacity(settings.status_cache_capacity)
                .time_to_live(ttl.max(Duration::from_millis(1)))
                .build(),
            redis,
        }
    }

    /// Whether status documents are cached at all (`max_staleness_ms > 0`).
    pub fn enabled(&self) -> bool {
        !self.ttl.is_zero()
    }

    fn key(id: Uuid) -> String {
        format!("status:{id}")
    }

    /// The document of `id` from the cache, else from `load` (then cached);
    /// `Ok((doc, hit))`. `load` answers `Ok(None)` for an unknown command,
    /// which becomes `NotFound` and is not cached.
    ///
    /// In memory, concurrent misses for one id share ONE `load` (moka's
    /// `try_get_with`): when a popular document expires, the next burst of
    /// polls makes one database read, not one per request (measured in
    /// `scripts/bench_queries.sh`: p99 242 ms → single-digit ms at 64
    /// connections with a 1 s TTL). With Redis each instance reads on a miss.
    ///
    /// # Errors
    /// [`StatusCacheError::NotFound`], or the database error of `load`
    /// ([`StatusCacheError::Shared`] for every waiter that shared it but the
    /// one that owns it).
    pub async fn get_or_load<F>(
        &self,
        id: Uuid,
        load: F,
    ) -> Result<(Arc<CachedStatus>, bool), StatusCacheError>
    where
        F: std::future::Future<Output = Result<Option<CachedStatus>, sqlx::Error>> + Send,
    {
        if let Some(r) = &self.redis {
            let key = Self::key(id);
            if let Some(raw) = r.get(&key).await {
                match serde_json::from_slice::<CachedStatus>(&raw) {
                    Ok(hit) => return Ok((Arc::new(hit), true)),
                    Err(e) => {
                        tracing::warn!(target: "hookrelay::query", error = %e, "redis cache: undecodable status document; ignoring it");
                        crate::telemetry::metrics::cache_error("decode");
                    }
                }
            }
            let entry = load
                .await
                .map_err(StatusCacheError::Database)?
                .ok_or(StatusCacheError::NotFound)?;
            if let Ok(raw) = serde_json::to_vec(&entry) {
                r.set(&key, &raw, self.ttl).await;
            }
            return Ok((Arc::new(entry), false));
        }
        let loaded = std::sync::atomic::AtomicBool::new(false);
        let result = self
            .local
            .try_get_with(id, async {
                loaded.store(true, std::sync::atomic::Ordering::Relaxed);
                load.await
                    .map_err(StatusCacheError::Database)?
                    .map(Arc::new)
                    .ok_or(StatusCacheError::NotFound)
            })
            .await;
        let hit = !loaded.load(std::sync::atomic::Ordering::Relaxed);
        match result {
            Ok(entry) => Ok((entry, hit)),
            Err(e) => Err(match Arc::try_unwrap(e) {
                Ok(e) => e,
                Err(shared) => match &*shared {
                    StatusCacheError::NotFound => StatusCacheError::NotFound,
                    _ => StatusCacheError::Shared(shared),
                },
            }),
        }
    }

    /// Forgets the cached documents of `command_ids`, in this process and
    /// (with Redis) in every instance. Call it after a command's state
    /// changed; the event feed connects every state change to it.
    pub async fn invalidate(&self, command_ids: &[Uuid]) {
        for id in command_ids {
            self.local.invalidate(id).await;
        }
        if let Some(r) = &self.redis {
            let keys: Vec<String> = command_ids.iter().map(|id| Self::key(*id)).collect();
            r.del(&keys).await;
        }
    }
}

/// What this instance wrote within `query.read_your_writes_ms`: the clients
/// that sent a command (their reads go to the primary) and the commands
/// themselves (their writer reads them from the primary, never the cache).
pub struct RecentWriters {
    clients: Option<moka::sync::Cache<String, ()>>,
    commands: Option<moka::sync::Cache<Uuid, ()>>,
}

impl RecentWriters {
    /// A window of `settings.read_your_writes_ms` (0 = off).
    pub fn new(settings: &QuerySideSettings) -> Self {
        let window = Duration::from_millis(settings.read_your_writes_ms);
        let on = !window.is_zero();
        RecentWriters {
            clients: on.then(|| {
                moka::sync::Cache::builder()
                    .max_capacity(1_000_000)
                    .time_to_live(window)
                    .build()
            }),
            commands: on.then(|| {
                moka::sync::Cache::builder()
                    .max_capacity(1_000_000)
                    .time_to_live(window)
                    .build()
            }),
        }
    }

    /// `client_id` just had `command_id` accepted: (re)start both windows.
    pub fn note(&self, client_id: &str, command_id: Uuid) {
        if let Some(c) = &self.clients {
            c.insert(client_id.to_owned(), ());
        }
        if let Some(c) = &self.commands {
            c.insert(command_id, ());
        }
    }

    /// Whether `client_id` wrote within the window.
    pub fn contains(&self, client_id: &str) -> bool {
        self.clients
            .as_ref()
            .is_some_and(|c| c.contains_key(client_id))
    }

    /// Whether `command_id` was accepted here within the window.
    pub fn is_fresh_command(&self, command_id: Uuid) -> bool {
        self.commands
            .as_ref()
            .is_some_and(|c| c.contains_key(&command_id))
    }
}
