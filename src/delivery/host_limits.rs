//! Per-callback-host concurrency limits (`delivery.max_in_flight_per_host`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Per-callback-host concurrency limit (`delivery.max_in_flight_per_host`), so
/// one slow partner cannot occupy every dispatcher slot.
pub struct HostLimits {
    limit: usize,
    hosts: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl HostLimits {
    /// How long a delivery waits for a slot of its host before it is deferred.
    const WAIT: Duration = Duration::from_millis(250);

    /// Limits of `limit` concurrent attempts per `host:port`.
    pub fn new(limit: usize) -> Self {
        HostLimits {
            limit,
            hosts: Mutex::new(HashMap::new()),
        }
    }

    /// A slot for `url`'s host, waiting up to 250 ms (`WAIT`); `None` when the
    /// host stays at its limit.
    pub async fn acquire(&self, url: &str) -> Option<OwnedSemaphorePermit> {
        let key = url::Url::parse(url)
            .ok()
            .map(|u| {
                format!(
                    "{}:{}",
                    u.host_str().unwrap_or(""),
                    u.port_or_known_default().unwrap_or(0)
                )
            })
            .unwrap_or_default();
        let semaphore = {
            let mut hosts = self.hosts.lock().ok()?;
            if hosts.len() > 10_000 {
                // Forget idle hosts so the map cannot grow without bound.
                hosts.retain(|_, s| s.available_permits() < self.limit);
            }
            hosts
                .entry(key)
                .or_insert_with(|| Arc::new(Semaphore::new(self.limit)))
                .clone()
        };
        tokio::time::timeout(Self::WAIT, semaphore.acquire_owned())
            .await
            .ok()?
            .ok()
    }
}
