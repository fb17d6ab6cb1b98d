//! [`JsonText`]: JSON kept byte for byte as it was received.

use std::fmt;

use serde::{Deserialize, Serialize};

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
mod tests {
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
