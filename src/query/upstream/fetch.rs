//! The upstream call of a query, through the integration's guarded call, and
//! the fallback's answer when the breaker is open.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::web;

use super::cache::Entry;
use super::freshness::freshness;
use crate::integration::guarded::{Counting, Guarded, GuardedCall};
use crate::integration::resilience::Policies;
use crate::integration::{Integration, Integrations};

/// Why a fetch produced no fresh response.
#[derive(Debug, Clone)]
pub(super) enum FetchError {
    /// The breaker is open for this much longer.
    Open(Duration),
    /// Throttled (by us or by the vendor's 429): try again after this.
    Throttled(Duration),
    /// The upstream failed (transport, 5xx, 3xx, refused credential).
    Upstream(String),
}

/// Answers a query from its fallback while the primary's breaker is open:
/// a static response, or the fallback integration's query through that
/// integration's policy. Marked `X-Fallback: true`; never cached. `None` when
/// the fallback cannot answer either.
pub(super) async fn answer_from_fallback(
    settings: &crate::config::Settings,
    integrations: &Integrations,
    policies: &Policies,
    integration: &str,
    query: &str,
    fallback: &crate::config::FallbackSettings,
    qs: &str,
) -> Option<Arc<Entry>> {
    crate::telemetry::metrics::fallback_used(integration, query);
    let entry = if let Some(status) = fallback.status {
        Arc::new(Entry {
            status,
            content_type: Some("application/json".into()),
            body: web::Bytes::from(
                serde_json::to_vec(&fallback.body.clone().unwrap_or(serde_json::Value::Null))
                    .ok()?,
            ),
            stored_at: Instant::now(),
            fresh_for: Duration::ZERO,
            stale_for: Duration::ZERO,
            private: false,
        })
    } else {
        let (name, other) = (fallback.integration.as_deref()?, fallback.query.as_deref()?);
        let target = integrations.get(name)?;
        let path = settings
            .integrations
            .get(name)?
            .queries
            .get(other)?
            .path
            .to_string();
        fetch(
            target,
            policies.get(name)?,
            other,
            &path,
            qs,
            Duration::ZERO,
            Duration::ZERO,
        )
        .await
        .ok()?
    };
    Some(entry)
}

/// One upstream call of a query through the guarded call, turned into a
/// cache entry (fresh for what [`freshness`] allows, capped by `cap`; usable
/// stale for the response's `stale-if-error`, else `stale`).
pub(super) async fn fetch(
    integration: &Integration,
    policy: &crate::integration::resilience::Policy,
    query: &str,
    path: &str,
    qs: &str,
    cap: Duration,
    stale: Duration,
) -> Result<Arc<Entry>, FetchError> {
    let guard = GuardedCall {
        policy,
        integration: &integration.name,
        operation: query,
        counting: Counting::Query,
        budget: None,
    };
    match integration.guarded_query(guard, path, qs).await {
        Guarded::Wait { delay } => Err(FetchError::Throttled(delay)),
        Guarded::Open { remaining } => Err(FetchError::Open(remaining)),
        Guarded::Called(Err(why)) => Err(FetchError::Upstream(why)),
        Guarded::Called(Ok(resp)) => {
            // Passed on, a vendor's 401/403/407 would read as the caller's
            // own token being refused (the API's 401/403), and a 3xx is never
            // followed (its Location is not passed on): both are the
            // gateway's failure, answered 502 (or a stale copy).
            let gateway_failure =
                (300..400).contains(&resp.status) || matches!(resp.status, 401 | 403 | 407);
            if resp.status >= 500 || resp.status == 429 || resp.status == 408 || gateway_failure {
                return Err(match resp.status {
                    429 => FetchError::Throttled(
                        resp.vendor
                            .and_then(|v| v.pause())
                            .unwrap_or(Duration::from_secs(1)),
                    ),
                    s => FetchError::Upstream(format!("HTTP {s}")),
                });
            }
            // `private` counts whatever the status: a coalesced request of
            // another client must not receive a private 404 either.
            let (ttl, private, stale_directive) =
                freshness(resp.cache_control.as_deref(), resp.expires.as_deref(), cap);
            let ttl = ttl.filter(|_| resp.status == 200);
            Ok(Arc::new(Entry {
                status: resp.status,
                content_type: resp.content_type,
                body: web::Bytes::from(resp.body),
                stored_at: Instant::now(),
                fresh_for: ttl.unwrap_or(Duration::ZERO),
                stale_for: stale_directive.unwrap_or(stale),
                private,
            }))
        }
    }
}
