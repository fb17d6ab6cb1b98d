//! Domain newtypes: values that are valid by construction.
//!
//! Request fields are parsed into these at the edge (parse, don't validate);
//! the rest of the code can rely on them without re-checking.

use std::fmt;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A callback URL: absolute `http`/`https`, with a host, not port 0, no
/// credentials, no fragment, at most `max_len` bytes, and (unless private
/// callbacks are allowed) not `localhost` or a literal non-public address
/// ([`crate::security::is_private_ip`]).
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
        // Port 0 is no service's port; connecting to it is platform-defined.
        if url.port() == Some(0) {
            return Err("must not use port 0".into());
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
            ("http://[::ffff:0:127.0.0.1]/", "private"),
            ("http://[::ffff:0:0:127.0.0.1]/", "private"),
            ("http://[100::1]/", "private"),
            ("http://[fec0::1]/", "private"),
            ("https://partner.example:0/", "port 0"),
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
        assert!(
            CallbackUrl::parse("http://127.0.0.1:0/hook", 2048, &open).is_err(),
            "port 0 is never a callback port"
        );
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

/// JSON text kept exactly as it was received: a client's `params` and `body`,
/// a vendor's answer. Stored as `text` and sent on byte for byte, so numbers
/// are the sender's numbers (`1.7976931348623157e308`, `0.30000000000000004`,
/// `-0.0`, integers beyond 2^64 and exponents all survive unchanged) and a
/// seal over the text verifies bit for bit after a database round trip. It
/// is never re-parsed into floats on the way (RFC 8259 §6 leaves number
/// precision to implementations; hookrelay keeps the text instead of choosing).
///
/// Serialising embeds the text verbatim (serde_json's `RawValue`); so a
/// document that contains a `JsonText` carries the original bytes.
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JsonText(Box<serde_json::value::RawValue>);

impl JsonText {
    /// Checks that `text` is one JSON value and keeps it as it is (leading and
    /// trailing whitespace included).
    ///
    /// # Errors
    /// serde_json's syntax error when `text` is not valid JSON.
    pub fn parse(text: String) -> Result<JsonText, serde_json::Error> {
        serde_json::value::RawValue::from_string(text).map(JsonText)
    }

    /// JSON `null`.
    pub fn null() -> JsonText {
        JsonText::from_value(&serde_json::Value::Null)
    }

    /// `s` as a JSON string.
    pub fn string(s: &str) -> JsonText {
        JsonText::from_value(&serde_json::Value::String(s.to_owned()))
    }

    /// The compact serialisation of `value` (for values hookrelay builds itself).
    pub fn from_value(value: &serde_json::Value) -> JsonText {
        JsonText(serde_json::value::to_raw_value(value).unwrap_or_else(|_| JsonText::raw_null()))
    }

    fn raw_null() -> Box<serde_json::value::RawValue> {
        serde_json::value::RawValue::from_string("null".to_owned())
            .unwrap_or_else(|_| unreachable!("`null` is JSON"))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        self.0.get()
    }

    /// Whether the text is JSON `null` (ignoring surrounding whitespace).
    pub fn is_null(&self) -> bool {
        self.as_str().trim() == "null"
    }

    /// Nesting depth counted on the text, without parsing numbers: a scalar is
    /// 0, `[]` and `{"a":1}` are 1.
    pub fn depth(&self) -> usize {
        json_text_depth(self.as_str())
    }
}

/// Nesting depth of JSON text (brackets outside string literals); see
/// [`JsonText::depth`].
pub fn json_text_depth(text: &str) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for b in text.bytes() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

impl PartialEq for JsonText {
    /// Equal when the texts are equal byte for byte.
    fn eq(&self, other: &JsonText) -> bool {
        self.as_str() == other.as_str()
    }
}

impl fmt::Debug for JsonText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for JsonText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod json_text_tests {
    use super::*;

    #[test]
    fn keeps_the_text_and_embeds_it_verbatim() {
        let text = r#"{"x": -965.56748141547666, "y": 1.7976931348623157e308, "z": -0.0, "i": 123456789012345678901234567890, "e": 1e400}"#;
        let j = JsonText::parse(text.to_owned()).expect("valid JSON");
        assert_eq!(j.as_str(), text);
        let doc = serde_json::to_string(&serde_json::json!({"k": 1})).expect("serialises");
        assert_eq!(doc, r#"{"k":1}"#);
        #[derive(Serialize, Deserialize)]
        struct Wrap {
            body: JsonText,
        }
        let out = serde_json::to_string(&Wrap { body: j.clone() }).expect("serialises");
        assert_eq!(out, format!(r#"{{"body":{text}}}"#));
        let back: Wrap = serde_json::from_str(&out).expect("parses");
        assert_eq!(back.body, j);
    }

    #[test]
    fn depth_ignores_brackets_in_strings() {
        assert_eq!(json_text_depth("1"), 0);
        assert_eq!(json_text_depth("[]"), 1);
        assert_eq!(json_text_depth(r#"{"a":[1,{"b":"[[[\"]]]"}]}"#), 3);
        assert!(JsonText::parse("[1,".to_owned()).is_err());
        assert!(JsonText::null().is_null());
        assert_eq!(JsonText::string("a\"b").as_str(), r#""a\"b""#);
    }
}
