//! Abuse limits on the HTTP API, applied by one middleware ([`guard`]) in
//! front of every route:
//!
//! 1. **Listener split** (`server.admin_bind`): on the public listener the
//!    admin paths ([`is_admin_path`]) answer 404; on the admin listener
//!    everything else but the probes answers 404.
//! 2. **Header size**: the request headers together (names + values) may not
//!    exceed `server.max_header_bytes` (431). actix-http itself refuses a head
//!    above 128 KiB (431) or with more than 96 headers (400) before this runs.
//! 3. **Rate limits** (`[limits]`), GCRA via the `governor` crate, per process:
//!    first per client IP address (the TCP peer; `X-Forwarded-For` is not
//!    trusted), before authentication; then, when the request carries a valid
//!    bearer token, per client (the JWT `sub`). Over a limit: 429
//!    `urn:hookrelay:problem:rate-limited` with `Retry-After` in whole seconds
//!    (rounded up, at least 1). The probes and `/metrics` are exempt.
//! 4. **Signing-secret rotations** (`limits.rotations_per_hour`,
//!    `limits.rotation_burst`), per client, per process: checked by the
//!    rotation handler ([`Guard::admit_rotation`]), same 429 answer.
//!
//! Body size, request-head timeouts (slowloris) and connection caps are set on
//! the `HttpServer` in [`crate::startup`].

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{http::header, HttpMessage};
use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::auth::JwtKeys;
use crate::config::{LimitSettings, ServerSettings};
use crate::http::error::ApiError;
use crate::http::state::Component;

/// Which routes a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// `server.bind` without `server.admin_bind`: every route.
    Combined,
    /// `server.bind` with `server.admin_bind` set: everything but the admin paths.
    Public,
    /// `server.admin_bind`: the admin paths and the probes only.
    Admin,
}

/// Whether `path` is served only on the admin listener when `server.admin_bind`
/// is set: `/metrics`, `/v1/admin/…` and the dead-letter routes
/// (`/v1/dead-letters`, `/v1/dead-letters/replay`, `/v1/dead-letters/{id}/replay`).
pub fn is_admin_path(path: &str) -> bool {
    path == "/metrics"
        || path == "/v1/admin"
        || path.starts_with("/v1/admin/")
        || path == "/v1/dead-letters"
        || path.starts_with("/v1/dead-letters/")
}

/// Paths never rate limited: the probes and `/metrics`.
pub fn is_exempt(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics")
}

/// Per-process state of the middleware, shared by every HTTP worker.
pub struct Guard {
    listener: Listener,
    max_header_bytes: usize,
    per_ip: Option<DefaultKeyedRateLimiter<IpAddr>>,
    per_client: Option<DefaultKeyedRateLimiter<String>>,
    /// `POST /v1/signing-secret/rotate` per client.
    rotations: Option<DefaultKeyedRateLimiter<String>>,
    /// Requests seen, to prune idle limiter keys now and then.
    seen: AtomicU64,
}

/// Limiter keys are pruned (idle ones forgotten) every this many requests,
/// so the maps do not grow with every address ever seen.
const PRUNE_EVERY: u64 = 4096;

fn limiter<K>(per_s: u32, burst: u32) -> Option<DefaultKeyedRateLimiter<K>>
where
    K: std::hash::Hash + Eq + Clone,
{
    let rate = NonZeroU32::new(per_s)?;
    let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
    Some(RateLimiter::keyed(
        Quota::per_second(rate).allow_burst(burst),
    ))
}

/// A keyed limiter of `per_hour` sustained events per hour with `burst`
/// allowed at once; `None` when `per_hour` is 0 (off).
fn hourly_limiter<K>(per_hour: u32, burst: u32) -> Option<DefaultKeyedRateLimiter<K>>
where
    K: std::hash::Hash + Eq + Clone,
{
    let per_hour = NonZeroU32::new(per_hour)?;
    let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
    let period = Duration::from_secs(3600) / per_hour.get();
    let quota = Quota::with_period(period)?.allow_burst(burst);
    Some(RateLimiter::keyed(quota))
}

impl Guard {
    /// The middleware state for one listener.
    pub fn new(listener: Listener, server: &ServerSettings, limits: &LimitSettings) -> Self {
        Guard {
            listener,
            max_header_bytes: server.max_header_bytes,
            per_ip: limiter(limits.per_ip_per_s, limits.per_ip_burst),
            per_client: limiter(limits.per_client_per_s, limits.per_client_burst),
            rotations: hourly_limiter(limits.rotations_per_hour, limits.rotation_burst),
            seen: AtomicU64::new(0),
        }
    }

    fn check(&self, req: &ServiceRequest) -> Result<(), ApiError> {
        // The path as the router sees it (percent-decoded except `%`, `/`
        // and `+`), not the raw URI: `/%6Detrics` is routed to `/metrics`,
        // so it must be classified as `/metrics` too.
        let path = req.match_info().as_str();
        let routed = match self.listener {
            Listener::Combined => true,
            Listener::Public => !is_admin_path(path),
            Listener::Admin => is_admin_path(path) || matches!(path, "/healthz" | "/readyz"),
        };
        if !routed {
            return Err(ApiError::NotFound("no such route".into()));
        }
        let header_bytes: usize = req
            .headers()
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len())
            .sum();
        if header_bytes > self.max_header_bytes {
            return Err(ApiError::HeadersTooLarge {
                limit: self.max_header_bytes,
            });
        }
        if is_exempt(path) {
            return Ok(());
        }
        if self.seen.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1 {
            if let Some(l) = &self.per_ip {
                l.retain_recent();
            }
            if let Some(l) = &self.per_client {
                l.retain_recent();
            }
            if let Some(l) = &self.rotations {
                l.retain_recent();
            }
        }
        if let (Some(limiter), Some(peer)) = (&self.per_ip, req.peer_addr()) {
            admit(limiter, &ip_key(peer.ip()), "ip")?;
        }
        if let Some(limiter) = &self.per_client {
            // A bad or missing token is not counted here: the handler's
            // extractor answers 401 (and the per-IP limit bounds guessing).
            if let Some(client) = client_of(req) {
                admit(limiter, &client, "client")?;
            }
        }
        Ok(())
    }
}

impl Guard {
    /// Charges `extra` more requests to `client`'s limit (per-client rate
    /// limit), for a request that does the work of several: a batch of N
    /// queries costs N, not 1, so batching cannot multiply the rate. No-op
    /// when the per-client limit is off.
    ///
    /// # Errors
    /// `RateLimited` (429 + `Retry-After`) when the client has not that much
    /// allowance left, or the batch is larger than the burst.
    pub fn charge_client(&self, client: &str, extra: u32) -> Result<(), ApiError> {
        let (Some(limiter), Some(n)) = (&self.per_client, NonZeroU32::new(extra)) else {
            return Ok(());
        };
        let key = client.to_owned();
        match limiter.check_key_n(&key, n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => {
                crate::telemetry::metrics::rate_limited("client");
                Err(ApiError::RateLimited {
                    scope: "client",
                    retry_after_s: retry_after_secs(
                        not_until.wait_time_from(limiter.clock().now()),
                    ),
                })
            }
            Err(_) => {
                crate::telemetry::metrics::rate_limited("client");
                Err(ApiError::RateLimited {
                    scope: "client",
                    retry_after_s: 1,
                })
            }
        }
    }
}

impl Guard {
    /// Admits one signing-secret rotation of `client`
    /// (`limits.rotations_per_hour`, burst `limits.rotation_burst`, per
    /// process). No-op when the limit is off.
    ///
    /// # Errors
    /// `RateLimited` (429 + `Retry-After` in whole seconds) when the client
    /// rotated too often.
    pub fn admit_rotation(&self, client: &str) -> Result<(), ApiError> {
        match &self.rotations {
            Some(limiter) => admit(limiter, &client.to_owned(), "rotation"),
            None => Ok(()),
        }
    }
}

fn admit<K>(
    limiter: &DefaultKeyedRateLimiter<K>,
    key: &K,
    scope: &'static str,
) -> Result<(), ApiError>
where
    K: std::hash::Hash + Eq + Clone,
{
    limiter.check_key(key).map_err(|not_until| {
        let wait = not_until.wait_time_from(limiter.clock().now());
        crate::telemetry::metrics::rate_limited(scope);
        ApiError::RateLimited {
            scope,
            retry_after_s: retry_after_secs(wait),
        }
    })
}

/// The per-IP limiter's key for `ip`: an IPv4 address (also when it arrives
/// IPv4-mapped), or the /64 prefix of an IPv6 address — one host usually owns
/// a whole /64, so keying by full address would let it rotate past the limit.
pub fn ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(std::net::Ipv6Addr::from(bits))
            }
        },
    }
}

/// A wait as `Retry-After` seconds: rounded up, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

/// The `sub` of a valid bearer token, if the request has one. The verified
/// principal is kept in the request ([`crate::auth::Authenticated`]), so the
/// authorization layer does not verify the token again.
fn client_of(req: &ServiceRequest) -> Option<String> {
    let keys = <Arc<JwtKeys>>::from_app(req.request())?;
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))?;
    let principal = keys.verify(token.trim()).ok()?;
    let client = principal.client_id.clone();
    req.extensions_mut()
        .insert(crate::auth::Authenticated(principal));
    Some(client)
}

/// The middleware (`actix_web::middleware::from_fn`): answers 404, 431 or 429
/// as described in the module docs, else passes the request on. Needs a
/// [`Guard`] in the application state ([`crate::http::state::Component`]);
/// without one it passes everything.
///
/// # Errors
/// Only the inner service's errors.
pub async fn guard(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let verdict = <Arc<Guard>>::from_app(req.request()).map_or(Ok(()), |g| g.check(&req));
    match verdict {
        Ok(()) => next
            .call(req)
            .await
            .map(ServiceResponse::map_into_left_body),
        Err(e) => Ok(req.error_response(e).map_into_right_body()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1000)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
    }

    #[test]
    fn ipv6_clients_are_limited_per_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().expect("ip");
        let c: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert_eq!(ip_key(a), ip_key(b));
        assert_ne!(ip_key(a), ip_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().expect("ip");
        assert_eq!(ip_key(mapped), "192.0.2.7".parse::<IpAddr>().expect("ip"));
    }

    #[test]
    fn admin_paths() {
        for p in [
            "/metrics",
            "/v1/admin/integrations",
            "/v1/dead-letters",
            "/v1/dead-letters/replay",
            "/v1/dead-letters/0190/replay",
        ] {
            assert!(is_admin_path(p), "{p}");
        }
        for p in ["/v1/commands", "/healthz", "/v1/administrator", "/metricsx"] {
            assert!(!is_admin_path(p), "{p}");
        }
    }
}
