//! Domain newtypes: values that are valid by construction.
//!
//! Request fields are parsed into these at the edge (parse, don't validate);
//! the rest of the code can rely on them without re-checking.

use std::fmt;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A callback URL: absolute `http`/`https`, with a host, no credentials, no
/// fragment, at most `max_len` bytes, and (unless private callbacks are
/// allowed) not `localhost` or a literal loopback/private/link-local address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackUrl(url::Url);

impl CallbackUrl {
    /// Parses and checks a callback URL.
    ///
    /// # Errors
    /// A sentence saying what is wrong (the caller names the field).
    pub fn parse(
        s: &str,
        max_len: usize,
        policy: &crate::security::CallbackPolicy,
    ) -> Result<Self, String> {
        if s.len() > max_len {
            return Err(format!("must be at most {max_len} bytes"));
        }
        let url = url::Url::parse(s).map_err(|e| format!("is not a valid absolute URL ({e})"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err("must use http or https".into());
        }
        if policy.https_only && url.scheme() != "https" {
            return Err("must use https (security.https_only_callbacks)".into());
        }
        let host = url.host().ok_or_else(|| "must have a host".to_owned())?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err("must not contain credentials".into());
        }
        if url.fragment().is_some() {
            return Err("must not contain a fragment".into());
        }
        if !policy.permits_host(&host) {
            return Err(
                "must not point to localhost or a private, loopback or link-local address".into(),
            );
        }
        Ok(CallbackUrl(url))
    }

    /// The URL as a string.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

/// A client-chosen `Idempotency-Key`: 1 to 255 visible ASCII characters
/// (`docs/reference.md`; the IETF httpapi idempotency-key draft uses a string).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Longest accepted key, characters.
    pub const MAX_LEN: usize = 255;

    /// Parses a header value.
    ///
    /// # Errors
    /// A sentence saying what is wrong.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("must not be empty".into());
        }
        if s.len() > Self::MAX_LEN {
            return Err(format!("must be at most {} characters", Self::MAX_LEN));
        }
        if !s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return Err("must be visible ASCII characters".into());
        }
        Ok(IdempotencyKey(s.to_owned()))
    }

    /// The key.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Whether Postgres can store `t` and it is a plausible API time: years 1 to
/// 9999. chrono also reads signed years (`-5000-01-01T00:00:00Z`) and
/// microsecond counts far outside that, which Postgres refuses (SQLSTATE
/// 22008) — a 422 for the caller, not a database error.
pub fn storable_time(t: &chrono::DateTime<chrono::Utc>) -> bool {
    (1..=9999).contains(&chrono::Datelike::year(t))
}

/// Refuses a text parameter containing NUL (Postgres text cannot hold it), so
/// the caller gets a 422 naming `field` instead of a database error.
///
/// # Errors
/// 422 naming `field`.
pub fn reject_nul_param(field: &str, value: Option<&str>) -> Result<(), crate::error::ApiError> {
    match value {
        Some(v) if v.contains('\0') => Err(crate::error::ApiError::validation(
            field,
            "must not contain the NUL character",
        )),
        _ => Ok(()),
    }
}

/// A command's lifecycle (`docs/reference.md`, "The status document").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CommandStatus {
    /// Stored in the outbox, not yet picked up.
    Accepted,
    /// A worker is calling (or retrying) the upstream.
    InProgress,
    /// The upstream answered 2xx.
    Succeeded,
    /// The upstream call ended without success.
    Failed,
}

impl CommandStatus {
    /// The database/wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            CommandStatus::Accepted => "accepted",
            CommandStatus::InProgress => "in_progress",
            CommandStatus::Succeeded => "succeeded",
            CommandStatus::Failed => "failed",
        }
    }

    /// Parses the database/wire spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "accepted" => Some(CommandStatus::Accepted),
            "in_progress" => Some(CommandStatus::InProgress),
            "succeeded" => Some(CommandStatus::Succeeded),
            "failed" => Some(CommandStatus::Failed),
            _ => None,
        }
    }

    /// Whether the upstream call has ended.
    pub fn is_terminal(self) -> bool {
        matches!(self, CommandStatus::Succeeded | CommandStatus::Failed)
    }
}

impl fmt::Display for CommandStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A callback delivery's state: `pending | delivered | dead_lettered`
/// (`docs/reference.md`, "The status document").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Not yet delivered; attempts may be scheduled.
    Pending,
    /// A 2xx answer was received.
    Delivered,
    /// Given up: schedule exhausted or the receiver answered 410 Gone.
    DeadLettered,
}

impl DeliveryStatus {
    /// The database/wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::DeadLettered => "dead_lettered",
        }
    }

    /// Parses the database/wire spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(DeliveryStatus::Pending),
            "delivered" => Some(DeliveryStatus::Delivered),
            "dead_lettered" => Some(DeliveryStatus::DeadLettered),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strict() -> crate::security::CallbackPolicy {
        crate::security::CallbackPolicy::default()
    }

    #[test]
    fn callback_url_accepts_public_https() {
        let u =
            CallbackUrl::parse("https://partner.example/hooks?x=1", 2048, &strict()).expect("ok");
        assert_eq!(u.as_str(), "https://partner.example/hooks?x=1");
    }

    #[test]
    fn callback_url_rejections() {
        let cases = [
            ("ftp://partner.example/", "http or https"),
            ("not a url", "valid absolute URL"),
            ("https://user:pw@partner.example/", "credentials"),
            ("https://partner.example/#frag", "fragment"),
            ("http://localhost:9000/", "localhost"),
            ("http://127.0.0.1/", "private"),
            ("http://[::1]/", "private"),
            ("http://10.0.0.8/", "private"),
            ("http://169.254.169.254/latest/meta-data", "private"),
        ];
        for (input, expected) in cases {
            let err = CallbackUrl::parse(input, 2048, &strict()).expect_err(input);
            assert!(err.contains(expected), "{input}: {err}");
        }
        let long = format!("https://partner.example/{}", "a".repeat(3000));
        assert!(CallbackUrl::parse(&long, 2048, &strict()).is_err());
    }

    #[test]
    fn private_callbacks_allowed_when_configured() {
        let open = crate::security::CallbackPolicy {
            allow_private: true,
            ..Default::default()
        };
        assert!(CallbackUrl::parse("http://127.0.0.1:9000/hook", 2048, &open).is_ok());
        let partner = crate::security::CallbackPolicy {
            allowed: vec!["10.20.0.0/16".parse().expect("net")],
            https_only: true,
            ..Default::default()
        };
        assert!(CallbackUrl::parse("https://10.20.3.4/hook", 2048, &partner).is_ok());
        assert!(CallbackUrl::parse("https://10.30.3.4/hook", 2048, &partner).is_err());
        let err =
            CallbackUrl::parse("http://partner.example/hook", 2048, &partner).expect_err("http");
        assert!(err.contains("https"), "{err}");
    }

    #[test]
    fn idempotency_key_bounds() {
        assert!(IdempotencyKey::parse("order-42").is_ok());
        assert!(IdempotencyKey::parse("").is_err());
        assert!(IdempotencyKey::parse(&"k".repeat(255)).is_ok());
        assert!(IdempotencyKey::parse(&"k".repeat(256)).is_err());
        assert!(IdempotencyKey::parse("tab\tkey").is_err());
        assert!(IdempotencyKey::parse("ключ").is_err());
    }

    #[test]
    fn statuses_round_trip() {
        for s in [
            CommandStatus::Accepted,
            CommandStatus::InProgress,
            CommandStatus::Succeeded,
            CommandStatus::Failed,
        ] {
            assert_eq!(CommandStatus::parse(s.as_str()), Some(s));
        }
        for s in [
            DeliveryStatus::Pending,
            DeliveryStatus::Delivered,
            DeliveryStatus::DeadLettered,
        ] {
            assert_eq!(DeliveryStatus::parse(s.as_str()), Some(s));
        }
    }
}
