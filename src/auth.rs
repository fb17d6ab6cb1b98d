//! Authentication: `Authorization: Bearer <JWT>` becomes a typed [`Principal`].
//!
//! Tokens are HS256-signed with `auth.jwt_secret` and carry the claims fixed by
//! SPEC "Authentication and roles": `sub` (the client id), `roles` (array of
//! strings) and `exp` (Unix seconds, required). Handlers take a `Principal`
//! argument and state the role they need with [`Principal::require`]; a missing
//! or invalid token never reaches handler code (401 problem document).

use std::future::{ready, Ready};

use actix_web::{dev::Payload, http::header, web, FromRequest, HttpRequest};
use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};

use crate::config::AuthSettings;
use crate::error::ApiError;

/// A role from the token's `roles` claim. Unknown role names are ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Sends commands, reads its own commands, manages its own signing secret.
    Client,
    /// Everything, including dead letters and replay.
    Admin,
    /// Read-only access to every client's commands.
    Reader,
}

impl Role {
    /// Parses a role name as it appears in the `roles` claim.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "client" => Some(Role::Client),
            "admin" => Some(Role::Admin),
            "reader" => Some(Role::Reader),
            _ => None,
        }
    }
}

/// JWT claims (SPEC: `sub`, `roles`, `exp`).
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    /// Client id.
    pub sub: String,
    /// Role names.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Expiry, Unix seconds.
    pub exp: i64,
    /// Issued at, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
}

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The token's `sub`: the client id that owns commands and secrets.
    pub client_id: String,
    /// Known roles from the token.
    pub roles: Vec<Role>,
}

impl Principal {
    /// Whether the caller has `role`.
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// Succeeds when the caller has at least one of `roles`.
    ///
    /// # Errors
    /// 403 [`ApiError::Forbidden`] otherwise.
    pub fn require(&self, roles: &[Role]) -> Result<(), ApiError> {
        if roles.iter().any(|r| self.has(*r)) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "this operation needs one of the roles: {}",
                roles
                    .iter()
                    .map(|r| format!("{r:?}").to_lowercase())
                    .collect::<Vec<_>>()
                    .join(", ")
            )))
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

/// Keys and validation rules for tokens, shared with the HTTP app as `web::Data`.
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl JwtKeys {
    /// Builds HS256 keys from `[auth]`.
    pub fn new(settings: &AuthSettings) -> Self {
        let secret = settings.jwt_secret.expose_secret().as_bytes();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = settings.leeway_s;
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.validate_exp = true;
        JwtKeys {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// Mints a token for `sub` with `roles`, valid for `ttl_s` seconds.
    ///
    /// # Errors
    /// Only if signing fails (it does not for HS256 with a valid key).
    pub fn mint(&self, sub: &str, roles: &[String], ttl_s: u64) -> anyhow::Result<String> {
        let now = chrono::Utc::now().timestamp();
        let ttl = i64::try_from(ttl_s).unwrap_or(i64::MAX / 2);
        let claims = Claims {
            sub: sub.to_owned(),
            roles: roles.to_vec(),
            exp: now.saturating_add(ttl),
            iat: Some(now),
        };
        Ok(encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &self.encoding,
        )?)
    }

    /// Verifies a token and returns its principal.
    ///
    /// # Errors
    /// 401 for a bad signature, wrong algorithm, missing/expired `exp` or empty `sub`.
    pub fn verify(&self, token: &str) -> Result<Principal, ApiError> {
        let data = decode::<Claims>(token, &self.decoding, &self.validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            let why = match e.kind() {
                ErrorKind::ExpiredSignature => "token has expired",
                ErrorKind::InvalidSignature => "token signature is invalid",
                ErrorKind::InvalidAlgorithm => "token algorithm is not accepted",
                ErrorKind::MissingRequiredClaim(_) => "token lacks a required claim (exp, sub)",
                _ => "token is malformed",
            };
            ApiError::Unauthorized(why.to_owned())
        })?;
        if data.claims.sub.is_empty() || data.claims.sub.len() > 255 {
            return Err(ApiError::Unauthorized(
                "token `sub` must be 1 to 255 characters".into(),
            ));
        }
        Ok(Principal {
            client_id: data.claims.sub,
            roles: data
                .claims
                .roles
                .iter()
                .filter_map(|r| Role::parse(r))
                .collect(),
        })
    }
}

impl FromRequest for Principal {
    type Error = ApiError;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(authenticate(req))
    }
}

fn authenticate(req: &HttpRequest) -> Result<Principal, ApiError> {
    let keys = req
        .app_data::<web::Data<JwtKeys>>()
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("JwtKeys missing from app data")))?;
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

    fn keys(secret: &str) -> JwtKeys {
        JwtKeys::new(&AuthSettings {
            jwt_secret: SecretString::from(secret.to_owned()),
            leeway_s: 0,
        })
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
    }

    #[test]
    fn other_key_is_rejected() {
        let t = keys("0123456789abcdef0123456789abcdef")
            .mint("a", &[], 60)
            .expect("mint");
        let err = keys("fedcba9876543210fedcba9876543210")
            .verify(&t)
            .expect_err("must fail");
        assert!(matches!(err, ApiError::Unauthorized(_)));
    }

    #[test]
    fn owner_and_readers_can_read() {
        let p = Principal {
            client_id: "a".into(),
            roles: vec![Role::Client],
        };
        assert!(p.can_read("a"));
        assert!(!p.can_read("b"));
        let r = Principal {
            client_id: "x".into(),
            roles: vec![Role::Reader],
        };
        assert!(r.can_read("b"));
    }
}
