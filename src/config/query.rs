//! `[query]` and `[cache]`: the read side and where its caches live.

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use url::Url;

use super::{invalid, ConfigError};

/// `[query]`: the read side (see `docs/queries.md`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuerySideSettings {
    /// Longest time a cached status document may be served after the command
    /// changed, ms (the TTL of a cached document); 0 = status documents are
    /// not cached. At most [`MAX_STALENESS_MS`].
    pub max_staleness_ms: u64,
    /// After a client's `POST /v1/commands` on this instance, its status and
    /// list reads go to the primary for this long, ms, so it reads its own
    /// write despite replica lag; 0 = off. At most [`MAX_READ_YOUR_WRITES_MS`].
    pub read_your_writes_ms: u64,
    /// Most queries in one `POST /v1/queries/batch` request (1 to 100).
    pub batch_max_queries: usize,
    /// Most status documents held in the in-process cache.
    pub status_cache_capacity: u64,
    /// Most upstream query responses held in the in-process cache.
    pub upstream_cache_capacity: u64,
}

/// Upper bound of `query.max_staleness_ms`: one minute.
pub const MAX_STALENESS_MS: u64 = 60_000;
/// Upper bound of `query.read_your_writes_ms`: ten minutes.
pub const MAX_READ_YOUR_WRITES_MS: u64 = 600_000;

/// `[cache]`: where cached status documents and upstream responses live.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSettings {
    /// `redis://` or `rediss://` URL of a Redis shared by every API instance;
    /// empty = each process caches in its own memory (moka).
    pub redis_url: SecretString,
    /// Prefix of every Redis key, so several deployments (or tests) can
    /// share one Redis.
    pub key_prefix: String,
    /// Timeout of one Redis command, ms; a slower Redis counts as an error
    /// and the request falls back to the database or the upstream.
    pub redis_timeout_ms: u64,
}

impl QuerySideSettings {
    /// Checks staleness, read-your-writes, batch size and cache capacities.
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        if self.max_staleness_ms > MAX_STALENESS_MS {
            return Err(invalid(
                "query.max_staleness_ms",
                format!("must be at most {MAX_STALENESS_MS} ms"),
            ));
        }
        if self.read_your_writes_ms > MAX_READ_YOUR_WRITES_MS {
            return Err(invalid(
                "query.read_your_writes_ms",
                format!("must be at most {MAX_READ_YOUR_WRITES_MS} ms"),
            ));
        }
        if !(1..=100).contains(&self.batch_max_queries) {
            return Err(invalid("query.batch_max_queries", "must be 1 to 100"));
        }
        if self.status_cache_capacity == 0 {
            return Err(invalid("query.status_cache_capacity", "must be at least 1"));
        }
        if self.upstream_cache_capacity == 0 {
            return Err(invalid(
                "query.upstream_cache_capacity",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

impl CacheSettings {
    /// Checks the Redis URL, key prefix and timeout.
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        let redis_url = self.redis_url.expose_secret();
        if !redis_url.is_empty() {
            let ok = Url::parse(redis_url)
                .is_ok_and(|u| matches!(u.scheme(), "redis" | "rediss") && u.host().is_some());
            if !ok {
                return Err(invalid(
                    "cache.redis_url",
                    "must be empty or a redis:// or rediss:// URL, e.g. redis://127.0.0.1:6379",
                ));
            }
        }
        if self.key_prefix.len() > 64 || self.key_prefix.chars().any(char::is_whitespace) {
            return Err(invalid(
                "cache.key_prefix",
                "must be at most 64 characters without whitespace",
            ));
        }
        if self.redis_timeout_ms == 0 {
            return Err(invalid("cache.redis_timeout_ms", "must be at least 1"));
        }
        Ok(())
    }
}
