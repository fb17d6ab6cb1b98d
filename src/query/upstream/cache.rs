//! The query cache: entries, their store (moka in memory, or Redis), the
//! registry of in-flight fetches that coalesces concurrent misses, and the
//! key rules (the sorted query string; a private entry under the client's key).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::web;
use futures_util::future::{BoxFuture, Shared};

use super::fetch::FetchError;
use crate::query::cache::RedisCache;

/// A cached upstream response.
#[derive(Debug)]
pub struct Entry {
    pub(super) status: u16,
    pub(super) content_type: Option<String>,
    pub(super) body: web::Bytes,
    pub(super) stored_at: Instant,
    pub(super) fresh_for: Duration,
    pub(super) stale_for: Duration,
    /// The shared key holds only a marker: look under the client's key.
    pub(super) private: bool,
}

impl Entry {
    /// Time since it was stored.
    pub(super) fn age(&self) -> Duration {
        self.stored_at.elapsed()
    }
    /// Whether it may be served without asking the upstream.
    pub(super) fn is_fresh(&self) -> bool {
        self.age() < self.fresh_for
    }
    /// Whether it may still be served when the upstream fails.
    pub(super) fn is_usable_stale(&self) -> bool {
        self.age() < self.fresh_for.saturating_add(self.stale_for)
    }
}

pub(super) type Fetch = Shared<BoxFuture<'static, Result<Arc<Entry>, FetchError>>>;

/// The fetches in flight by cache key, each with a number telling it apart
/// from a later fetch of the same key.
pub(super) type Inflight = Arc<Mutex<HashMap<String, (u64, Fetch)>>>;

/// Removes fetch `n` from `registry` when dropped, i.e. when its task ends.
pub(super) struct Retire {
    pub(super) registry: Inflight,
    pub(super) key: String,
    pub(super) n: u64,
}

impl Drop for Retire {
    fn drop(&mut self) {
        let mut inflight = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        if inflight.get(&self.key).is_some_and(|(m, _)| *m == self.n) {
            inflight.remove(&self.key);
        }
    }
}

/// The query cache and the in-flight fetches, shared by all HTTP workers.
///
/// Entries live in memory (moka) or, with `cache.redis_url`, in Redis, so
/// every API instance shares them. Coalescing of in-flight fetches is per
/// process.
pub struct QueryCache {
    entries: moka::future::Cache<String, Arc<Entry>>,
    /// The fetches in flight, by key (coalescing).
    pub(super) inflight: Inflight,
    /// Numbers the fetches (see [`Retire`]).
    pub(super) next_fetch: std::sync::atomic::AtomicU64,
    redis: Option<Arc<RedisCache>>,
}

/// An [`Entry`] as stored in Redis (JSON): times are wall-clock so another
/// instance can compute the age.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredEntry {
    status: u16,
    content_type: Option<String>,
    /// Base64 of the body.
    body: String,
    /// Unix ms when it was stored.
    stored_at_ms: i64,
    fresh_ms: u64,
    stale_ms: u64,
    private: bool,
}

impl StoredEntry {
    fn from_entry(e: &Entry) -> Self {
        use base64::Engine;
        let age = i64::try_from(e.age().as_millis()).unwrap_or(i64::MAX);
        StoredEntry {
            status: e.status,
            content_type: e.content_type.clone(),
            body: base64::engine::general_purpose::STANDARD.encode(&e.body),
            stored_at_ms: chrono::Utc::now().timestamp_millis().saturating_sub(age),
            fresh_ms: u64::try_from(e.fresh_for.as_millis()).unwrap_or(u64::MAX),
            stale_ms: u64::try_from(e.stale_for.as_millis()).unwrap_or(u64::MAX),
            private: e.private,
        }
    }

    fn into_entry(self) -> Option<Entry> {
        use base64::Engine;
        let age_ms = chrono::Utc::now()
            .timestamp_millis()
            .saturating_sub(self.stored_at_ms)
            .max(0);
        let age = Duration::from_millis(u64::try_from(age_ms).unwrap_or(0));
        Some(Entry {
            status: self.status,
            content_type: self.content_type,
            body: web::Bytes::from(
                base64::engine::general_purpose::STANDARD
                    .decode(self.body)
                    .ok()?,
            ),
            stored_at: Instant::now().checked_sub(age).unwrap_or_else(Instant::now),
            fresh_for: Duration::from_millis(self.fresh_ms),
            stale_for: Duration::from_millis(self.stale_ms),
            private: self.private,
        })
    }
}

impl QueryCache {
    /// A cache of at most `capacity` responses in memory, or in `redis`.
    pub fn new(capacity: u64, redis: Option<Arc<RedisCache>>) -> Self {
        QueryCache {
            entries: moka::future::Cache::builder()
                .max_capacity(capacity)
                // Entries outlive freshness for stale-if-error; a day bounds it.
                .time_to_live(Duration::from_secs(86_400))
                .build(),
            inflight: Arc::new(Mutex::new(HashMap::new())),
            next_fetch: std::sync::atomic::AtomicU64::new(0),
            redis,
        }
    }

    /// The entry under `key`, fresh or not.
    pub(super) async fn get(&self, key: &str) -> Option<Arc<Entry>> {
        match &self.redis {
            None => self.entries.get(key).await,
            Some(r) => {
                let raw = r.get(&format!("query:{key}")).await?;
                let entry = serde_json::from_slice::<StoredEntry>(&raw)
                    .ok()
                    .and_then(StoredEntry::into_entry);
                if entry.is_none() {
                    crate::telemetry::metrics::cache_error("decode");
                }
                entry.map(Arc::new)
            }
        }
    }

    /// Stores `entry` under `key`.
    pub(super) async fn insert(&self, key: String, entry: Arc<Entry>) {
        match &self.redis {
            None => self.entries.insert(key, entry).await,
            Some(r) => {
                let ttl = (entry.fresh_for.saturating_add(entry.stale_for))
                    .min(Duration::from_secs(86_400));
                if let Ok(raw) = serde_json::to_vec(&StoredEntry::from_entry(&entry)) {
                    r.set(&format!("query:{key}"), &raw, ttl).await;
                }
            }
        }
    }
}

/// The query string with its pairs sorted, so `a=1&b=2` and `b=2&a=1` share a
/// key; a raw `|` (which HTTP lets through in a query) is percent-encoded, as
/// `|` separates the client in a private entry's key: `?a=1|acme` must not
/// name client acme's entry for `?a=1`.
pub(super) fn canonical_query(qs: &str) -> String {
    let mut pairs: Vec<&str> = qs.split('&').filter(|p| !p.is_empty()).collect();
    pairs.sort_unstable();
    pairs.join("&").replace('|', "%7C")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_are_canonical() {
        assert_eq!(canonical_query("b=2&a=1"), canonical_query("a=1&b=2"));
        assert_eq!(canonical_query(""), "");
    }
}
