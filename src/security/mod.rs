//! Security: the SSRF guard for callbacks ([`ssrf`]: host check and the
//! guarded resolver that closes DNS rebinding), signing secrets sealed at
//! rest ([`secrets`]), sealed outbox jobs ([`seal`]) and the redaction layer
//! ([`redact`]). The signing-secret *store* (creation, rotation, re-sealing)
//! belongs to delivery (`crate::delivery::secrets`).

pub mod redact;
pub mod seal;
pub mod secrets;
pub mod ssrf;

pub use crate::domain::{
    parse_keys, KeyConfigError, KeyEntry, KeyRing, ENCRYPTION_KEY_BYTES, MAX_KEY_ID_LEN,
};
pub use secrets::{
    new_signing_secret, OpenError, SealError, SecretSealer, NONCE_BYTES, SECRET_BYTES,
    SECRET_PREFIX,
};
pub use ssrf::{
    check_literal_host, is_private_host, is_private_ip, CallbackPolicy, GuardedResolver,
};
