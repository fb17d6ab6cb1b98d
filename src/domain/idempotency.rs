//! The client-chosen `Idempotency-Key` header value.

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_key_bounds() {
        assert!(IdempotencyKey::parse("order-42").is_ok());
        assert!(IdempotencyKey::parse("").is_err());
        assert!(IdempotencyKey::parse(&"k".repeat(255)).is_ok());
        assert!(IdempotencyKey::parse(&"k".repeat(256)).is_err());
        assert!(IdempotencyKey::parse("tab\tkey").is_err());
        assert!(IdempotencyKey::parse("ключ").is_err());
    }
}
