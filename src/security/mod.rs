//! Security helpers: the first-cut callback host check, and signing secrets —
//! generation, sealing at rest, storage and rotation ([`rotate_signing_secret`]).
//!
//! The callback check refuses hosts that are `localhost` (or `*.localhost`)
//! or a *literal* loopback, private, link-local or otherwise non-public IP
//! address unless `security.allow_private_callbacks = true`. It does not resolve
//! DNS; resolution-time checks (DNS rebinding) are documented as a known gap in
//! `docs/security.md` until the full SSRF guard lands.
//!
//! Signing secrets never reach the database in the clear. [`SecretSealer`]
//! seals each one with XChaCha20-Poly1305 under a key from
//! `security.signing_key_encryption_keys` and a fresh random 24-byte nonce; the
//! associated data binds the sealed value to its client, so a value copied to
//! another client's row does not open. The stored form is
//! `{key_id}:{base64(nonce || ciphertext)}`; the key id says which configured
//! key opens it, so the encryption key can be rotated by prepending a new one.

pub mod redact;
pub mod seal;

use std::fmt;
use std::time::Duration;

use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::TryRng;
use secrecy::SecretString;

pub use crate::domain::{
    check_literal_host, is_private_host, is_private_ip, parse_keys, CallbackPolicy, KeyConfigError,
    KeyEntry, KeyRing, ENCRYPTION_KEY_BYTES, MAX_KEY_ID_LEN,
};

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

/// Advisory-lock class (first key of `pg_advisory_xact_lock(int, int)`) that
/// serialises writes to one client's signing secrets; the second key is
/// `hashtext(client_id)`. The two-key lock space does not overlap the one-key
/// space that sqlx's migration lock uses. The value spells `hrss`.
const SECRETS_LOCK_CLASS: i32 = 0x6872_7373;

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

/// Reading, creating or rotating stored signing secrets failed.
#[derive(Debug, thiserror::Error)]
pub enum SecretStoreError {
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// A new secret could not be sealed.
    #[error(transparent)]
    Seal(#[from] SealError),
}

/// Takes the per-client lock that serialises creating and rotating its
/// secrets, so concurrent writers never race on `signing_secrets_current_idx`.
/// Held until `tx` ends.
async fn lock_client_secrets(
    tx: &mut sqlx::PgConnection,
    client_id: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
        .bind(SECRETS_LOCK_CLASS)
        .bind(client_id)
        .execute(tx)
        .await?;
    Ok(())
}

/// Most signing secrets that sign one callback: the current one and, during
/// its rotation grace, the one before it ([`rotate_signing_secret`]).
pub const MAX_SIGNING_SECRETS: usize = 2;

/// The client's active sealed secrets, newest first: at most
/// [`MAX_SIGNING_SECRETS`], even if older rows are still in the table (rows
/// written before rotation retired them at once), so the
/// `webhook-signature` header stays small.
async fn active_sealed(pool: &sqlx::PgPool, client_id: &str) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar::<_, String>(
        "SELECT secret FROM signing_secrets
          WHERE client_id = $1 AND (expires_at IS NULL OR expires_at > now())
          ORDER BY created_at DESC
          LIMIT $2",
    )
    .bind(client_id)
    .bind(MAX_SIGNING_SECRETS as i64)
    .fetch_all(pool)
    .await
}

/// The client's active signing secrets, opened, newest first, creating the
/// first one if the client has none ("created on first use"). Concurrent
/// first uses converge on one secret (per-client lock and the partial unique
/// index on the current secret). Values that do not open are logged and left
/// out ([`SecretSealer::open_all`]), so the result can be empty.
///
/// # Errors
/// Database errors; sealing a new secret failed.
pub async fn ensure_signing_secrets(
    pool: &sqlx::PgPool,
    sealer: &SecretSealer,
    client_id: &str,
) -> Result<Vec<String>, SecretStoreError> {
    let mut sealed = active_sealed(pool, client_id).await?;
    if sealed.is_empty() {
        let new = sealer.seal(client_id, &new_signing_secret())?;
        let mut tx = pool.begin().await?;
        lock_client_secrets(&mut tx, client_id).await?;
        // clock_timestamp(), not now(): taken after the lock, so created_at
        // follows the order in which writers got it ("newest first").
        sqlx::query(
            "INSERT INTO signing_secrets (id, client_id, secret, created_at)
             VALUES ($1, $2, $3, clock_timestamp())
             ON CONFLICT (client_id) WHERE expires_at IS NULL DO NOTHING",
        )
        .bind(uuid::Uuid::now_v7())
        .bind(client_id)
        .bind(new)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        sealed = active_sealed(pool, client_id).await?;
    }
    Ok(sealer.open_all(client_id, &sealed))
}

/// What [`rotate_signing_secret`] did.
#[derive(Debug, Clone)]
pub struct Rotation {
    /// The new current secret (`whsec_…`), signing from now on.
    pub secret: String,
    /// When the previous current secret stops signing; `None` if the client
    /// had none.
    pub previous_expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Rotates the client's signing secret in one transaction: every previous
/// secret is deleted — expired or still in its grace — so it never signs
/// again; the current secret (if any) gets `expires_at = now + grace` and
/// keeps signing until then; a new current secret is inserted. So at most two
/// secrets ever sign ([`MAX_SIGNING_SECRETS`]): the current one and the one
/// before it, during its grace. Rotating twice in a row therefore revokes a
/// leaked secret at once. Concurrent rotations of one client are serialised
/// by a per-client advisory lock. (The rotation rate limit is applied by the
/// HTTP handler, [`crate::auth::limits::Guard::admit_rotation`].)
///
/// # Errors
/// Database errors (nothing is changed then); sealing failed.
pub async fn rotate_signing_secret(
    pool: &sqlx::PgPool,
    sealer: &SecretSealer,
    client_id: &str,
    grace: Duration,
) -> Result<Rotation, SecretStoreError> {
    let secret = new_signing_secret();
    let sealed = sealer.seal(client_id, &secret)?;
    let mut tx = pool.begin().await?;
    lock_client_secrets(&mut tx, client_id).await?;
    // The secret rotated out last time stops signing now, even within its
    // grace: only the current one and the one it replaces may sign.
    sqlx::query("DELETE FROM signing_secrets WHERE client_id = $1 AND expires_at IS NOT NULL")
        .bind(client_id)
        .execute(&mut *tx)
        .await?;
    // clock_timestamp(): measured after the lock, so later rotations always
    // get later timestamps even if their transactions started earlier.
    let previous_expires_at: Option<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(
        "UPDATE signing_secrets
            SET expires_at = clock_timestamp() + make_interval(secs => $2)
          WHERE client_id = $1 AND expires_at IS NULL
      RETURNING expires_at",
    )
    .bind(client_id)
    .bind(grace.as_secs_f64())
    .fetch_optional(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO signing_secrets (id, client_id, secret, created_at)
         VALUES ($1, $2, $3, clock_timestamp())",
    )
    .bind(uuid::Uuid::now_v7())
    .bind(client_id)
    .bind(sealed)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Rotation {
        secret,
        previous_expires_at,
    })
}

/// What [`reseal_signing_secrets`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ResealReport {
    /// Rows re-sealed with the first key.
    pub resealed: u64,
    /// Rows that no configured key opens (logged at error, left as they are).
    pub unopenable: u64,
}

/// Re-seals every stored signing secret that is not sealed with the first key
/// of `sealer`, so that older encryption keys can be removed from the
/// configuration (`hookrelay reseal-secrets`, docs/operations.md). Safe while
/// the service runs: each row is updated only if its sealed value is still the
/// one that was read, and running it again does nothing.
///
/// # Errors
/// Database errors (rows already re-sealed stay re-sealed); sealing failed.
pub async fn reseal_signing_secrets(
    pool: &sqlx::PgPool,
    sealer: &SecretSealer,
) -> Result<ResealReport, SecretStoreError> {
    let first = sealer.key_ids().next().ok_or(SealError)?;
    let rows: Vec<(uuid::Uuid, String, String)> = sqlx::query_as(
        "SELECT id, client_id, secret FROM signing_secrets
          WHERE NOT starts_with(secret, $1 || ':')
          ORDER BY id",
    )
    .bind(first)
    .fetch_all(pool)
    .await?;
    let mut report = ResealReport::default();
    for (id, client_id, sealed) in rows {
        let secret = match sealer.open(&client_id, &sealed) {
            Ok(secret) => secret,
            Err(error) => {
                tracing::error!(%id, client_id, %error, "a stored signing secret does not open; not re-sealed");
                report.unopenable += 1;
                continue;
            }
        };
        let resealed = sealer.seal(&client_id, &secret)?;
        report.resealed +=
            sqlx::query("UPDATE signing_secrets SET secret = $3 WHERE id = $1 AND secret = $2")
                .bind(id)
                .bind(&sealed)
                .bind(resealed)
                .execute(pool)
                .await?
                .rows_affected();
    }
    Ok(report)
}

// `CallbackPolicy` itself is a plain value in `domain` (config and intake
// validation use it); building it from the settings belongs here.
impl CallbackPolicy {
    /// The policy of `[security]`, as configuration built it at load.
    pub fn from_settings(s: &crate::config::SecuritySettings) -> Self {
        s.callback_policy.clone()
    }
}

/// DNS resolver for outbound callbacks (SSRF guard, resolution time): it
/// resolves with the system resolver and keeps only public addresses, so the
/// HTTP client can only ever connect to a vetted address — a name that
/// resolves (or rebinds) to loopback, private, link-local or metadata
/// addresses fails the attempt instead. With `allow_private` it passes
/// everything (tests, local development).
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    /// What may be connected to.
    pub policy: std::sync::Arc<CallbackPolicy>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let all: Vec<std::net::SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let vetted: Vec<std::net::SocketAddr> = all
                .iter()
                .copied()
                .filter(|a| policy.permits_ip(a.ip()))
                .collect();
            if vetted.is_empty() {
                let err: Box<dyn std::error::Error + Send + Sync> = Box::new(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!("refused: {host} resolves only to non-public addresses"),
                ));
                return Err(err);
            }
            let addrs: reqwest::dns::Addrs = Box::new(vetted.into_iter());
            Ok(addrs)
        })
    }
}

impl From<SecretStoreError> for crate::http::error::ApiError {
    fn from(e: crate::security::SecretStoreError) -> Self {
        match e {
            SecretStoreError::Database(e) => e.into(),
            other => crate::http::error::ApiError::Internal(anyhow::Error::new(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    #[test]
    fn private_and_public_addresses() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "198.18.0.1",
            "198.19.255.255",
            "192.0.0.8",
            "255.255.255.255",
            "224.0.0.1",
            "240.0.0.1",
            "192.0.2.1",
            "::127.0.0.1",
            "64:ff9b::a00:1",
            "64:ff9b::7f00:1",
            "2002:7f00:1::",
            "2002:a9fe:a9fe::1",
            "2001:0:4136:e378::1",
            "ff02::1",
            "::",
            "::ffff:0:127.0.0.1",
            "::ffff:0:169.254.169.254",
            "::ffff:0:10.0.0.1",
            "::ffff:0:8.8.8.8",
            "::ffff:0:0:127.0.0.1",
            "::8.8.8.8",
            "100::1",
            "fec0::1",
            "64:ff9b:1::a00:1",
            "2001:2::1",
            "3fff::1",
            "5f00::1",
        ] {
            let ip: IpAddr = private.parse().expect("ip");
            assert!(is_private_ip(ip), "{private} should be private");
        }
        for public in [
            "8.8.8.8",
            "1.1.1.1",
            "2606:4700::1111",
            "64:ff9b::808:808",
            "2002:808:808::1",
            "198.20.0.1",
            "::ffff:8.8.8.8",
            "2a00:1450:4001::1",
            "2001:200::1",
            "3fff:1000::1",
        ] {
            let ip: IpAddr = public.parse().expect("ip");
            assert!(!is_private_ip(ip), "{public} should be public");
        }
    }

    #[tokio::test]
    async fn resolver_refuses_names_of_local_addresses() {
        use reqwest::dns::Resolve;
        let name: reqwest::dns::Name = "localhost".parse().expect("name");
        let guarded = GuardedResolver {
            policy: std::sync::Arc::new(CallbackPolicy::default()),
        };
        let err = guarded.resolve(name).await.err().expect("refused");
        assert!(err.to_string().contains("non-public"), "{err}");
        let name: reqwest::dns::Name = "localhost".parse().expect("name");
        let open = GuardedResolver {
            policy: std::sync::Arc::new(CallbackPolicy {
                allow_private: true,
                ..Default::default()
            }),
        };
        assert!(open.resolve(name).await.is_ok());
        let strict = CallbackPolicy::default();
        assert!(check_literal_host("http://10.0.0.1/x", &strict).is_err());
        assert!(check_literal_host("http://[::ffff:169.254.169.254]/x", &strict).is_err());
        assert!(check_literal_host("http://[::ffff:0:127.0.0.1]/x", &strict).is_err());
        assert!(check_literal_host("https://partner.example:0/x", &strict).is_err());
        assert!(check_literal_host("https://partner.example/x", &strict).is_ok());
        let open = CallbackPolicy {
            allow_private: true,
            ..Default::default()
        };
        assert!(check_literal_host("http://10.0.0.1/x", &open).is_ok());
        let partner = CallbackPolicy {
            allowed: vec!["10.20.0.0/16".parse().expect("net")],
            https_only: true,
            ..Default::default()
        };
        assert!(check_literal_host("https://10.20.1.2/x", &partner).is_ok());
        assert!(check_literal_host("https://10.21.1.2/x", &partner).is_err());
        assert!(
            check_literal_host("http://partner.example/x", &partner).is_err(),
            "https only"
        );
    }

    #[test]
    fn localhost_names_are_private() {
        assert!(is_private_host(&url::Host::Domain("localhost")));
        assert!(is_private_host(&url::Host::Domain("api.localhost.")));
        assert!(!is_private_host(&url::Host::Domain("partner.example")));
    }

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
