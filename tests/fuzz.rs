//! Property-based fuzzing (proptest) of every parser of outside input:
//! callback URLs, `Retry-After` and rate-limit headers, JWTs, idempotency
//! keys and path templates. Each property says "never panics" plus an
//! invariant a user relies on. Case counts are kept small so the whole file
//! runs in a few seconds; raise them with `PROPTEST_CASES=100000` when
//! hunting.

use std::time::Duration;

use hookrelay::auth::JwtKeys;
use hookrelay::config::Settings;
use hookrelay::domain::{CallbackUrl, IdempotencyKey};
use hookrelay::http::body::parse_retry_after;
use hookrelay::integration::resilience::VendorLimit;
use hookrelay::integration::PathTemplate;
use hookrelay::security::{is_private_host, CallbackPolicy};
use proptest::prelude::*;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use secrecy::SecretString;
use serde_json::{json, Value};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Strings that look like URLs some of the time: a scheme, an authority made
/// of URL-ish characters (IPv4/IPv6 literals, userinfo, ports, percent
/// escapes) and a tail.
fn url_like() -> impl Strategy<Value = String> {
    let scheme = prop_oneof![
        Just("http://"),
        Just("https://"),
        Just("HTTP://"),
        Just("ftp://"),
        Just("//"),
        Just("")
    ];
    let host = prop_oneof![
        "[a-z0-9.-]{0,30}",
        "[0-9.]{1,20}",
        r"\[[0-9a-fA-F:.]{0,40}\]",
        "[a-z0-9@:%._~\\[\\]-]{0,40}",
        Just("localhost".to_owned()),
        Just("127.0.0.1".to_owned()),
        Just("0x7f.1".to_owned()),
        Just("[::ffff:169.254.169.254]".to_owned()),
        any::<String>(),
    ];
    let tail = prop_oneof!["(:[0-9]{0,6})?(/[ -~]{0,30})?", any::<String>()];
    (scheme, host, tail).prop_map(|(s, h, t)| format!("{s}{h}{t}"))
}

proptest! {
    #![proptest_config(config())]

    /// A callback URL that is accepted under the default (strict) policy is
    /// http(s), within the length cap, without credentials or fragment, and
    /// its host as parsed is not a local or non-public address.
    #[test]
    fn callback_urls(input in url_like()) {
        let strict = CallbackPolicy::default();
        if let Ok(url) = CallbackUrl::parse(&input, 2048, &strict) {
            prop_assert!(input.len() <= 2048);
            let parsed = url::Url::parse(url.as_str()).expect("re-parses");
            prop_assert!(matches!(parsed.scheme(), "http" | "https"));
            prop_assert!(parsed.username().is_empty() && parsed.password().is_none());
            prop_assert!(parsed.fragment().is_none());
            let host = parsed.host().expect("host");
            prop_assert!(!is_private_host(&host), "{} accepted", input);
            prop_assert!(
                hookrelay::security::check_literal_host(url.as_str(), &strict).is_ok(),
                "intake and send-time checks agree on {}", input
            );
        }
        let https = CallbackPolicy { https_only: true, ..CallbackPolicy::default() };
        if let Ok(url) = CallbackUrl::parse(&input, 2048, &https) {
            prop_assert!(url.as_str().starts_with("https://"));
        }
        let open = CallbackPolicy { allow_private: true, ..CallbackPolicy::default() };
        let short = CallbackUrl::parse(&input, 8, &open);
        prop_assert!(short.is_err() || input.len() <= 8);
    }

    /// `Retry-After`: never panics; delay-seconds parse exactly, and digits
    /// beyond a u64 mean the longest wait; anything that is neither a number
    /// of seconds nor an HTTP-date is `None`.
    #[test]
    fn retry_after_values(input in prop_oneof![any::<String>(), "[0-9]{1,25}", "[ -~]{0,40}"]) {
        let now = chrono::Utc::now();
        let parsed = parse_retry_after(&input, now);
        let trimmed = input.trim();
        let digits = !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit());
        if let Ok(secs) = trimmed.parse::<u64>() {
            prop_assert_eq!(parsed, Some(Duration::from_secs(secs)));
        } else if digits {
            prop_assert_eq!(parsed, Some(Duration::MAX));
        }
        if trimmed.parse::<u64>().is_err()
            && !digits
            && chrono::DateTime::parse_from_rfc2822(trimmed).is_err()
        {
            prop_assert_eq!(parsed, None);
        }
    }

    /// Rate-limit headers (`Retry-After`, `X-RateLimit-*`, IETF `RateLimit`)
    /// with arbitrary values, including huge and non-finite numbers, never
    /// panic, and the pause they ask for is a real duration.
    #[test]
    fn rate_limit_headers(
        status in prop_oneof![Just(200u16), Just(429), Just(503), 100u16..600],
        retry_after in prop_oneof!["[ -~]{0,30}", "[0-9]{1,25}", Just("1e300".to_owned())],
        remaining in prop_oneof!["[ -~]{0,20}", "[0-9]{1,22}", Just("-1".to_owned())],
        reset in prop_oneof![
            "[ -~]{0,20}", "[0-9]{1,25}(\\.[0-9]{1,5})?",
            Just("1e300".to_owned()), Just("inf".to_owned()), Just("NaN".to_owned()), Just("-0".to_owned())
        ],
        ietf in prop_oneof![
            "[ -~]{0,60}",
            "(limit|remaining|reset|r|t|policy)=[0-9e.+-]{0,25}([,;] ?(remaining|reset|r|t)=[0-9e.+-]{0,25}){0,3}"
        ],
    ) {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("retry-after", &retry_after),
            ("x-ratelimit-remaining", &remaining),
            ("x-ratelimit-reset", &reset),
            ("ratelimit", &ietf),
        ] {
            if let Ok(v) = HeaderValue::from_str(value) {
                headers.insert(HeaderName::from_static(name), v);
            }
        }
        if let Some(limit) = VendorLimit::from_headers(status, &headers) {
            if let Some(pause) = limit.pause() {
                prop_assert!(pause.as_secs_f64().is_finite());
            }
        }
    }

    /// JWT verification: arbitrary text never authenticates and never
    /// panics; a token we minted authenticates exactly when its `sub` is 1 to
    /// 255 bytes, and a tampered token never does.
    #[test]
    fn jwts(
        garbage in prop_oneof![any::<String>(), "[A-Za-z0-9_-]{0,40}\\.[A-Za-z0-9_-]{0,80}\\.[A-Za-z0-9_-]{0,50}"],
        sub in prop_oneof![any::<String>(), "[a-z]{0,300}"],
        roles in proptest::collection::vec(any::<String>(), 0..4),
        flip in any::<prop::sample::Index>(),
    ) {
        let mut auth = Settings::defaults().expect("defaults").auth;
        auth.jwt_secret = SecretString::from("0123456789abcdef0123456789abcdef");
        auth.leeway_s = 0;
        let keys = JwtKeys::new(&auth).expect("keys");
        prop_assert!(keys.verify(&garbage).is_err());
        let token = keys.mint(&sub, &roles, 600).expect("mint");
        let verified = keys.verify(&token);
        prop_assert_eq!(verified.is_ok(), !sub.is_empty() && sub.len() <= 255);
        if let Ok(p) = verified {
            prop_assert_eq!(p.client_id, sub);
        }
        // Swap one character of the token for another token character.
        let mut bytes = token.into_bytes();
        let at = flip.index(bytes.len());
        bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).expect("ascii");
        prop_assert!(keys.verify(&tampered).is_err(), "tampered at {}", at);
    }

    /// Idempotency keys: accepted exactly when 1 to 255 visible ASCII
    /// characters (space included), and kept as sent.
    #[test]
    fn idempotency_keys(input in prop_oneof![any::<String>(), "[ -~]{0,300}"]) {
        let ok = !input.is_empty()
            && input.len() <= IdempotencyKey::MAX_LEN
            && input.bytes().all(|b| (0x20..0x7f).contains(&b));
        match IdempotencyKey::parse(&input) {
            Ok(k) => {
                prop_assert!(ok);
                prop_assert_eq!(k.as_str(), input.as_str());
            }
            Err(_) => prop_assert!(!ok),
        }
    }

    /// Path templates: parsing arbitrary text never panics; a filled path
    /// keeps the template's literal structure, every param value stays one
    /// segment (no unescaped `/`, `?`, `#` or `%`-sequence of its own), and
    /// decodes back to the value.
    #[test]
    fn path_templates(
        template in any::<String>(),
        value in prop_oneof![any::<String>(), "[/?#%.a-z ]{0,20}"],
    ) {
        let _ = PathTemplate::parse(&template);
        let t = PathTemplate::parse("/v1/things/{id}/parts").expect("parse");
        let params = json!({ "id": value }).as_object().cloned().expect("object");
        match t.fill(&params) {
            Ok(path) => {
                let encoded = path
                    .strip_prefix("/v1/things/")
                    .and_then(|p| p.strip_suffix("/parts"))
                    .expect("the literals are kept");
                prop_assert!(!encoded.contains(['/', '?', '#']), "{}", path);
                prop_assert!(!encoded.is_empty());
                let decoded = percent_encoding::percent_decode_str(encoded)
                    .decode_utf8()
                    .expect("utf-8");
                prop_assert_eq!(decoded.as_ref(), value.as_str());
                prop_assert!(value != "." && value != "..");
                // The base URL join keeps the path: no dot segment is resolved.
                let url = url::Url::parse(&format!("https://api.vendor.example{path}")).expect("url");
                prop_assert_eq!(url.path(), path.as_str());
            }
            Err((field, _)) => {
                prop_assert_eq!(field, "params.id");
                prop_assert!(value.is_empty() || value == "." || value == "..");
            }
        }
        let extra = json!({ "id": "1", "other": Value::Null }).as_object().cloned().expect("object");
        prop_assert!(t.fill(&extra).is_err(), "unknown params are refused");
    }
}
