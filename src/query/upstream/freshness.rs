//! How long an upstream response may be served (RFC 9111 freshness).

use std::time::Duration;

/// Freshness allowed by the response headers, capped by `cap`; `None` = do not store.
pub(super) fn freshness(
    cache_control: Option<&str>,
    expires: Option<&str>,
    cap: Duration,
) -> (Option<Duration>, bool, Option<Duration>) {
    let mut max_age = None;
    let mut s_maxage = None;
    let mut private = false;
    let mut stale_if_error = None;
    let mut no_store = false;
    for directive in cache_control.unwrap_or("").split(',') {
        let directive = directive.trim().to_ascii_lowercase();
        let (name, value) = match directive.split_once('=') {
            Some((n, v)) => (
                n.trim().to_owned(),
                Some(v.trim().trim_matches('"').to_owned()),
            ),
            None => (directive.clone(), None),
        };
        // RFC 9111 §1.2.2: a delta-seconds value too large to represent is
        // taken as 2^31, so later sums of durations cannot overflow.
        let secs = || {
            value
                .as_deref()
                .and_then(|v| v.parse::<u64>().ok())
                .map(|v| Duration::from_secs(v.min(1 << 31)))
        };
        match name.as_str() {
            // Not `return`: a later `private` must still be seen, so the
            // response is never handed to another client's coalesced request.
            "no-store" | "no-cache" => no_store = true,
            "private" => private = true,
            "max-age" => max_age = secs(),
            "s-maxage" => s_maxage = secs(),
            "stale-if-error" => stale_if_error = secs(),
            _ => {}
        }
    }
    if no_store {
        return (None, private, stale_if_error);
    }
    let allowed = if private {
        max_age
    } else {
        s_maxage.or(max_age)
    }
    .or_else(|| {
        let date = chrono::DateTime::parse_from_rfc2822(expires?.trim()).ok()?;
        Some(
            (date.with_timezone(&chrono::Utc) - chrono::Utc::now())
                .to_std()
                .unwrap_or(Duration::ZERO),
        )
    });
    let ttl = allowed.unwrap_or(cap).min(cap);
    if ttl.is_zero() {
        return (None, private, stale_if_error);
    }
    (Some(ttl), private, stale_if_error)
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
