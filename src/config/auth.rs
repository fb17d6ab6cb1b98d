//! `[auth]`: how bearer tokens are verified, and the token keys read from it.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::{invalid, ConfigError};

/// The development JWT secret shipped in `config/default.toml`; using it logs a warning.
pub const DEV_JWT_SECRET: &str = "hookrelay-dev-secret-change-me-0123456789";

/// `[auth]`: how bearer tokens (JWT, RFC 7519) are verified.
///
/// Exactly one algorithm is accepted ([`AuthSettings::algorithm`]); see
/// [`crate::auth::JwtKeys`] for the checks and `docs/security.md` "Tokens".
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// HS256 key, at least 32 bytes (used only when `algorithm = "HS256"`).
    pub jwt_secret: SecretString,
    /// The one accepted JWS algorithm (RFC 7518): `HS256`, `RS256`, `ES256`
    /// (P-256) or `EdDSA` (Ed25519). Any other `alg` header, `none` included,
    /// answers 401.
    pub algorithm: String,
    /// PEM public key verifying tokens for `RS256`/`ES256`/`EdDSA` (path;
    /// empty for `HS256`).
    pub public_key_file: String,
    /// PEM private key (PKCS#8 for EC and Ed25519) so `hookrelay token` can
    /// mint asymmetric tokens; empty = the CLI cannot mint (the API never needs it).
    pub private_key_file: String,
    /// Clock skew allowed on `exp`, `nbf` and `iat`, seconds (≤ 60).
    pub leeway_s: u64,
    /// Longest accepted token lifetime, seconds: `exp - iat`, or `exp - now`
    /// when the token has no `iat`. Longer-lived tokens answer 401.
    pub max_token_lifetime_s: u64,
    /// Required `iss` claim; empty = not checked.
    pub issuer: String,
    /// Required `aud` claim (one of the token's audiences); empty = not checked.
    pub audience: String,
    /// Tokens must carry a `jti`; the first POST with a given `jti` records it
    /// until the token expires, and a second POST with it answers 401 (replay).
    pub require_jti: bool,
    /// The keys of `algorithm`, read and parsed once by
    /// [`super::Settings::validate`]; see [`AuthSettings::loaded_keys`].
    #[serde(skip)]
    pub keys: Option<TokenKeys>,
}

/// Longest `auth.max_token_lifetime_s`: 30 days.
pub const MAX_TOKEN_LIFETIME_S: u64 = 30 * 24 * 3600;

impl AuthSettings {
    /// Checks the leeway and lifetime bounds, then reads and parses the keys (once).
    pub(super) fn check(&mut self) -> Result<(), ConfigError> {
        if self.leeway_s > 60 {
            return Err(invalid("auth.leeway_s", "must be at most 60 seconds"));
        }
        if !(1..=MAX_TOKEN_LIFETIME_S).contains(&self.max_token_lifetime_s) {
            return Err(invalid(
                "auth.max_token_lifetime_s",
                format!("must be 1 to {MAX_TOKEN_LIFETIME_S} seconds (30 days)"),
            ));
        }
        // Algorithm, secret length and key files, read once: `auth::JwtKeys`
        // is built from these keys.
        self.keys = Some(self.token_keys()?);
        Ok(())
    }
}

/// The signing algorithms `auth.algorithm` may name.
const ALGORITHMS: &[(&str, Algorithm)] = &[
    ("HS256", Algorithm::HS256),
    ("RS256", Algorithm::RS256),
    ("ES256", Algorithm::ES256),
    ("EdDSA", Algorithm::EdDSA),
];

fn read_key(key: &str, path: &str) -> Result<Vec<u8>, ConfigError> {
    if path.trim().is_empty() {
        return Err(ConfigError::Invalid {
            key: key.into(),
            problem: "must name a PEM key file for this auth.algorithm".into(),
        });
    }
    std::fs::read(path).map_err(|e| ConfigError::Invalid {
        key: key.into(),
        problem: format!("cannot read {path}: {e}"),
    })
}

/// The token keys of `[auth]`, read and parsed: what `auth::JwtKeys` is
/// built from, read once when configuration is loaded so a bad key fails
/// there. `Debug` names the algorithm only.
#[derive(Clone)]
pub struct TokenKeys {
    /// The one accepted algorithm (`auth.algorithm`).
    pub algorithm: Algorithm,
    /// Signing key: the HS256 secret, or `auth.private_key_file` when set.
    pub encoding: Option<EncodingKey>,
    /// Verifying key: the HS256 secret, or `auth.public_key_file`.
    pub decoding: DecodingKey,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKeys")
            .field("algorithm", &self.algorithm)
            .field("can_sign", &self.encoding.is_some())
            .finish()
    }
}

impl AuthSettings {
    /// The keys read at load ([`super::Settings::validate`]); settings that
    /// did not go through it (tests that build `[auth]` by hand) read them now.
    ///
    /// # Errors
    /// As [`AuthSettings::token_keys`].
    pub fn loaded_keys(&self) -> Result<TokenKeys, ConfigError> {
        match &self.keys {
            Some(keys) => Ok(keys.clone()),
            None => self.token_keys(),
        }
    }

    /// Reads and parses the keys of `auth.algorithm` (RFC 7518/8037): the
    /// HS256 `jwt_secret`, or the PEM files `public_key_file` (and
    /// `private_key_file` when set) for RS256, ES256 and EdDSA.
    ///
    /// # Errors
    /// [`ConfigError`] naming the key: unknown `auth.algorithm`, a `jwt_secret`
    /// under 32 bytes (HS256), or a key file that is missing, unreadable or not
    /// a PEM key of the algorithm's type.
    pub fn token_keys(&self) -> Result<TokenKeys, ConfigError> {
        let bad = |key: &str, problem: String| ConfigError::Invalid {
            key: key.into(),
            problem,
        };
        let algorithm = ALGORITHMS
            .iter()
            .find(|(name, _)| *name == self.algorithm)
            .map(|(_, a)| *a)
            .ok_or_else(|| {
                bad(
                    "auth.algorithm",
                    format!(
                        "`{}` is not accepted; use HS256, RS256, ES256 or EdDSA",
                        self.algorithm
                    ),
                )
            })?;
        let (encoding, decoding) = if algorithm == Algorithm::HS256 {
            let secret = self.jwt_secret.expose_secret().as_bytes();
            if secret.len() < 32 {
                return Err(bad("auth.jwt_secret", "must be at least 32 bytes".into()));
            }
            let not_secret = |e: jsonwebtoken::errors::Error| {
                bad("auth.jwt_secret", format!("is not a usable HMAC key: {e}"))
            };
            (
                Some(EncodingKey::from_secret(secret).map_err(not_secret)?),
                DecodingKey::from_secret(secret).map_err(not_secret)?,
            )
        } else {
            let public = read_key("auth.public_key_file", &self.public_key_file)?;
            let not_key = |key: &str, e: jsonwebtoken::errors::Error| {
                bad(key, format!("is not a PEM key for {}: {e}", self.algorithm))
            };
            let decoding = match algorithm {
                Algorithm::RS256 => DecodingKey::from_rsa_pem(&public),
                Algorithm::ES256 => DecodingKey::from_ec_pem(&public),
                _ => DecodingKey::from_ed_pem(&public),
            }
            .map_err(|e| not_key("auth.public_key_file", e))?;
            let encoding = if self.private_key_file.trim().is_empty() {
                None
            } else {
                let private = read_key("auth.private_key_file", &self.private_key_file)?;
                Some(
                    match algorithm {
                        Algorithm::RS256 => EncodingKey::from_rsa_pem(&private),
                        Algorithm::ES256 => EncodingKey::from_ec_pem(&private),
                        _ => EncodingKey::from_ed_pem(&private),
                    }
                    .map_err(|e| not_key("auth.private_key_file", e))?,
                )
            };
            (encoding, decoding)
        };
        Ok(TokenKeys {
            algorithm,
            encoding,
            decoding,
        })
    }
}
