//! The redaction layer: one place that decides what outside text may keep.
//!
//! Used wherever text that hookrelay does not control is stored or logged:
//! upstream results (`commands.result`, which is also the callback's
//! `data.result`), receiver answers in the attempt audit log
//! (`delivery_attempts.response_body`), `last_error` strings and the log
//! fields that carry them. It masks, with [`REDACTED`]:
//!
//! - **JSON fields** whose name (case-insensitive) is in
//!   `security.redact_fields`, or is a sensitive header name (below), at any
//!   depth of objects and arrays: the whole value is replaced.
//! - **Known secret values** wherever they appear as a substring: every
//!   integration credential (`credential.value_env`, and its token after an
//!   auth scheme such as `Bearer `), the JWT secret, and the configured
//!   encryption and MAC keys. Values shorter than [`MIN_SECRET_LEN`] bytes are
//!   not searched for (they would mask ordinary words). A value is found in
//!   the forms a vendor may echo it in, too: with any of its characters
//!   JSON-escaped (`\/` as PHP writes `/` by default, `\"`, `\\`, or
//!   `\uXXXX` in either hex case, RFC 8259 §7), percent-encoded (`%XX`, either
//!   case, RFC 3986 §2.1; `+` for a space as in form encoding), and in base64
//!   — standard and URL-safe alphabets, with and without padding (RFC 4648
//!   §4, §5) — including the part of it that does not depend on where the
//!   value starts inside a longer encoded text (e.g. `Basic` credentials).
//! - **Standard Webhooks signing secrets**: any `whsec_` followed by base64
//!   (its `+`, `/` and `=` also in JSON-escaped or percent-encoded form).
//!
//! Sensitive header names: `Authorization`, `Proxy-Authorization`, `Cookie`,
//! `Set-Cookie`, and each integration's credential header
//! ([`Redactor::is_sensitive_header`]).
//!
//! Text that parses as a JSON value is masked field by field on the text
//! itself: every byte that is not masked (numbers, spacing, key order) stays
//! as it was ([`Redactor::json_text`]); other text gets the substring rules
//! only (a truncated JSON body is text).

use std::borrow::Cow;
use std::collections::HashSet;

use base64::Engine;
use secrecy::ExposeSecret;

use crate::config::Settings;
use crate::domain::JsonText;
use crate::security::SECRET_PREFIX;

/// What a masked value is replaced with.
pub const REDACTED: &str = "[REDACTED]";

/// Header names always treated as sensitive (lowercase).
pub const SENSITIVE_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
];

/// Shortest known secret value searched for as a substring, bytes.
pub const MIN_SECRET_LEN: usize = 8;

/// Masks sensitive fields, headers and known secret values (module docs).
#[derive(Clone, Default)]
pub struct Redactor {
    /// Lowercase JSON field names to mask.
    fields: HashSet<String>,
    /// Lowercase header names to mask.
    headers: HashSet<String>,
    /// Known secret values and their base64 forms, longest first (so a value
    /// containing another is masked whole). Each is also matched with its
    /// characters JSON-escaped or percent-encoded ([`find_encoded`]).
    secrets: Vec<String>,
}

impl std::fmt::Debug for Redactor {
    /// Field and header names only, never the secret values.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor")
            .field("fields", &self.fields)
            .field("headers", &self.headers)
            .field("secrets", &self.secrets.len())
            .finish()
    }
}

impl Redactor {
    /// A redactor masking `fields` (JSON field names), the standard sensitive
    /// headers plus `headers`, and the known secret `values`.
    pub fn new<'a>(
        fields: impl IntoIterator<Item = &'a str>,
        headers: impl IntoIterator<Item = &'a str>,
        values: impl IntoIterator<Item = &'a str>,
    ) -> Redactor {
        let mut secrets: Vec<String> = Vec::new();
        for value in values {
            let value = value.trim();
            // "Bearer abc…": the token alone may be echoed too.
            let token = value
                .split_once(' ')
                .map(|(_, t)| t.trim())
                .filter(|t| t.len() >= MIN_SECRET_LEN);
            for v in std::iter::once(value).chain(token) {
                if v.len() < MIN_SECRET_LEN {
                    continue;
                }
                for form in std::iter::once(v.to_owned()).chain(base64_forms(v.as_bytes())) {
                    if form.len() >= MIN_SECRET_LEN && !secrets.contains(&form) {
                        secrets.push(form);
                    }
                }
            }
        }
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Redactor {
            fields: fields.into_iter().map(str::to_ascii_lowercase).collect(),
            headers: SENSITIVE_HEADERS
                .iter()
                .copied()
                .chain(headers)
                .map(str::to_ascii_lowercase)
                .collect(),
            secrets,
        }
    }

    /// The redactor of a configuration: `security.redact_fields`, every
    /// integration's credential header and value, the JWT secret, and the
    /// key material of `security.signing_key_encryption_keys` and
    /// `security.job_mac_keys`.
    pub fn from_settings(settings: &Settings) -> Redactor {
        let credentials: Vec<(&str, Option<&str>)> = settings
            .integrations
            .values()
            .filter_map(|i| i.credential.as_ref())
            .map(|c| {
                (
                    c.header.as_str(),
                    c.value.as_ref().map(|v| v.expose_secret()),
                )
            })
            .collect();
        let keys = settings
            .security
            .signing_key_encryption_keys
            .iter()
            .chain(&settings.security.job_mac_keys)
            .filter_map(|k| k.expose_secret().split_once(':').map(|(_, key)| key));
        Redactor::new(
            settings.security.redact_fields.iter().map(String::as_str),
            credentials.iter().map(|(h, _)| *h),
            credentials
                .iter()
                .filter_map(|(_, v)| *v)
                .chain(std::iter::once(settings.auth.jwt_secret.expose_secret()))
                .chain(keys),
        )
    }

    /// Whether a header of this name carries credentials (case-insensitive).
    pub fn is_sensitive_header(&self, name: &str) -> bool {
        self.headers.contains(&name.to_ascii_lowercase())
    }

    /// Whether a JSON field of this name is masked whole (case-insensitive):
    /// a configured field or a sensitive header name.
    pub fn is_sensitive_field(&self, name: &str) -> bool {
        let lower = name.to_ascii_lowercase();
        self.fields.contains(&lower) || self.headers.contains(&lower)
    }

    /// `value` as it may be logged: [`REDACTED`] for a sensitive header,
    /// else the value with known secrets masked.
    pub fn header<'a>(&self, name: &str, value: &'a str) -> Cow<'a, str> {
        if self.is_sensitive_header(name) {
            Cow::Borrowed(REDACTED)
        } else {
            self.mask_secrets(value)
        }
    }

    /// Masks outside text: if it is a JSON object or array, field by field
    /// (see [`Redactor::json_text`]: everything that is not masked keeps its
    /// exact bytes); in any case known secrets and `whsec_` secrets.
    pub fn text<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let trimmed = text.trim_start();
        if trimmed.starts_with('{') || trimmed.starts_with('[') {
            match JsonMasker::run(self, text) {
                Ok(None) => return Cow::Borrowed(text),
                Ok(Some(masked)) => return Cow::Owned(masked),
                Err(()) => {} // not JSON after all: text rules below
            }
        }
        self.mask_secrets(text)
    }

    /// Masks JSON text — fields whose name is sensitive (at any depth)
    /// replaced whole, known secrets and `whsec_` secrets masked inside
    /// strings and keys — working on the text itself, so every byte that is not
    /// masked (numbers above all: `1.7976931348623157e308`, `-0.0`, `1e400`)
    /// stays exactly as the vendor sent it.
    pub fn json_text(&self, json: &JsonText) -> JsonText {
        match JsonMasker::run(self, json.as_str()) {
            Ok(None) => json.clone(),
            Ok(Some(masked)) => JsonText::parse(masked)
                .unwrap_or_else(|_| JsonText::string(&self.mask_secrets(json.as_str()))),
            Err(()) => match self.mask_secrets(json.as_str()) {
                Cow::Borrowed(_) => json.clone(),
                Cow::Owned(masked) => {
                    JsonText::parse(masked.clone()).unwrap_or_else(|_| JsonText::string(&masked))
                }
            },
        }
    }

    /// [`Redactor::text`] for an optional string.
    pub fn opt_text(&self, text: Option<String>) -> Option<String> {
        text.map(|t| match self.text(&t) {
            Cow::Borrowed(_) => t,
            Cow::Owned(m) => m,
        })
    }

    /// Known secret values (in every form the module docs list) and
    /// `whsec_` secrets in `text`, masked.
    fn mask_secrets<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out: Cow<'a, str> = Cow::Borrowed(text);
        for secret in &self.secrets {
            if let Some(masked) = mask_encoded(&out, secret) {
                out = Cow::Owned(masked);
            }
        }
        if out.contains(SECRET_PREFIX) {
            out = Cow::Owned(mask_whsec(&out));
        }
        out
    }
}

/// The base64 forms of a secret value: standard and URL-safe alphabets, with
/// and without padding, and for each alphabet the characters that encode
/// only the value's own bits when it starts 0, 1 or 2 bytes into a longer
/// encoded text (the first and last characters, which mix in neighbouring
/// bytes, are left out).
fn base64_forms(value: &[u8]) -> Vec<String> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let mut forms = vec![
        STANDARD.encode(value),
        STANDARD_NO_PAD.encode(value),
        URL_SAFE.encode(value),
        URL_SAFE_NO_PAD.encode(value),
    ];
    for offset in 0..3usize {
        let mut shifted = vec![0u8; offset];
        shifted.extend_from_slice(value);
        // Characters 0..skip carry bits of the `offset` bytes before the
        // value; characters from `end` on carry bits of the bytes after it.
        let skip = (offset * 8).div_ceil(6);
        let end = shifted.len() * 8 / 6;
        for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
            if let Some(core) = engine.encode(&shifted).get(skip..end) {
                forms.push(core.to_owned());
            }
        }
    }
    forms
}

/// `text` with every occurrence of `secret` replaced by [`REDACTED`] —
/// literal, or with any of its characters written as an escape
/// ([`escaped_len`]); `None` when there is none.
fn mask_encoded(text: &str, secret: &str) -> Option<String> {
    let first = secret.bytes().next()?;
    let mut out = String::new();
    let mut copied = 0;
    let mut at = 0;
    let bytes = text.as_bytes();
    while at < bytes.len() {
        let b = bytes[at];
        // Only a literal first byte or the start of an escape can begin a match.
        if b == first || matches!(b, b'\\' | b'%' | b'+') {
            if let Some(end) = find_encoded(text, at, secret) {
                out.push_str(&text[copied..at]);
                out.push_str(REDACTED);
                copied = end;
                at = end;
                continue;
            }
        }
        at += text[at..].chars().next().map_or(1, char::len_utf8);
    }
    if copied == 0 {
        return None;
    }
    out.push_str(&text[copied..]);
    Some(out)
}

/// The end (byte offset) of `secret` written at `start` of `text`, each of
/// its characters literally or escaped; `None` if it is not there.
fn find_encoded(text: &str, start: usize, secret: &str) -> Option<usize> {
    let mut at = start;
    for c in secret.chars() {
        at += escaped_len(text.get(at..)?, c)?;
    }
    Some(at)
}

/// How many bytes at the start of `rest` write the character `c`: itself,
/// a JSON escape (`\/`, `\"`, `\\`, `\n`…, `\uXXXX` or a `\uXXXX\uXXXX`
/// surrogate pair, hex in either case), percent-encoded UTF-8 (`%XX` per byte,
/// either case), or `+` for a space.
fn escaped_len(rest: &str, c: char) -> Option<usize> {
    if rest.starts_with(c) {
        return Some(c.len_utf8());
    }
    let bytes = rest.as_bytes();
    match bytes.first()? {
        b'\\' => {
            let short = match c {
                '"' => Some(b'"'),
                '\\' => Some(b'\\'),
                '/' => Some(b'/'),
                '\n' => Some(b'n'),
                '\r' => Some(b'r'),
                '\t' => Some(b't'),
                '\u{8}' => Some(b'b'),
                '\u{c}' => Some(b'f'),
                _ => None,
            };
            if short.is_some() && bytes.get(1).copied() == short {
                return Some(2);
            }
            let mut units = [0u16; 2];
            let mut len = 0;
            for unit in c.encode_utf16(&mut units).iter() {
                let escape = bytes.get(len..len + 6)?;
                if &escape[..2] != b"\\u" || hex_value(&escape[2..])? != u32::from(*unit) {
                    return None;
                }
                len += 6;
            }
            Some(len)
        }
        b'%' => {
            let mut utf8 = [0u8; 4];
            let mut len = 0;
            for byte in c.encode_utf8(&mut utf8).bytes() {
                let escape = bytes.get(len..len + 3)?;
                if escape[0] != b'%' || hex_value(&escape[1..])? != u32::from(byte) {
                    return None;
                }
                len += 3;
            }
            Some(len)
        }
        b'+' if c == ' ' => Some(1),
        _ => None,
    }
}

/// The value of hex digits (either case); `None` if any byte is not one.
fn hex_value(digits: &[u8]) -> Option<u32> {
    digits
        .iter()
        .try_fold(0u32, |acc, &d| Some(acc * 16 + char::from(d).to_digit(16)?))
}

/// How many bytes of `after` (the text after `whsec_`) are base64: letters,
/// digits, `+`, `/`, `=`, the last three also JSON-escaped or percent-encoded.
fn whsec_key_len(after: &str) -> usize {
    let mut len = 0;
    while let Some(rest) = after.get(len..) {
        let step = match rest.bytes().next() {
            Some(b) if b.is_ascii_alphanumeric() => 1,
            Some(_) => ['+', '/', '=']
                .iter()
                .find_map(|&c| escaped_len(rest, c))
                .unwrap_or(0),
            None => 0,
        };
        if step == 0 {
            break;
        }
        len += step;
    }
    len
}

/// Replaces every `whsec_<base64>` with [`REDACTED`].
fn mask_whsec(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(SECRET_PREFIX) {
        out.push_str(&rest[..at]);
        let after = &rest[at + SECRET_PREFIX.len()..];
        let len = whsec_key_len(after);
        if len == 0 {
            out.push_str(SECRET_PREFIX);
        } else {
            out.push_str(REDACTED);
        }
        rest = &after[len..];
    }
    out.push_str(rest);
    out
}

/// Deepest nesting [`JsonMasker`] follows; deeper text is masked by the text
/// rules only (hookrelay keeps deeper upstream bodies as strings anyway).
const MASK_MAX_DEPTH: usize = 128;

/// Copies JSON text, masking sensitive fields and known secrets, without
/// ever re-formatting what it does not mask.
struct JsonMasker<'r, 't> {
    redactor: &'r Redactor,
    src: &'t str,
    pos: usize,
    out: String,
    changed: bool,
}

impl<'r, 't> JsonMasker<'r, 't> {
    /// `Ok(None)`: nothing to mask; `Ok(Some(text))`: the masked text;
    /// `Err(())`: `src` is not one JSON value (or nests too deep).
    fn run(redactor: &'r Redactor, src: &'t str) -> Result<Option<String>, ()> {
        let mut m = JsonMasker {
            redactor,
            src,
            pos: 0,
            out: String::with_capacity(src.len()),
            changed: false,
        };
        m.whitespace();
        m.value(0)?;
        m.whitespace();
        if m.pos != src.len() {
            return Err(());
        }
        Ok(m.changed.then_some(m.out))
    }

    fn peek(&self) -> Option<u8> {
        self.src.as_bytes().get(self.pos).copied()
    }

    fn whitespace(&mut self) {
        let start = self.pos;
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
        self.out.push_str(&self.src[start..self.pos]);
    }

    fn expect(&mut self, byte: u8) -> Result<(), ()> {
        if self.peek() != Some(byte) {
            return Err(());
        }
        self.pos += 1;
        self.out.push(char::from(byte));
        Ok(())
    }

    fn value(&mut self, depth: usize) -> Result<(), ()> {
        if depth > MASK_MAX_DEPTH {
            return Err(());
        }
        match self.peek().ok_or(())? {
            b'{' => {
                self.expect(b'{')?;
                self.whitespace();
                if self.peek() == Some(b'}') {
                    return self.expect(b'}');
                }
                loop {
                    self.whitespace();
                    let key = self.string()?;
                    self.whitespace();
                    self.expect(b':')?;
                    self.whitespace();
                    if self.redactor.is_sensitive_field(&key) {
                        let start = self.out.len();
                        self.value(depth + 1)?;
                        let masked = format!("\"{REDACTED}\"");
                        if self.out[start..] != masked {
                            self.out.truncate(start);
                            self.out.push_str(&masked);
                            self.changed = true;
                        }
                    } else {
                        self.value(depth + 1)?;
                    }
                    self.whitespace();
                    match self.peek() {
                        Some(b',') => self.expect(b',')?,
                        Some(b'}') => return self.expect(b'}'),
                        _ => return Err(()),
                    }
                }
            }
            b'[' => {
                self.expect(b'[')?;
                self.whitespace();
                if self.peek() == Some(b']') {
                    return self.expect(b']');
                }
                loop {
                    self.whitespace();
                    self.value(depth + 1)?;
                    self.whitespace();
                    match self.peek() {
                        Some(b',') => self.expect(b',')?,
                        Some(b']') => return self.expect(b']'),
                        _ => return Err(()),
                    }
                }
            }
            b'"' => self.string().map(|_| ()),
            _ => {
                // A number, true, false or null: copied as it is.
                let start = self.pos;
                while matches!(
                    self.peek(),
                    Some(b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E' | b'a'..=b'z')
                ) {
                    self.pos += 1;
                }
                let token = &self.src[start..self.pos];
                if token.is_empty() || serde_json::from_str::<serde::de::IgnoredAny>(token).is_err()
                {
                    return Err(());
                }
                self.out.push_str(token);
                Ok(())
            }
        }
    }

    /// Copies one string literal (masking known secrets inside it) and
    /// returns its decoded text.
    fn string(&mut self) -> Result<String, ()> {
        let bytes = self.src.as_bytes();
        if self.peek() != Some(b'"') {
            return Err(());
        }
        let start = self.pos;
        let mut i = start + 1;
        loop {
            match bytes.get(i).ok_or(())? {
                b'\\' => i += 2,
                b'"' => break,
                _ => i += 1,
            }
        }
        self.pos = i + 1;
        let raw = &self.src[start..self.pos];
        let decoded: String = match serde_json::from_str(raw) {
            Ok(d) => d,
            // A lone surrogate escape and the like: mask on the raw text.
            Err(_) => raw[1..raw.len() - 1].to_owned(),
        };
        match self.redactor.mask_secrets(&decoded) {
            Cow::Borrowed(_) => self.out.push_str(raw),
            Cow::Owned(masked) => {
                self.out
                    .push_str(&serde_json::to_string(&masked).map_err(|_| ())?);
                self.changed = true;
            }
        }
        Ok(decoded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    /// Masks `v` through [`Redactor::json_text`]: whether anything changed,
    /// and the result read back.
    fn masked_json(r: &Redactor, v: &Value) -> (bool, Value) {
        let text = JsonText::from_value(v);
        let masked = r.json_text(&text);
        let back = serde_json::from_str(masked.as_str()).expect("masked JSON is JSON");
        (masked != text, back)
    }

    fn redactor() -> Redactor {
        Redactor::new(
            ["password", "api_key", "card_number"],
            ["X-Vendor-Key"],
            ["Bearer vendor-token-123456"],
        )
    }

    #[test]
    fn fields_are_masked_at_any_depth_case_insensitively() {
        let r = redactor();
        let (changed, v) = masked_json(
            &r,
            &json!({
                "user": {"Password": "hunter22", "name": "ann"},
                "items": [{"API_KEY": {"nested": 1}}, {"card_number": 4111}],
                "headers": {"Authorization": "Basic abc", "x-vendor-key": "k", "Accept": "*/*"},
                "note": "fine"
            }),
        );
        assert!(changed);
        assert_eq!(
            v,
            json!({
                "user": {"Password": REDACTED, "name": "ann"},
                "items": [{"API_KEY": REDACTED}, {"card_number": REDACTED}],
                "headers": {"Authorization": REDACTED, "x-vendor-key": REDACTED, "Accept": "*/*"},
                "note": "fine"
            })
        );
        assert!(!masked_json(&r, &json!({"a": [1, "b"]})).0);
    }

    #[test]
    fn known_secrets_and_whsec_are_masked_in_text() {
        let r = redactor();
        let text = "echo: Bearer vendor-token-123456; token vendor-token-123456; \
                    sig whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw end; whsec_ alone";
        let masked = r.text(text);
        assert!(!masked.contains("vendor-token-123456"), "{masked}");
        assert!(!masked.contains("MfKQ9r8"), "{masked}");
        assert!(masked.contains("whsec_ alone"), "{masked}");
        assert_eq!(r.text("nothing here"), Cow::Borrowed("nothing here"));
        let json_text = r#"{"password": "p4ss", "echo": "vendor-token-123456"}"#;
        let masked = r.text(json_text);
        assert!(
            !masked.contains("p4ss") && !masked.contains("vendor-token"),
            "{masked}"
        );
        assert_eq!(r.header("cookie", "a=b"), REDACTED);
        assert_eq!(r.header("X-Vendor-Key", "a=b"), REDACTED);
        assert_eq!(r.header("accept", "a/b"), "a/b");
        // Secrets inside object keys are masked too.
        let (changed, v) = masked_json(&r, &json!({"vendor-token-123456": 1}));
        assert!(changed);
        assert!(!v.to_string().contains("vendor-token"), "{v}");
    }

    const VENDOR_SECRET: &str = "sk_live/AbC+dEf==9876543210";

    /// The text must not hold the secret, nor its tail (all but the first
    /// few characters) in any encoding, and must say `[REDACTED]`.
    fn assert_masked(r: &Redactor, text: &str) {
        let masked = r.text(text);
        assert!(masked.contains(REDACTED), "{text} -> {masked}");
        for leak in ["9876543210", "AbC", "dEf"] {
            assert!(!masked.contains(leak), "{text} -> {masked}");
        }
    }

    #[test]
    fn escaped_and_percent_encoded_secrets_are_masked() {
        let r = Redactor::new([], [], [VENDOR_SECRET]);
        for text in [
            // PHP's json_encode default, in a truncated JSON body (text).
            r#"{"echo": "sk_live\/AbC+dEf==9876543210", "trunc"#,
            // Every non-alphanumeric as \uXXXX, both hex cases, and mixed.
            r#"key sk_live\u002fAbC\u002BdEf\u003d\u003D9876543210 end"#,
            r#"sk\u005flive\/AbC+dEf\u003d=9876543210"#,
            // Percent-encoded, upper and lower case hex, and fully encoded.
            "token=sk_live%2FAbC%2BdEf%3D%3D9876543210&x=1",
            "token=sk_live%2fAbC%2bdEf%3d%3d9876543210",
            "t=%73%6B%5F%6C%69%76%65%2F%41%62%43%2B%64%45%66%3D%3D%39%38%37%36%35%34%33%32%31%30",
            // JSON-escaped inside a JSON string (escaped twice on the wire).
            r#"{"raw": "sk_live\\/AbC+dEf==9876543210"}"#,
        ] {
            assert_masked(&r, text);
        }
        let masked =
            r.text("a sk_live%2FAbC%2BdEf%3D%3D9876543210 b sk_live/AbC+dEf==9876543210 c");
        assert_eq!(masked, "a [REDACTED] b [REDACTED] c");
        // A near miss (another last digit) is left alone.
        assert_eq!(
            r.text("sk_live%2FAbC%2BdEf%3D%3D9876543211"),
            "sk_live%2FAbC%2BdEf%3D%3D9876543211"
        );
    }

    #[test]
    fn base64_forms_of_secrets_are_masked() {
        use base64::engine::general_purpose::{
            STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD,
        };
        let r = Redactor::new([], [], [VENDOR_SECRET]);
        let raw = VENDOR_SECRET.as_bytes();
        for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
            let b64 = engine.encode(raw);
            let masked = r.text(&format!("echo {b64} end")).into_owned();
            assert_eq!(masked, "echo [REDACTED] end", "{b64}");
            // Inside a longer encoded value, at each alignment (HTTP Basic):
            // only the few characters mixing in the neighbours' bits stay.
            for prefix in ["", "u:", "us:", "usr:"] {
                let basic = engine.encode(format!("{prefix}{VENDOR_SECRET}\n").as_bytes());
                let masked = r.text(&format!("Basic {basic}")).into_owned();
                let left = masked
                    .strip_prefix("Basic ")
                    .expect("prefix")
                    .replacen(REDACTED, "", 1);
                assert!(masked.contains(REDACTED), "{prefix:?}: {masked}");
                assert!(left.len() <= 12, "{prefix:?}: {basic} -> {masked}");
            }
        }
        // Standard base64 with its `/` JSON-escaped.
        let b64 = STANDARD.encode(raw).replace('/', "\\/");
        assert_masked(&r, &format!("{{\"k\": \"{b64}\" trunc"));
    }

    #[test]
    fn escaped_whsec_secrets_are_masked() {
        let r = redactor();
        for text in [
            r#"sig whsec_MfKQ9r8\/GKYqrTwj+UPD8ILPZIo2LaLaSw== end"#,
            "sig whsec_MfKQ9r8%2FGKYqrTwj%2bUPD8ILPZIo2LaLaSw%3D%3D end",
        ] {
            let masked = r.text(text);
            assert_eq!(masked, "sig [REDACTED] end", "{text}");
        }
    }

    #[test]
    fn short_values_are_not_searched() {
        let r = Redactor::new([], [], ["abc"]);
        assert_eq!(r.text("abc def"), "abc def");
    }
}
