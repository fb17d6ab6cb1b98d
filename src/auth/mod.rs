//! Authentication: `Authorization: Bearer <JWT>` becomes a typed [`Principal`].
//!
//! Tokens carry the claims of `docs/reference.md`, "Authentication and roles": `sub`
//! (the client id), `roles` (array of strings) and `exp` (Unix seconds,
//! required), plus optional `iat`, `nbf`, `iss`, `aud` and `jti` (RFC 7519).
//! [`JwtKeys`] verifies them with exactly one configured algorithm
//! (`auth.algorithm`: HS256, RS256, ES256 or EdDSA, RFC 7518/8037), so `none`
//! and algorithm confusion (an RSA public key used as an HMAC secret) are
//! refused; see `docs/security.md` "Tokens".
//!
//! The authorization layer ([`crate::auth::authz`]) authenticates every request to a
//! protected route, checks its role against the route table and puts the
//! [`Principal`] into the request's extensions; handlers take a `Principal`
//! argument, which only reads it from there. A missing or invalid token never
//! reaches handler code (401 problem document).

pub mod authz;
pub mod limits;

use std::future::{ready, Ready};

use std::sync::Arc;

use actix_web::{dev::Payload, http::header, FromRequest, HttpMessage, HttpRequest};
use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use crate::config::{AuthSettings, ConfigError, TokenKeys};
use crate::http::error::ApiError;
use crate::http::state::component;

pub use crate::domain::Role;

/// JWT claims (`sub`, `roles`, `exp`; RFC 7519 registered claims).
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    /// Client id.
    pub sub: String,
    /// Role names.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Expiry, Unix seconds (required).
    pub exp: i64,
    /// Issued at, Unix seconds; bounds the lifetime (`exp - iat`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    /// Not before, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    /// Issuer (checked against `auth.issuer` when set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Audience: a string or an array of strings (checked against
    /// `auth.audience` when set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<serde_json::Value>,
    /// Token id (required and single-use for POSTs with `auth.require_jti`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
}

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The token's `sub`: the client id that owns commands and secrets.
    pub client_id: String,
    /// Known roles from the token.
    pub roles: Vec<Role>,
    /// The token's `jti`, if any (1 to 255 characters).
    pub jti: Option<String>,
    /// The token's `exp`, Unix seconds.
    pub expires_at: i64,
}

impl Principal {
    /// Whether the caller has `role`.
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// Succeeds when the caller has at least one of `roles`.
    ///
    /// # Errors
    /// [`AuthError::MissingRole`] (403 at the edge) otherwise.
    pub fn require(&self, roles: &[Role]) -> Result<(), AuthError> {
        if roles.iter().any(|r| self.has(*r)) {
            Ok(())
        } else {
            Err(AuthError::MissingRole(
                roles
                    .iter()
                    .map(|r| r.name())
                    .collect::<Vec<_>>()
                    .join(", "),
            ))
        }
    }

    /// Readers and admins see every client's commands.
    pub fn reads_all(&self) -> bool {
        self.has(Role::Admin) || self.has(Role::Reader)
    }

    /// Whether the caller may read a resource owned by `owner`: the owner with
    /// role `client`, or any reader/admin.
    pub fn can_read(&self, owner: &str) -> bool {
        self.reads_all() || (self.has(Role::Client) && self.client_id == owner)
    }
}

/// Longest accepted `jti`, characters.
const MAX_JTI_LEN: usize = 255;

/// Keys and validation rules for tokens, built once and shared through the
/// application state (a [`crate::http::state::Component`]).
pub struct JwtKeys {
    algorithm: Algorithm,
    /// Present for HS256, and for the others when `auth.private_key_file` is set.
    encoding: Option<EncodingKey>,
    decoding: DecodingKey,
    validation: Validation,
    leeway_s: i64,
    max_lifetime_s: i64,
    issuer: Option<String>,
    audience: Option<String>,
    require_jti: bool,
}

impl JwtKeys {
    /// Builds the keys and validation rules from `[auth]`: reads
    /// `public_key_file` (and `private_key_file` when set) for the asymmetric
    /// algorithms.
    ///
    /// # Errors
    /// [`ConfigError`] naming the key: unknown `auth.algorithm`, a `jwt_secret`
    /// under 32 bytes (HS256), or a key file that is missing, unreadable or not
    /// a PEM key of the algorithm's type.
    pub fn new(settings: &AuthSettings) -> Result<Self, ConfigError> {
        Ok(JwtKeys::with_keys(settings, settings.token_keys()?))
    }

    /// As [`JwtKeys::new`], with the keys read when configuration was loaded
    /// ([`AuthSettings::loaded_keys`]): what the service and the CLI use.
    ///
    /// # Errors
    /// As [`JwtKeys::new`], only for settings that were not loaded.
    pub fn from_loaded(settings: &AuthSettings) -> Result<Self, ConfigError> {
        Ok(JwtKeys::with_keys(settings, settings.loaded_keys()?))
    }

    fn with_keys(settings: &AuthSettings, keys: TokenKeys) -> Self {
        let TokenKeys {
            algorithm,
            encoding,
            decoding,
        } = keys;
        let issuer = Some(settings.issuer.trim().to_owned()).filter(|s| !s.is_empty());
        let audience = Some(settings.audience.trim().to_owned()).filter(|s| !s.is_empty());
        // Exactly one algorithm: the header's `alg` must be it (no `none`, no
        // HS256 token "signed" with our RSA public key).
        let mut validation = Validation::new(algorithm);
        validation.leeway = settings.leeway_s;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        if let Some(iss) = &issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        match &audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            // Not configured: an `aud` in the token is not ours to judge.
            None => validation.validate_aud = false,
        }
        // (jsonwebtoken checks only exp/nbf/sub/iss/aud here; `jti` is
        // checked in `verify`.)
        validation.set_required_spec_claims(&required);
        JwtKeys {
            algorithm,
            encoding,
            decoding,
            validation,
            leeway_s: i64::try_from(settings.leeway_s).unwrap_or(60),
            max_lifetime_s: i64::try_from(settings.max_token_lifetime_s).unwrap_or(i64::MAX),
            issuer,
            audience,
            require_jti: settings.require_jti,
        }
    }

    /// Whether POSTs consume the token's `jti` (`auth.require_jti`).
    pub fn require_jti(&self) -> bool {
        self.require_jti
    }

    /// The clock skew allowed, seconds (`auth.leeway_s`).
    pub fn leeway_s(&self) -> i64 {
        self.leeway_s
    }

    /// Mints a token for `sub` with `roles`, valid for `ttl_s` seconds, with
    /// `iat`, a random `jti`, and `iss`/`aud` when configured.
    ///
    /// # Errors
    /// `ttl_s` above `auth.max_token_lifetime_s`, or no private key for an
    /// asymmetric algorithm (`auth.private_key_file` unset).
    pub fn mint(&self, sub: &str, roles: &[String], ttl_s: u64) -> anyhow::Result<String> {
        let ttl = i64::try_from(ttl_s).unwrap_or(i64::MAX);
        if ttl > self.max_lifetime_s {
            anyhow::bail!(
                "--ttl {ttl_s} exceeds auth.max_token_lifetime_s ({} seconds)",
                self.max_lifetime_s
            );
        }
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: sub.to_owned(),
            roles: roles.to_vec(),
            exp: now.saturating_add(ttl),
            iat: Some(now),
            nbf: None,
            iss: self.issuer.clone(),
            aud: self.audience.clone().map(serde_json::Value::String),
            jti: Some(uuid::Uuid::new_v4().to_string()),
        };
        self.sign(&claims)
    }

    /// Signs `claims` as they are with the configured algorithm (no checks).
    ///
    /// # Errors
    /// No private key for an asymmetric algorithm, or signing failed.
    pub fn sign(&self, claims: &Claims) -> anyhow::Result<String> {
        let key = self.encoding.as_ref().ok_or_else(|| {
            anyhow::anyhow!(
                "auth.private_key_file is not set: cannot mint {:?} tokens (the API only needs the public key)",
                self.algorithm
            )
        })?;
        Ok(encode(&Header::new(self.algorithm), claims, key)?)
    }

    /// Verifies a token and returns its principal.
    ///
    /// # Errors
    /// [`AuthError::Unauthenticated`] (401 at the edge) for a malformed token, an `alg` other than the configured one, a
    /// bad signature, missing/expired `exp`, a future `nbf` or `iat`, a wrong
    /// `iss`/`aud` (when configured), a lifetime above
    /// `auth.max_token_lifetime_s`, a missing `jti` (with `auth.require_jti`)
    /// or an empty `sub`. Does not consume the `jti` (see [`consume_jti`]).
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let data = decode::<Claims>(token, &self.decoding, &self.validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            let why = match e.kind() {
                ErrorKind::ExpiredSignature => "token has expired",
                ErrorKind::ImmatureSignature => "token is not valid yet (`nbf`)",
                ErrorKind::InvalidSignature => "token signature is invalid",
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                    "token algorithm is not accepted"
                }
                ErrorKind::InvalidIssuer => "token issuer (`iss`) is not accepted",
                ErrorKind::InvalidAudience => "token audience (`aud`) is not accepted",
                ErrorKind::MissingRequiredClaim(_) => {
                    "token lacks a required claim (exp, sub, and iss, aud, jti when configured)"
                }
                // `Claims` itself requires `sub` and `exp`.
                ErrorKind::Json(j) if j.to_string().starts_with("missing field") => {
                    "token lacks a required claim (exp, sub, and iss, aud, jti when configured)"
                }
                _ => "token is malformed",
            };
            AuthError::Unauthenticated(why.to_owned())
        })?;
        let claims = data.claims;
        if claims.sub.is_empty() || claims.sub.len() > 255 {
            return Err(AuthError::Unauthenticated(
                "token `sub` must be 1 to 255 characters".into(),
            ));
        }
        let now = chrono::Utc::now().timestamp();
        if claims
            .iat
            .is_some_and(|iat| iat > now.saturating_add(self.leeway_s))
        {
            return Err(AuthError::Unauthenticated(
                "token was issued in the future (`iat`)".into(),
            ));
        }
        let lifetime = claims.exp.saturating_sub(claims.iat.unwrap_or(now));
        if lifetime > self.max_lifetime_s {
            return Err(AuthError::Unauthenticated(format!(
                "token lifetime exceeds the maximum of {} seconds",
                self.max_lifetime_s
            )));
        }
        match &claims.jti {
            None if self.require_jti => {
                return Err(AuthError::Unauthenticated(
                    "token lacks a required claim (jti)".into(),
                ))
            }
            Some(jti) if jti.is_empty() || jti.len() > MAX_JTI_LEN => {
                return Err(AuthError::Unauthenticated(
                    "token `jti` must be 1 to 255 characters".into(),
                ))
            }
            _ => {}
        }
        Ok(Principal {
            client_id: claims.sub,
            roles: claims.roles.iter().filter_map(|r| Role::parse(r)).collect(),
            jti: claims.jti,
            expires_at: claims.exp,
        })
    }
}

/// Records the principal's `jti` as used, until its token expires (plus the
/// leeway, while the token would still be accepted). Called for POSTs when
/// `auth.require_jti` is set.
///
/// # Errors
/// [`AuthError::Unauthenticated`] (401) when the `jti` was already used by
/// this client (a replayed request) or is missing; [`AuthError::Database`]
/// (503/500) when the database fails.
pub async fn consume_jti(
    pool: &PgPool,
    principal: &Principal,
    leeway_s: i64,
) -> Result<(), AuthError> {
    let jti = principal
        .jti
        .as_deref()
        .ok_or_else(|| AuthError::Unauthenticated("token lacks a `jti`".into()))?;
    let recorded = sqlx::query(
        "INSERT INTO token_jtis (client_id, jti, expires_at)
         VALUES ($1, $2, to_timestamp($3))
         ON CONFLICT (client_id, jti) DO NOTHING",
    )
    .bind(&principal.client_id)
    .bind(jti)
    .bind(principal.expires_at.saturating_add(leeway_s) as f64)
    .execute(pool)
    .await?
    .rows_affected();
    if recorded == 0 {
        return Err(AuthError::Unauthenticated(
            "token `jti` was already used; mint a new token for each request".into(),
        ));
    }
    Ok(())
}

/// Why a caller is not let in, below the HTTP edge (token verification, role
/// checks, `jti` replay protection). The messages are meant for the client;
/// `crate::auth::authz` maps them to 401, 403 and the database rule.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No acceptable token: missing, malformed, badly signed, expired, not
    /// yet valid, too long-lived, or its `jti` was already used (401).
    #[error("{0}")]
    Unauthenticated(String),
    /// A valid token without any of the roles the route needs; the roles it
    /// needs, comma-separated (403).
    #[error("this operation needs one of the roles: {0}")]
    MissingRole(String),
    /// Recording the `jti` failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl FromRequest for Principal {
    type Error = ApiError;
    type Future = Ready<Result<Self, Self::Error>>;

    /// The principal the authorization layer ([`crate::auth::authz`]) stored for
    /// this request. A route without an authorization rule has none, and
    /// fails closed with 500 (a wiring bug, never an open door).
    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(req.extensions().get::<Principal>().cloned().ok_or_else(|| {
            ApiError::Internal(anyhow::anyhow!(
                "no authorization rule ran for {} {}",
                req.method(),
                req.path()
            ))
        }))
    }
}

/// A principal already verified from this request's bearer token, kept in the
/// request's extensions so [`authenticate`] does not verify the token twice.
#[derive(Debug, Clone)]
pub struct Authenticated(pub Principal);

/// Verifies the request's bearer token.
///
/// # Errors
/// 401 when the header is missing, not `Bearer <token>`, or the token fails
/// [`JwtKeys::verify`].
pub fn authenticate(req: &HttpRequest) -> Result<Principal, ApiError> {
    // Already verified earlier in this request (the per-client rate limit
    // in `crate::auth::limits` needs the `sub` first): one signature check per request.
    if let Some(Authenticated(principal)) = req.extensions().get::<Authenticated>() {
        tracing::Span::current().record("client_id", principal.client_id.as_str());
        return Ok(principal.clone());
    }
    let keys = component::<Arc<JwtKeys>>(req)?;
    let value = req
        .headers()
        .get(header::AUTHORIZATION)
        .ok_or_else(|| ApiError::Unauthorized("missing Authorization header".into()))?
        .to_str()
        .map_err(|_| ApiError::Unauthorized("Authorization header is not ASCII".into()))?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or_else(|| ApiError::Unauthorized("Authorization must be `Bearer <token>`".into()))?;
    let principal = keys.verify(token.trim())?;
    tracing::Span::current().record("client_id", principal.client_id.as_str());
    Ok(principal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;

    fn settings(secret: &str) -> AuthSettings {
        let mut s = crate::config::Settings::defaults().expect("defaults").auth;
        s.jwt_secret = SecretString::from(secret.to_owned());
        s.leeway_s = 0;
        s
    }

    fn keys(secret: &str) -> JwtKeys {
        JwtKeys::new(&settings(secret)).expect("keys")
    }

    fn principal(client_id: &str, roles: Vec<Role>) -> Principal {
        Principal {
            client_id: client_id.into(),
            roles,
            jti: None,
            expires_at: 0,
        }
    }

    #[test]
    fn round_trip_keeps_sub_and_roles() {
        let k = keys("0123456789abcdef0123456789abcdef");
        let t = k
            .mint("acme", &["client".into(), "bogus".into()], 60)
            .expect("mint");
        let p = k.verify(&t).expect("verify");
        assert_eq!(p.client_id, "acme");
        assert_eq!(p.roles, vec![Role::Client]);
        assert!(p.jti.is_some(), "minted tokens carry a jti");
    }

    #[test]
    fn other_key_is_rejected() {
        let t = keys("0123456789abcdef0123456789abcdef")
            .mint("a", &[], 60)
            .expect("mint");
        let err = keys("fedcba9876543210fedcba9876543210")
            .verify(&t)
            .expect_err("must fail");
        assert!(matches!(err, AuthError::Unauthenticated(_)));
    }

    #[test]
    fn minting_beyond_the_maximum_lifetime_fails() {
        let mut s = settings("0123456789abcdef0123456789abcdef");
        s.max_token_lifetime_s = 600;
        let k = JwtKeys::new(&s).expect("keys");
        assert!(k.mint("a", &[], 600).is_ok());
        let err = k.mint("a", &[], 601).expect_err("too long").to_string();
        assert!(err.contains("auth.max_token_lifetime_s"), "{err}");
    }

    #[test]
    fn bad_algorithm_and_missing_key_file_are_named() {
        let mut s = settings("0123456789abcdef0123456789abcdef");
        s.algorithm = "none".into();
        let err = JwtKeys::new(&s).err().expect("none").to_string();
        assert!(err.contains("auth.algorithm"), "{err}");
        s.algorithm = "RS256".into();
        let err = JwtKeys::new(&s).err().expect("no key").to_string();
        assert!(err.contains("auth.public_key_file"), "{err}");
        s.public_key_file = "/nonexistent/key.pem".into();
        let err = JwtKeys::new(&s).err().expect("unreadable").to_string();
        assert!(err.contains("auth.public_key_file"), "{err}");
    }

    #[test]
    fn a_request_the_authz_layer_did_not_see_fails_closed() {
        let req = actix_web::test::TestRequest::default()
            .insert_header(("Authorization", "Bearer whatever"))
            .to_http_request();
        let got = Principal::from_request(&req, &mut Payload::None).into_inner();
        assert!(matches!(got, Err(ApiError::Internal(_))), "{got:?}");
        req.extensions_mut()
            .insert(principal("a", vec![Role::Client]));
        let got = Principal::from_request(&req, &mut Payload::None).into_inner();
        assert_eq!(got.expect("stored principal").client_id, "a");
    }

    #[test]
    fn owner_and_readers_can_read() {
        let p = principal("a", vec![Role::Client]);
        assert!(p.can_read("a"));
        assert!(!p.can_read("b"));
        let r = principal("x", vec![Role::Reader]);
        assert!(r.can_read("b"));
    }
}
