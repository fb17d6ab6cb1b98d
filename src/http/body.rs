//! Small HTTP helpers shared by the upstream client and the webhook sender,
//! and the request-body helpers shared by the write and read handlers
//! (media type check, size-limited read, JSON parsing that names the field).

use std::time::Duration;

use actix_web::http::header;
use actix_web::{web, HttpRequest};
use futures_util::StreamExt;

use crate::http::error::ApiError;

/// Parses a `Retry-After` value: delay-seconds (`1*DIGIT`) or an HTTP-date
/// (RFC 9110 §10.2.3). A date in the past means zero; delay-seconds too large
/// for a `u64` mean [`Duration::MAX`] (callers cap the wait, so "longer than
/// anything" waits the cap rather than being ignored). `None` if unparseable.
pub fn parse_retry_after(value: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Digits only, but more than a u64 holds.
        return Some(Duration::MAX);
    }
    let date = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let delta = date.with_timezone(&chrono::Utc) - now;
    Some(delta.to_std().unwrap_or(Duration::ZERO))
}

/// The `Retry-After` header of a response, if present and parseable.
pub fn retry_after_of(resp: &reqwest::Response) -> Option<Duration> {
    resp.headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, chrono::Utc::now()))
}

/// Reads at most `limit` bytes of a response body; the flag says whether more
/// was sent and cut off. The connection stays reusable when the body is read
/// to its end.
///
/// # Errors
/// The transport error if the body cannot be read (reset, timeout).
pub async fn read_body_limited(
    mut resp: reqwest::Response,
    limit: usize,
) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut buf = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        let room = limit.saturating_sub(buf.len());
        if chunk.len() > room {
            buf.extend_from_slice(&chunk[..room]);
            return Ok((buf, true));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok((buf, false))
}

/// `bytes` as UTF-8 text, cut back to a character boundary if a limit split a
/// character, with NUL replaced by U+FFFD (Postgres text and jsonb cannot
/// store NUL; a vendor's binary body must not make its job unrecordable).
pub fn lossy_text(bytes: &[u8]) -> String {
    let text = match std::str::from_utf8(bytes) {
        Ok(s) => s.to_owned(),
        Err(e) if e.error_len().is_none() => {
            String::from_utf8_lossy(&bytes[..e.valid_up_to()]).into_owned()
        }
        Err(_) => String::from_utf8_lossy(bytes).into_owned(),
    };
    strip_nul(text)
}

/// `s` with NUL replaced by U+FFFD.
pub fn strip_nul(s: String) -> String {
    if s.contains('\0') {
        s.replace('\0', "\u{FFFD}")
    } else {
        s
    }
}

/// Replaces NUL in every string and key of a JSON value (see [`lossy_text`]).
pub fn strip_nul_json(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::String(s) => Value::String(strip_nul(s)),
        Value::Array(a) => Value::Array(a.into_iter().map(strip_nul_json).collect()),
        Value::Object(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| (strip_nul(k), strip_nul_json(v)))
                .collect(),
        ),
        other => other,
    }
}

/// A short description of a transport error: `timeout`, `connect` or the
/// error's own message.
pub fn describe_transport_error(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timeout".to_owned()
    } else if e.is_connect() {
        format!("connect: {}", root_cause(e))
    } else {
        format!("network: {}", root_cause(e))
    }
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// Refuses a text parameter containing NUL (Postgres text cannot hold it), so
/// the caller gets a 422 naming `field` instead of a database error.
///
/// # Errors
/// 422 naming `field`.
pub fn reject_nul_param(field: &str, value: Option<&str>) -> Result<(), ApiError> {
    match value {
        Some(v) if v.contains('\0') => Err(ApiError::validation(
            field,
            "must not contain the NUL character",
        )),
        _ => Ok(()),
    }
}

/// Accepts a request whose `Content-Type` is absent, `application/json` or a
/// `+json` type (RFC 6839 §3.1); parameters such as `charset` are ignored.
///
/// # Errors
/// [`ApiError::UnsupportedMediaType`] (415) for any other media type.
pub fn check_json_content_type(req: &HttpRequest) -> Result<(), ApiError> {
    let Some(ct) = req.headers().get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
    let essence = ct.split(';').next().unwrap_or("").trim();
    if essence == "application/json" || essence.ends_with("+json") {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType)
    }
}

/// Reads the body up to `limit` bytes; 413 beyond (checked against
/// `Content-Length` first, then while streaming).
///
/// # Errors
/// [`ApiError::PayloadTooLarge`] (413) past `limit`, [`ApiError::BadRequest`]
/// (400) if the body cannot be read.
pub async fn read_limited(
    mut payload: web::Payload,
    limit: usize,
) -> Result<web::BytesMut, ApiError> {
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| match e {
            actix_web::error::PayloadError::Overflow => ApiError::PayloadTooLarge { limit },
            other => ApiError::BadRequest {
                field: None,
                message: format!("could not read the request body: {other}"),
            },
        })?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Parses JSON, naming the field at fault on error (serde_path_to_error).
///
/// # Errors
/// [`ApiError::Validation`] (422) naming the field for well-formed JSON of the
/// wrong shape, [`ApiError::BadRequest`] (400) for an empty body or malformed JSON.
pub fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::BadRequest {
            field: None,
            message: "the request body must be a JSON object".into(),
        });
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let field = (path != ".").then_some(path);
        if inner.is_data() {
            // Wrong type, unknown, missing or duplicated field: the JSON is
            // fine, the content is not. serde reports a missing or duplicated
            // field at the enclosing object, naming it only in its message
            // (an unknown one's path already ends with it).
            let field = match (field, named_field(&inner.to_string())) {
                (Some(at), Some(name)) if at != name && !at.ends_with(&format!(".{name}")) => {
                    Some(format!("{at}.{name}"))
                }
                (at, name) => at.or(name),
            };
            ApiError::Validation {
                field: field.unwrap_or_else(|| "body".into()),
                message: inner.to_string(),
            }
        } else {
            ApiError::BadRequest {
                field,
                message: format!("malformed JSON: {inner}"),
            }
        }
    })
}

/// The field named by serde's "missing field `x`", "unknown field `x`" and
/// "duplicate field `x`" messages.
fn named_field(message: &str) -> Option<String> {
    let rest = message
        .strip_prefix("missing field `")
        .or_else(|| message.strip_prefix("unknown field `"))
        .or_else(|| message.strip_prefix("duplicate field `"))?;
    Some(rest.split('`').next()?.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-21T10:00:00Z")
            .expect("date")
            .with_timezone(&chrono::Utc);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Sat, 21 Nov 2026 10:00:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Sat, 21 Nov 2026 09:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
        assert_eq!(parse_retry_after("", now), None);
        // Too large for 64 bits: at least any cap, never ignored.
        assert_eq!(
            parse_retry_after("99999999999999999999", now),
            Some(Duration::MAX)
        );
        assert_eq!(
            parse_retry_after("18446744073709551615", now),
            Some(Duration::from_secs(u64::MAX))
        );
        assert_eq!(
            parse_retry_after(&"9".repeat(400), now),
            Some(Duration::MAX)
        );
        // A date far in the future is a long wait too (capped by the caller).
        assert!(parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT", now)
            .is_some_and(|d| d > Duration::from_secs(200 * 365 * 86_400)));
    }

    #[test]
    fn nul_never_survives() {
        assert_eq!(lossy_text(b"a\0b"), "a\u{FFFD}b");
        let v = strip_nul_json(serde_json::json!({"k\u{0}": ["x\u{0}", 1]}));
        assert_eq!(v, serde_json::json!({"k\u{FFFD}": ["x\u{FFFD}", 1]}));
    }

    #[test]
    fn lossy_text_cuts_split_characters() {
        let s = "héllo".as_bytes();
        assert_eq!(lossy_text(&s[..2]), "h");
        assert_eq!(lossy_text(s), "héllo");
    }
}
