//! Authorization: every route's required role, declared in one table.
//!
//! [`RULES`] lists each `(method, path pattern)` the API serves with who may
//! call it ([`Access`]) and how ownership limits what a caller sees
//! ([`Ownership`]). The [`layer`] middleware enforces it for every request
//! before any handler runs: it looks the request's matched route pattern up in
//! the table, authenticates the bearer token (401), checks the role (403),
//! consumes the token's `jti` on POSTs when `auth.require_jti` is set, and
//! hands the [`Principal`] to the handler through the request's extensions.
//! A handler that takes a `Principal` on a route missing from the table gets
//! none and fails closed (500), so the table cannot silently drift from the
//! routes. `tests/api/authz.rs` walks the whole table over real HTTP and
//! checks that it covers every path of the OpenAPI document.
//!
//! Ownership is data-dependent and stays in the handlers: a client reading
//! another client's command gets 404, so its existence does not leak
//! (`docs/reference.md`, "Authentication and roles").
//!
//! `POST /v1/commands` and `GET /v1/queries/...` are authorized per operation
//! and per query (`roles = [...]` in `[integrations.NAME.operations.OP]` and
//! `[integrations.NAME.queries.Q]`): the layer first requires a role allowed
//! by at least one configured operation (resp. query), so a caller who can
//! send nothing gets 403 before its body is read; the handler then checks the
//! named operation's (query's) own list.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::HttpMessage;
use std::sync::Arc;

use crate::auth::{Principal, Role};
use crate::config::{
    OperationSettings, QuerySettings, Settings, DEFAULT_OPERATION_ROLES, DEFAULT_QUERY_ROLES,
};
use crate::db::WritePool;
use crate::http::error::ApiError;
use crate::http::state::component;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No token needed (probes, metrics, the API description).
    Public,
    /// A valid token with at least one of these roles.
    Roles(&'static [Role]),
    /// A valid token with a role the named operation allows (its `roles`,
    /// default `["client"]`).
    Operation,
    /// A valid token with a role the named query allows (its `roles`,
    /// default `["client", "reader", "admin"]`).
    Query,
}

/// How ownership narrows what an authorized caller reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ownership {
    /// Not client-owned (public, admin-wide or upstream data).
    None,
    /// Acts on the caller's own resources only (its own signing secret; the
    /// commands it creates are its own).
    Own,
    /// A client-owned resource: its owner (role `client`), readers and admins
    /// see it; another client gets 404. Lists are filtered to the caller.
    OwnerOrReaders,
}

/// One route of the API.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    /// HTTP method.
    pub method: &'static str,
    /// The route pattern as registered with actix (and as in OpenAPI).
    pub path: &'static str,
    /// Who may call it.
    pub access: Access,
    /// How ownership narrows it.
    pub ownership: Ownership,
}

const ADMIN: &[Role] = &[Role::Admin];
const CLIENT: &[Role] = &[Role::Client];
const ANY_ROLE: &[Role] = &[Role::Client, Role::Reader, Role::Admin];

/// Every route the API serves and who may call it (`docs/reference.md`,
/// "Authentication and roles").
pub const RULES: &[Rule] = &[
    rule("POST", "/v1/commands", Access::Operation, Ownership::Own),
    rule(
        "GET",
        "/v1/commands",
        Access::Roles(ANY_ROLE),
        Ownership::OwnerOrReaders,
    ),
    rule(
        "GET",
        "/v1/commands/{id}",
        Access::Roles(ANY_ROLE),
        Ownership::OwnerOrReaders,
    ),
    rule(
        "GET",
        "/v1/commands/{id}/attempts",
        Access::Roles(ANY_ROLE),
        Ownership::OwnerOrReaders,
    ),
    rule(
        "GET",
        "/v1/commands/{id}/events",
        Access::Roles(ANY_ROLE),
        Ownership::OwnerOrReaders,
    ),
    rule(
        "GET",
        "/v1/events",
        Access::Roles(ANY_ROLE),
        Ownership::OwnerOrReaders,
    ),
    rule(
        "GET",
        "/v1/dead-letters",
        Access::Roles(ADMIN),
        Ownership::None,
    ),
    rule(
        "POST",
        "/v1/dead-letters/{id}/replay",
        Access::Roles(ADMIN),
        Ownership::None,
    ),
    rule(
        "POST",
        "/v1/dead-letters/replay",
        Access::Roles(ADMIN),
        Ownership::None,
    ),
    rule(
        "GET",
        "/v1/signing-secret",
        Access::Roles(CLIENT),
        Ownership::Own,
    ),
    rule(
        "POST",
        "/v1/signing-secret/rotate",
        Access::Roles(CLIENT),
        Ownership::Own,
    ),
    rule(
        "GET",
        "/v1/queries/{integration}/{query}",
        Access::Query,
        Ownership::None,
    ),
    rule("POST", "/v1/queries/batch", Access::Query, Ownership::None),
    rule(
        "GET",
        "/v1/admin/integrations",
        Access::Roles(ADMIN),
        Ownership::None,
    ),
    rule("GET", "/healthz", Access::Public, Ownership::None),
    rule("GET", "/readyz", Access::Public, Ownership::None),
    rule("GET", "/metrics", Access::Public, Ownership::None),
    rule("GET", "/openapi.json", Access::Public, Ownership::None),
];

const fn rule(
    method: &'static str,
    path: &'static str,
    access: Access,
    ownership: Ownership,
) -> Rule {
    Rule {
        method,
        path,
        access,
        ownership,
    }
}

impl Rule {
    /// Whether a request on this route spends the token's `jti` (with
    /// `auth.require_jti`): state-changing requests do — every POST except
    /// the read-only `POST /v1/queries/batch`. GETs are safe and idempotent,
    /// so a client polling with one token keeps working.
    pub fn consumes_jti(&self) -> bool {
        self.method == "POST" && self.access != Access::Query
    }
}

/// The rule for `method` on the route `pattern`, if the table has one.
pub fn find(method: &Method, pattern: &str) -> Option<&'static Rule> {
    RULES
        .iter()
        .find(|r| r.path == pattern && r.method == method.as_str())
}

/// The roles allowed to send commands to `operation` (parsed at load), or
/// the default when none are configured.
pub fn operation_roles(operation: &OperationSettings) -> &[Role] {
    operation
        .roles
        .as_deref()
        .unwrap_or(DEFAULT_OPERATION_ROLES)
}

/// The roles allowed to run `query` (parsed at load), or the default.
pub fn query_roles(query: &QuerySettings) -> &[Role] {
    query.roles.as_deref().unwrap_or(DEFAULT_QUERY_ROLES)
}

/// The per-operation and per-query role lists folded into what the layer can
/// check before the body or path names one; shared as app data.
#[derive(Debug, Clone)]
pub struct Authz {
    /// Roles allowed by at least one operation (the default list when none
    /// is configured, so validation errors stay reachable).
    pub any_operation: Vec<Role>,
    /// Roles allowed by at least one query (likewise).
    pub any_query: Vec<Role>,
}

impl Authz {
    /// Folds `[integrations]` into the union of allowed roles.
    pub fn from_settings(settings: &Settings) -> Self {
        let union = |lists: Vec<&[Role]>, default: &[Role]| {
            if lists.is_empty() {
                return default.to_vec();
            }
            let mut all: Vec<Role> = Vec::new();
            for &role in lists.into_iter().flatten() {
                if !all.contains(&role) {
                    all.push(role);
                }
            }
            all
        };
        let integrations = settings.integrations.values();
        Authz {
            any_operation: union(
                integrations
                    .clone()
                    .flat_map(|i| i.operations.values().map(operation_roles))
                    .collect(),
                DEFAULT_OPERATION_ROLES,
            ),
            any_query: union(
                integrations
                    .flat_map(|i| i.queries.values().map(query_roles))
                    .collect(),
                DEFAULT_QUERY_ROLES,
            ),
        }
    }
}

/// The authorization middleware (see the module docs): enforces [`RULES`]
/// for every request whose path matches a registered route.
///
/// # Errors
/// 401 (no or invalid token, replayed `jti`), 403 (role not allowed), 503/500
/// (database failure while recording a `jti`).
pub async fn layer(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    // Unrouted paths fall through to the 404 default service; a routed
    // pattern without a rule for this method gets no principal (handlers
    // needing one fail closed), and actix answers 405/404 for methods that
    // have no route at all.
    // Matched on the path as the router sees it (percent-decoded except `%`,
    // `/` and `+`), so an encoded spelling of a route gets that route's rule.
    let Some(rule) = req
        .request()
        .resource_map()
        .match_pattern(req.match_info().as_str())
        .and_then(|pattern| find(req.method(), &pattern))
    else {
        return next.call(req).await;
    };
    if let Some(principal) = authorize(&req, rule).await? {
        req.extensions_mut().insert(principal);
    }
    next.call(req).await
}

async fn authorize(req: &ServiceRequest, rule: &Rule) -> Result<Option<Principal>, ApiError> {
    let roles: &[Role] = match rule.access {
        Access::Public => return Ok(None),
        Access::Roles(roles) => roles,
        Access::Operation | Access::Query => &[],
    };
    let principal = crate::auth::authenticate(req.request())?;
    let authz = component::<Arc<Authz>>(req.request())?;
    match rule.access {
        Access::Operation => principal.require(&authz.any_operation)?,
        Access::Query => principal.require(&authz.any_query)?,
        _ => principal.require(roles)?,
    }
    let keys = component::<Arc<crate::auth::JwtKeys>>(req.request())?;
    // Only state-changing requests consume a jti: GETs are safe and
    // idempotent, and a client polling with one token must keep working.
    if keys.require_jti() && rule.consumes_jti() {
        let pool = component::<WritePool>(req.request())?;
        crate::auth::consume_jti(&pool.0, &principal, keys.leeway_s()).await?;
    }
    Ok(Some(principal))
}

/// Authentication and authorization errors at the HTTP edge: 401 (with
/// `WWW-Authenticate: Bearer`), 403, and the database rule for the `jti` store.
impl From<crate::auth::AuthError> for ApiError {
    fn from(e: crate::auth::AuthError) -> Self {
        use crate::auth::AuthError;
        match e {
            AuthError::Unauthenticated(why) => ApiError::Unauthorized(why),
            AuthError::MissingRole(_) => ApiError::Forbidden(e.to_string()),
            AuthError::Database(e) => e.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_route_has_one_rule() {
        for (i, a) in RULES.iter().enumerate() {
            for b in &RULES[i + 1..] {
                assert!(
                    !(a.method == b.method && a.path == b.path),
                    "{} {} twice",
                    a.method,
                    a.path
                );
            }
        }
    }

    #[test]
    fn union_of_operation_roles_defaults_to_client() {
        let s = Settings::defaults().expect("defaults");
        let a = Authz::from_settings(&s);
        assert_eq!(a.any_operation, vec![Role::Client]);
        assert_eq!(a.any_query, vec![Role::Client, Role::Reader, Role::Admin]);
    }
}
