//! How long an upstream response may be served.
//!
//! The RFC 9111 rules — which of `s-maxage`, `max-age` and `Expires` decides,
//! `no-store` and `no-cache`, a shared cache's view (`s-maxage` counts) or a
//! single client's (`private`: `s-maxage` does not) — are
//! `http-cache-semantics`'s. On top of them, our own rules:
//! - a response that states no freshness at all is fresh for the query's
//!   `cache_ttl_s` (the crate would give it none, or a `Last-Modified`
//!   heuristic, which is switched off);
//! - nothing is fresh for longer than `cache_ttl_s`;
//! - `private` decides the key (stored per client, never shared), whatever
//!   else the response says;
//! - `stale-if-error` (RFC 5861) is read here for the stale window; a
//!   delta-seconds value too large to represent is taken as 2^31 s
//!   (RFC 9111 §1.2.2), so sums of durations cannot overflow.
//!
//! Only `Cache-Control` and `Expires` are given to the crate (the fetch keeps
//! no other header), so `Expires` counts from the time of the answer.

use std::time::{Duration, SystemTime};

use http_cache_semantics::{CacheOptions, CachePolicy};

/// What a response's `Cache-Control` says beyond the crate's answer.
#[derive(Default)]
struct Directives {
    private: bool,
    no_cache: bool,
    /// `max-age` or `s-maxage` present.
    explicit: bool,
    stale_if_error: Option<Duration>,
}

impl Directives {
    fn parse(cache_control: Option<&str>) -> Self {
        let mut d = Directives::default();
        for directive in cache_control.unwrap_or("").split(',') {
            let (name, value) = match directive.split_once('=') {
                Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
                None => (directive.trim(), None),
            };
            match name.to_ascii_lowercase().as_str() {
                "private" => d.private = true,
                "no-cache" => d.no_cache = true,
                "max-age" | "s-maxage" => d.explicit = true,
                "stale-if-error" => {
                    d.stale_if_error = value
                        .and_then(|v| v.parse::<u64>().ok())
                        .map(|v| Duration::from_secs(v.min(1 << 31)));
                }
                _ => {}
            }
        }
        d
    }
}

/// `Cache-Control` with every `max-age` / `s-maxage` value too large to
/// represent taken as 2^31 s, as RFC 9111 §1.2.2 requires ("the greatest
/// integer it can represent"), instead of a value the crate would refuse (and
/// with it the whole response's freshness).
fn clamp_deltas(cache_control: &str) -> String {
    cache_control
        .split(',')
        .map(|directive| match directive.split_once('=') {
            Some((name, value))
                if matches!(
                    name.trim().to_ascii_lowercase().as_str(),
                    "max-age" | "s-maxage"
                ) =>
            {
                let digits = value.trim().trim_matches('"');
                match digits.parse::<u64>() {
                    Ok(v) if v <= 1 << 31 => directive.to_owned(),
                    Err(_) if !digits.bytes().all(|b| b.is_ascii_digit()) || digits.is_empty() => {
                        directive.to_owned()
                    }
                    _ => format!("{}={}", name.trim(), 1u64 << 31),
                }
            }
            _ => directive.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Freshness allowed by the response headers, capped by `cap`: `(fresh for —
/// `None` = do not store —, private, stale-if-error)`.
pub(super) fn freshness(
    cache_control: Option<&str>,
    expires: Option<&str>,
    cap: Duration,
) -> (Option<Duration>, bool, Option<Duration>) {
    let directives = Directives::parse(cache_control);
    let cache_control = cache_control.map(clamp_deltas);
    let mut response = http::Response::builder().status(200);
    for (name, value) in [
        ("cache-control", cache_control.as_deref()),
        ("expires", expires),
    ] {
        if let Some(v) = value.and_then(|v| http::HeaderValue::from_str(v).ok()) {
            response = response.header(name, v);
        }
    }
    let (Ok(response), Ok(request)) = (response.body(()), http::Request::get("/").body(())) else {
        return (None, directives.private, directives.stale_if_error);
    };
    let now = SystemTime::now();
    let policy = CachePolicy::new_options(
        &request,
        &response,
        now,
        CacheOptions {
            // A private response is stored for one client only: judged as a
            // single-user cache would (`private` allowed, `s-maxage` ignored).
            shared: !directives.private,
            cache_heuristic: 0.0,
            ..CacheOptions::default()
        },
    );
    let ttl = if !policy.is_storable() {
        Duration::ZERO
    } else if directives.explicit || directives.no_cache || expires.is_some() {
        policy.time_to_live(now)
    } else {
        cap
    };
    let ttl = ttl.min(cap);
    let ttl = (!ttl.is_zero()).then_some(ttl);
    (ttl, directives.private, directives.stale_if_error)
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use actix_web::web;

    use super::*;
    use crate::query::upstream::cache::Entry;

    #[test]
    fn cache_control_rules() {
        let cap = Duration::from_secs(60);
        assert_eq!(
            freshness(Some("max-age=10"), None, cap).0,
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            freshness(Some("max-age=10, s-maxage=20"), None, cap).0,
            Some(Duration::from_secs(20))
        );
        assert_eq!(
            freshness(Some("max-age=600"), None, cap).0,
            Some(cap),
            "capped"
        );
        assert_eq!(freshness(Some("no-store"), None, cap).0, None);
        assert_eq!(freshness(Some("no-cache"), None, cap).0, None);
        assert_eq!(freshness(Some("max-age=0"), None, cap).0, None);
        let (ttl, private, _) = freshness(Some("private, max-age=5"), None, cap);
        assert_eq!((ttl, private), (Some(Duration::from_secs(5)), true));
        assert_eq!(
            freshness(None, None, cap).0,
            Some(cap),
            "no headers: the configured cap"
        );
        let past = "Sat, 01 Jan 2000 00:00:00 GMT";
        assert_eq!(freshness(None, Some(past), cap).0, None, "expired");
        assert_eq!(
            freshness(Some("max-age=5, stale-if-error=7"), None, cap).2,
            Some(Duration::from_secs(7))
        );
        // Huge values are taken as 2^31 s (RFC 9111 §1.2.2) and never
        // overflow the freshness arithmetic.
        let (ttl, _, stale) = freshness(
            Some("max-age=5, stale-if-error=18446744073709551615"),
            None,
            cap,
        );
        let stale = stale.expect("stale-if-error");
        assert_eq!(
            freshness(Some("max-age=18446744073709551616"), None, cap).0,
            Some(cap),
            "a max-age beyond 64 bits is 2^31 s, then capped"
        );
        assert_eq!(stale, Duration::from_secs(1 << 31));
        let entry = Entry {
            status: 200,
            content_type: None,
            body: web::Bytes::new(),
            stored_at: Instant::now(),
            fresh_for: ttl.expect("fresh"),
            stale_for: stale,
            private: false,
        };
        assert!(entry.is_usable_stale());
    }
}
