//! Signing secrets at rest: generation ([`new_signing_secret`]) and sealing.
//!
//! Signing secrets never reach the database in the clear. [`SecretSealer`]
//! seals each one with XChaCha20-Poly1305 under a key from
//! `security.signing_key_encryption_keys` and a fresh random 24-byte nonce; the
//! associated data binds the sealed value to its client, so a value copied to
//! another client's row does not open. The stored form is
//! `{key_id}:{base64(nonce || ciphertext)}`; the key id says which configured
//! key opens it, so the encryption key can be rotated by prepending a new one.
//! Storing, creating and rotating the secrets is delivery's business
//! (`crate::delivery::secrets`).

use std::fmt;

use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::TryRng;
use secrecy::SecretString;

use crate::domain::{KeyConfigError, KeyRing, ENCRYPTION_KEY_BYTES, MAX_KEY_ID_LEN};

/// Prefix of Standard Webhooks secrets.
pub const SECRET_PREFIX: &str = "whsec_";

/// Random bytes in a new signing secret (Standard Webhooks allows 24 to 64).
pub const SECRET_BYTES: usize = 32;

/// Length of the random nonce stored in front of each ciphertext, bytes
/// (XChaCha20's 192-bit nonce: large enough to draw at random without a
/// realistic chance of reuse).
pub const NONCE_BYTES: usize = 24;

/// Length of the Poly1305 authentication tag at the end of each ciphertext, bytes.
const TAG_BYTES: usize = 16;

/// Prefix of the associated data: names what is sealed, so a value sealed for
/// another purpose under the same key cannot pass for a signing secret. The
/// client id follows it.
const AAD_LABEL: &[u8] = b"hookrelay/signing-secret/v1\0";

/// A new `whsec_<base64 of 32 random bytes>` secret (Standard Webhooks format).
pub fn new_signing_secret() -> String {
    let mut key = [0u8; SECRET_BYTES];
    rand::rngs::SysRng
        .try_fill_bytes(&mut key)
        .expect("the operating system's random source works");
    format!(
        "{SECRET_PREFIX}{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    )
}

/// Sealing failed. XChaCha20-Poly1305 only refuses messages far larger than a
/// signing secret, so this signals a bug rather than bad input.
#[derive(Debug, thiserror::Error)]
#[error("sealing a signing secret failed")]
pub struct SealError;

/// Why a stored value does not open. Messages never contain secret material.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// Not `{key_id}:{base64}` with room for a nonce and a tag, or the
    /// plaintext is not UTF-8.
    #[error("not a sealed value (`key_id:base64(nonce || ciphertext)`)")]
    Malformed,
    /// Sealed with a key id that is not configured (removed too early?).
    #[error("sealed with key id `{0}`, which is not in security.signing_key_encryption_keys")]
    UnknownKey(String),
    /// Authentication failed: another key under the same id, a tampered
    /// value, or a value sealed for another client.
    #[error("authentication failed (wrong key, tampered value, or sealed for another client)")]
    Rejected,
}

/// Seals and opens signing secrets at rest (XChaCha20-Poly1305; see the module
/// docs for the format). Built once from `security.signing_key_encryption_keys`
/// and shared by the API (app data) and the dispatcher ([`crate::jobs::DispatchContext`]).
pub struct SecretSealer {
    /// `(key id, cipher)`, in configuration order; the first seals. The
    /// ciphers zeroize their keys on drop.
    keys: Vec<(String, XChaCha20Poly1305)>,
}

impl fmt::Debug for SecretSealer {
    /// Key ids only, never key material.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretSealer")
            .field("key_ids", &self.key_ids().collect::<Vec<_>>())
            .finish()
    }
}

impl SecretSealer {
    /// Parses `id:base64` entries (`security.signing_key_encryption_keys`):
    /// ids of 1 to 32 ASCII letters, digits, `.`, `_` or `-`, unique; keys of
    /// exactly 32 bytes in standard base64.
    ///
    /// # Errors
    /// [`KeyConfigError`] for the first bad entry (1-based), without key material.
    pub fn from_keys(entries: &[SecretString]) -> Result<SecretSealer, KeyConfigError> {
        SecretSealer::from_ring(&KeyRing::parse(entries, ENCRYPTION_KEY_BYTES)?)
    }

    /// The sealer of an already parsed key ring
    /// (`security.signing_keys`, built when configuration is loaded).
    ///
    /// # Errors
    /// [`KeyConfigError::BadLength`] if a key is not 32 bytes long.
    pub fn from_ring(ring: &KeyRing) -> Result<SecretSealer, KeyConfigError> {
        let keys = ring
            .entries()
            .iter()
            .enumerate()
            .map(|(i, (id, raw))| {
                let cipher = XChaCha20Poly1305::new_from_slice(raw).map_err(|_| {
                    KeyConfigError::BadLength {
                        entry: i + 1,
                        id: id.clone(),
                        len: raw.len(),
                    }
                })?;
                Ok((id.clone(), cipher))
            })
            .collect::<Result<Vec<_>, KeyConfigError>>()?;
        Ok(SecretSealer { keys })
    }

    /// Configured key ids, the sealing one first.
    pub fn key_ids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|(id, _)| id.as_str())
    }

    /// Seals `secret` for `client_id` with the first key and a fresh random nonce.
    ///
    /// # Errors
    /// [`SealError`] (not expected for signing secrets).
    pub fn seal(&self, client_id: &str, secret: &str) -> Result<String, SealError> {
        let (id, cipher) = self.keys.first().ok_or(SealError)?;
        let mut nonce = [0u8; NONCE_BYTES];
        rand::rngs::SysRng
            .try_fill_bytes(&mut nonce)
            .expect("the operating system's random source works");
        let aad = associated_data(client_id);
        let ciphertext = cipher
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: secret.as_bytes(),
                    aad: &aad,
                },
            )
            .map_err(|_| SealError)?;
        let mut blob = Vec::with_capacity(NONCE_BYTES + ciphertext.len());
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&ciphertext);
        Ok(format!(
            "{id}:{}",
            base64::engine::general_purpose::STANDARD.encode(blob)
        ))
    }

    /// Opens a value sealed for `client_id` with any configured key.
    ///
    /// # Errors
    /// [`OpenError`]: malformed value, unknown key id, or failed authentication.
    pub fn open(&self, client_id: &str, sealed: &str) -> Result<String, OpenError> {
        let (id, encoded) = sealed.split_once(':').ok_or(OpenError::Malformed)?;
        let cipher = self
            .keys
            .iter()
            .find(|(k, _)| k == id)
            .map(|(_, c)| c)
            .ok_or_else(|| OpenError::UnknownKey(id.chars().take(MAX_KEY_ID_LEN).collect()))?;
        let blob = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| OpenError::Malformed)?;
        if blob.len() < NONCE_BYTES + TAG_BYTES {
            return Err(OpenError::Malformed);
        }
        let (nonce, ciphertext) = blob.split_at(NONCE_BYTES);
        let nonce = XNonce::try_from(nonce).map_err(|_| OpenError::Malformed)?;
        let aad = associated_data(client_id);
        let plain = cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| OpenError::Rejected)?;
        String::from_utf8(plain).map_err(|_| OpenError::Malformed)
    }

    /// Opens every value, in order, logging each one that does not open (at
    /// error: the configuration lost a key or the row was altered) and leaving
    /// it out. Never fails; the result may be empty.
    pub fn open_all(&self, client_id: &str, sealed: &[String]) -> Vec<String> {
        sealed
            .iter()
            .filter_map(|value| match self.open(client_id, value) {
                Ok(secret) => Some(secret),
                Err(error) => {
                    let key_id: String = value
                        .split_once(':')
                        .map(|(id, _)| id.chars().take(MAX_KEY_ID_LEN).collect())
                        .unwrap_or_default();
                    tracing::error!(
                        client_id,
                        key_id,
                        %error,
                        "a stored signing secret does not open; it is skipped"
                    );
                    None
                }
            })
            .collect()
    }
}

fn associated_data(client_id: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(AAD_LABEL.len() + client_id.len());
    aad.extend_from_slice(AAD_LABEL);
    aad.extend_from_slice(client_id.as_bytes());
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str, byte: u8) -> SecretString {
        SecretString::from(format!(
            "{id}:{}",
            base64::engine::general_purpose::STANDARD.encode([byte; ENCRYPTION_KEY_BYTES])
        ))
    }

    fn sealer(keys: &[SecretString]) -> SecretSealer {
        SecretSealer::from_keys(keys).expect("valid keys")
    }

    #[test]
    fn sealed_secrets_round_trip_and_hide_the_secret() {
        let s = sealer(&[key("k1", 1)]);
        let secret = new_signing_secret();
        let sealed = s.seal("acme", &secret).expect("seal");
        assert!(sealed.starts_with("k1:"), "{sealed}");
        let b64 = secret.strip_prefix(SECRET_PREFIX).expect("prefix");
        assert!(!sealed.contains(b64));
        assert_eq!(s.open("acme", &sealed).expect("open"), secret);
        // A fresh nonce per seal: the same secret never seals the same way twice.
        assert_ne!(s.seal("acme", &secret).expect("seal"), sealed);
    }

    #[test]
    fn other_clients_tampering_and_unknown_keys_do_not_open() {
        let s = sealer(&[key("k1", 1), key("k2", 2)]);
        let secret = new_signing_secret();
        let sealed = s.seal("acme", &secret).expect("seal");

        assert_eq!(
            s.open("beta", &sealed),
            Err(OpenError::Rejected),
            "AAD binds the client"
        );

        let (id, b64) = sealed.split_once(':').expect("format");
        let mut blob = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("b64");
        for at in [0, NONCE_BYTES, blob.len() - 1] {
            blob[at] ^= 1;
            let tampered = format!(
                "{id}:{}",
                base64::engine::general_purpose::STANDARD.encode(&blob)
            );
            assert_eq!(
                s.open("acme", &tampered),
                Err(OpenError::Rejected),
                "byte {at}"
            );
            blob[at] ^= 1;
        }

        let relabelled = format!("k2:{b64}");
        assert_eq!(
            s.open("acme", &relabelled),
            Err(OpenError::Rejected),
            "other key"
        );
        let unknown = format!("k9:{b64}");
        assert_eq!(
            s.open("acme", &unknown),
            Err(OpenError::UnknownKey("k9".into()))
        );
        let only_k2 = sealer(&[key("k2", 2)]);
        assert_eq!(
            only_k2.open("acme", &sealed),
            Err(OpenError::UnknownKey("k1".into()))
        );
        // Same id, different key material: authentication fails.
        let other_k1 = sealer(&[key("k1", 7)]);
        assert_eq!(other_k1.open("acme", &sealed), Err(OpenError::Rejected));

        for bad in [
            "",
            "k1",
            "k1:",
            "k1:not base64!",
            "k1:AAAA",
            secret.as_str(),
        ] {
            assert!(s.open("acme", bad).is_err(), "{bad:?} must not open");
        }
        assert_eq!(s.open_all("acme", &[unknown, sealed.clone()]), vec![secret]);
    }

    #[test]
    fn encryption_key_rotation_keeps_old_values_open() {
        let old = sealer(&[key("k1", 1)]);
        let secret = new_signing_secret();
        let sealed_old = old.seal("acme", &secret).expect("seal");

        let rotated = sealer(&[key("k2", 2), key("k1", 1)]);
        assert_eq!(
            rotated.open("acme", &sealed_old).expect("old key opens"),
            secret
        );
        let sealed_new = rotated.seal("acme", &secret).expect("seal");
        assert!(sealed_new.starts_with("k2:"), "the first key seals");
        assert_eq!(rotated.open("acme", &sealed_new).expect("open"), secret);
        assert!(old.open("acme", &sealed_new).is_err());
    }

    #[test]
    fn bad_key_lists_are_refused_without_showing_keys() {
        let err = |keys: &[SecretString]| SecretSealer::from_keys(keys).expect_err("invalid");
        assert_eq!(err(&[]), KeyConfigError::Empty);
        assert_eq!(
            err(&[SecretString::from("no-colon-here")]),
            KeyConfigError::Format { entry: 1 }
        );
        assert_eq!(
            err(&[key("k1", 1), key("bad id", 2)]),
            KeyConfigError::BadId { entry: 2 }
        );
        assert_eq!(err(&[key("", 1)]), KeyConfigError::BadId { entry: 1 });
        let short = SecretString::from(format!(
            "k1:{}",
            base64::engine::general_purpose::STANDARD.encode([1u8; 16])
        ));
        assert_eq!(
            err(&[short]),
            KeyConfigError::BadLength {
                entry: 1,
                id: "k1".into(),
                len: 16
            }
        );
        let garbage = SecretString::from("k1:%%%not-base64%%%");
        let e = err(&[garbage]);
        assert!(
            matches!(e, KeyConfigError::BadBase64 { entry: 1, .. }),
            "{e:?}"
        );
        assert!(!e.to_string().contains("not-base64"), "{e}");
        assert_eq!(
            err(&[key("k1", 1), key("k1", 2)]),
            KeyConfigError::DuplicateId { id: "k1".into() }
        );
        let s = sealer(&[key("a.b_c-D9", 1)]);
        assert_eq!(
            format!("{s:?}"),
            r#"SecretSealer { key_ids: ["a.b_c-D9"] }"#
        );
    }

    #[test]
    fn secrets_have_the_standard_shape() {
        let s = new_signing_secret();
        let b = s.strip_prefix(SECRET_PREFIX).expect("prefix");
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b)
            .expect("base64");
        assert_eq!(raw.len(), SECRET_BYTES);
        assert_ne!(s, new_signing_secret());
    }
}
