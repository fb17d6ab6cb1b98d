//! Rotatable key lists (`id:base64` entries, the first one current):
//! [`parse_keys`], the parsed [`KeyRing`], [`KeyConfigError`], and the key
//! lengths of `security.signing_key_encryption_keys` and
//! `security.job_mac_keys`. Parsed once from configuration; the sealers are
//! built from the ring.

use std::fmt;

use base64::Engine;
use secrecy::zeroize::Zeroizing;
use secrecy::{ExposeSecret, SecretString};

/// Length of an encryption key in `security.signing_key_encryption_keys`,
/// bytes (XChaCha20-Poly1305 uses 256-bit keys).
pub const ENCRYPTION_KEY_BYTES: usize = 32;

/// Longest key id, characters. Ids are stored in every sealed value.
pub const MAX_KEY_ID_LEN: usize = 32;

/// Why `security.signing_key_encryption_keys` is unusable. Messages never
/// contain key material.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyConfigError {
    /// No key at all.
    #[error("needs at least one `id:base64` key (the first one seals new secrets)")]
    Empty,
    /// An entry without `:`.
    #[error("entry {entry} is not `id:base64` (an id, a colon, then 32 bytes in base64)")]
    Format {
        /// 1-based position in the list.
        entry: usize,
    },
    /// A key id outside the allowed characters or length.
    #[error("entry {entry}: the key id must be 1 to 32 ASCII letters, digits, '.', '_' or '-'")]
    BadId {
        /// 1-based position in the list.
        entry: usize,
    },
    /// The key is not standard base64.
    #[error("entry {entry} (key id `{id}`): the key is not valid base64")]
    BadBase64 {
        /// 1-based position in the list.
        entry: usize,
        /// The key id.
        id: String,
    },
    /// The key does not decode to 32 bytes.
    #[error("entry {entry} (key id `{id}`): the key must be 32 bytes, got {len}")]
    BadLength {
        /// 1-based position in the list.
        entry: usize,
        /// The key id.
        id: String,
        /// Decoded length, bytes.
        len: usize,
    },
    /// Two entries share an id, so a sealed value would not say which one opens it.
    #[error("key id `{id}` appears more than once")]
    DuplicateId {
        /// The repeated id.
        id: String,
    },
}

/// One parsed key of a rotatable key list: its id and its raw bytes (wiped
/// from memory on drop).
pub type KeyEntry = (String, Zeroizing<Vec<u8>>);

/// Parses a rotatable key list (`id:base64` entries, the first one current):
/// ids of 1 to [`MAX_KEY_ID_LEN`] ASCII letters, digits, `.`, `_` or `-`,
/// unique; keys of exactly `key_len` bytes in standard base64. Shared by
/// `security.signing_key_encryption_keys` and `security.job_mac_keys`.
///
/// # Errors
/// [`KeyConfigError`] for the first bad entry (1-based), without key material.
pub fn parse_keys(
    entries: &[SecretString],
    key_len: usize,
) -> Result<Vec<KeyEntry>, KeyConfigError> {
    if entries.is_empty() {
        return Err(KeyConfigError::Empty);
    }
    let mut keys: Vec<KeyEntry> = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let entry_no = i + 1;
        let (id, encoded) = entry
            .expose_secret()
            .trim()
            .split_once(':')
            .ok_or(KeyConfigError::Format { entry: entry_no })?;
        if !is_key_id(id) {
            return Err(KeyConfigError::BadId { entry: entry_no });
        }
        if keys.iter().any(|(k, _)| k == id) {
            return Err(KeyConfigError::DuplicateId { id: id.to_owned() });
        }
        let raw = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .map_err(|_| KeyConfigError::BadBase64 {
                    entry: entry_no,
                    id: id.to_owned(),
                })?,
        );
        if raw.len() != key_len {
            return Err(KeyConfigError::BadLength {
                entry: entry_no,
                id: id.to_owned(),
                len: raw.len(),
            });
        }
        keys.push((id.to_owned(), raw));
    }
    Ok(keys)
}

/// A parsed rotatable key list (see [`parse_keys`]): at least one key, the
/// first one current. Built once from configuration; the sealers are made
/// from it without parsing again. `Debug` shows key ids only.
#[derive(Clone, Default)]
pub struct KeyRing(Vec<KeyEntry>);

impl KeyRing {
    /// Parses `id:base64` entries of `key_len` bytes ([`parse_keys`]).
    ///
    /// # Errors
    /// [`KeyConfigError`] for the first bad entry, without key material.
    pub fn parse(entries: &[SecretString], key_len: usize) -> Result<KeyRing, KeyConfigError> {
        parse_keys(entries, key_len).map(KeyRing)
    }

    /// The keys, the current (sealing) one first.
    pub fn entries(&self) -> &[KeyEntry] {
        &self.0
    }
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field(
                "key_ids",
                &self.0.iter().map(|(id, _)| id).collect::<Vec<_>>(),
            )
            .finish()
    }
}

fn is_key_id(id: &str) -> bool {
    (1..=MAX_KEY_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Length of a key in `security.job_mac_keys`, bytes (the HMAC-SHA256 block
/// is 64 bytes; 32 random bytes give the full 256-bit strength).
pub const MAC_KEY_BYTES: usize = 32;
