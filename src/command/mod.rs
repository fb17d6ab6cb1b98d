//! The write side: accepting commands and managing signing secrets.
//!
//! `POST /v1/commands` authenticates, validates the body into a [`NewCommand`]
//! (known integration and operation, filled path, checked callback URL and
//! idempotency key), hands it to the group-intake writer and answers
//! `202 Accepted` only after the command and its outbox job are committed. No
//! handler here calls a third party or a callback URL: work leaves the process
//! only through the outbox. While the outbox is over an `[admission]` bound,
//! new commands are refused with 503 ([`admission`]). Logs use the target
//! `hookrelay::command`.

pub mod admission;
pub mod intake;
pub mod replay;

use std::sync::Arc;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::Principal;
use crate::config::Settings;
use crate::db::WritePool;
use crate::delivery::secrets::SecretStoreError;
use crate::domain::{CallbackUrl, CommandStatus, DeliveryStatus, IdempotencyKey, JsonText};
use crate::http::body::{check_json_content_type, parse_json, read_limited};
use crate::http::error::{ApiError, Problem};
use crate::http::state::Shared;
use crate::query::{self, CallbackState, StatusDocument};
use crate::security::SecretSealer;

pub use intake::{Intake, IntakeError, IntakeOutcome, NewCommand};

/// Body of `POST /v1/commands` (`docs/reference.md`, "POST /v1/commands").
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CommandRequest {
    /// A configured integration (`[integrations.NAME]`).
    pub integration: String,
    /// One of its operations (`[integrations.NAME.operations.OP]`).
    pub operation: String,
    /// Values for the operation's `{name}` path placeholders (strings, numbers
    /// or booleans); URL-encoded into the path. A JSON object; kept as the
    /// exact text sent.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub params: Option<JsonText>,
    /// JSON body sent upstream as is: the exact text of this field, byte for
    /// byte (numbers are never re-formatted).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub body: Option<JsonText>,
    /// Where the signed result webhook is sent (http or https).
    pub callback_url: String,
}

/// Body of `GET /v1/signing-secret`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SigningSecret {
    /// The current Standard Webhooks secret, `whsec_` + base64 key.
    pub secret: String,
}

/// Body of `POST /v1/signing-secret/rotate`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RotatedSigningSecret {
    /// The new current Standard Webhooks secret (`whsec_` + base64 key); it
    /// signs every callback from now on.
    pub secret: String,
    /// Until when (RFC 3339) the previous secret keeps signing alongside the
    /// new one (`delivery.secret_rotation_grace_s` after the rotation);
    /// `null` if there was no previous secret.
    pub previous_expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Routes of the write side.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/commands", web::post().to(post_command))
        .route("/v1/signing-secret", web::get().to(get_signing_secret))
        .route(
            "/v1/dead-letters/replay",
            web::post().to(replay::replay_bulk),
        )
        .route(
            "/v1/dead-letters/{id}/replay",
            web::post().to(replay::replay_one),
        )
        .route(
            "/v1/signing-secret/rotate",
            web::post().to(rotate_signing_secret),
        );
}

/// Accept a command.
///
/// Answers 202 with `Location` and `Retry-After` once the command is durable.
/// A repeated `Idempotency-Key` with the same request returns the existing
/// command (header `Idempotent-Replayed: true`); with another request, 409.
/// While the ready backlog or the outbox lag is over its `[admission]` bound,
/// a new command gets 503 `overloaded` with `Retry-After`.
#[utoipa::path(
    post, path = "/v1/commands", tag = "commands",
    request_body = CommandRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "≤ 255 visible ASCII characters; same key + same body = same command")),
    responses(
        (status = 202, description = "Accepted; the status document", body = StatusDocument,
         headers(("Location" = String), ("Retry-After" = u64))),
        (status = 400, description = "Malformed JSON, or a required Idempotency-Key missing (`field`)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or invalid token, or a replayed `jti`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Token lacks a role the operation allows", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Idempotency key reused with another request", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid field (named in `field`)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Overloaded: the ready backlog or the outbox lag is over its `[admission]` bound (type `urn:hookrelay:problem:overloaded`, `detail` names the bound); or the database is unavailable or saturated (`unavailable`). Retry after `Retry-After` seconds", body = Problem, content_type = "application/problem+json",
         headers(("Retry-After" = u64))),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(
    name = "post_command",
    target = "hookrelay::command",
    skip_all,
    fields(command_id)
)]
pub async fn post_command(
    principal: Principal,
    req: HttpRequest,
    payload: web::Payload,
    settings: Shared<Arc<Settings>>,
    intake: Shared<Intake>,
    pool: Shared<WritePool>,
    query_state: Shared<Arc<query::QueryState>>,
) -> Result<HttpResponse, ApiError> {
    let idempotency_key = match req.headers().get("idempotency-key") {
        None if settings.commands.require_idempotency_key => {
            // draft-ietf-httpapi-idempotency-key-header: a missing required key is 400.
            return Err(ApiError::BadRequest {
                field: Some("Idempotency-Key".into()),
                message: "this server requires an Idempotency-Key header on POST /v1/commands"
                    .into(),
            });
        }
        None => None,
        Some(v) => {
            let s = v.to_str().map_err(|_| {
                ApiError::validation("Idempotency-Key", "must be visible ASCII characters")
            })?;
            Some(IdempotencyKey::parse(s).map_err(|m| ApiError::validation("Idempotency-Key", m))?)
        }
    };
    check_json_content_type(&req)?;
    let bytes = read_limited(payload, settings.server.body_limit_bytes).await?;
    let request = parse_json::<CommandRequest>(&bytes)?;
    let command = validate(&settings, &principal, request, idempotency_key)?;
    tracing::Span::current().record("command_id", tracing::field::display(command.id));
    if let Some(admission) =
        <Arc<admission::Admission> as crate::http::state::Component>::from_app(&req)
    {
        admission
            .admit(
                &pool.0,
                &command.client_id,
                command.idempotency_key.as_deref(),
            )
            .await?;
    }

    let outcome = intake.submit(command.clone()).await?;
    let retry_after = query_state
        .suggested_retry_after(&command.integration, settings.commands.retry_after_s)
        .to_string();
    let (doc, replayed) = match outcome {
        IntakeOutcome::Created { created_at } => {
            (StatusDocument::accepted(&command, created_at), false)
        }
        IntakeOutcome::Existing(id) => {
            let (_, doc) = query::load_status(&pool.0, id).await?.ok_or_else(|| {
                ApiError::Internal(anyhow::anyhow!("idempotent twin {id} vanished"))
            })?;
            (doc, true)
        }
        IntakeOutcome::Conflict => {
            return Err(ApiError::Conflict(
                "this Idempotency-Key was already used with a different request".into(),
            ))
        }
    };
    // Committed: this client's reads, and every read of this command, go to
    // the primary for a while (read-your-writes, `query.read_your_writes_ms`).
    query_state.writers.note(&principal.client_id, doc.id);
    let mut resp = HttpResponse::Accepted();
    resp.insert_header((header::LOCATION, format!("/v1/commands/{}", doc.id)))
        .insert_header((header::RETRY_AFTER, retry_after));
    if replayed {
        resp.insert_header(("Idempotent-Replayed", "true"));
    }
    Ok(resp.json(doc))
}

/// The caller's signing secret (created on first use).
#[utoipa::path(
    get, path = "/v1/signing-secret", tag = "signing",
    responses(
        (status = 200, description = "The current secret", body = SigningSecret),
        (status = 401, description = "No or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Token lacks the client role", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "The stored secret does not open (encryption key missing from the configuration); rotating replaces it", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable or saturated (retry after `Retry-After` seconds)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn get_signing_secret(
    principal: Principal,
    pool: Shared<WritePool>,
    sealer: Shared<Arc<SecretSealer>>,
) -> Result<HttpResponse, ApiError> {
    let secrets =
        crate::delivery::secrets::ensure_signing_secrets(&pool.0, &sealer, &principal.client_id)
            .await?;
    let secret = secrets
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("no signing secret after creation")))?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(SigningSecret { secret }))
}

/// Rotate the caller's signing secret.
///
/// A new secret is created and signs at once; the previous one keeps signing
/// alongside it (two `v1,` signatures per callback) until
/// `previous_expires_at`, so the receiver can switch without a gap. Only
/// those two ever sign: a secret rotated out earlier stops signing at once,
/// even within its grace (rotating twice revokes a leaked secret). Rotations
/// are rate limited per client (`limits.rotations_per_hour`,
/// `limits.rotation_burst`). Any request body is ignored.
#[utoipa::path(
    post, path = "/v1/signing-secret/rotate", tag = "signing",
    responses(
        (status = 200, description = "The new secret and when the previous one stops signing", body = RotatedSigningSecret,
         headers(("Cache-Control" = String, description = "no-store"))),
        (status = 401, description = "No or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Token lacks the client role", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rotated too often (`limits.rotations_per_hour`)", body = Problem, content_type = "application/problem+json",
         headers(("Retry-After" = u64))),
        (status = 503, description = "Database unavailable or saturated (retry after `Retry-After` seconds)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(
    name = "rotate_signing_secret",
    target = "hookrelay::command",
    skip_all,
    fields(client_id = %principal.client_id)
)]
pub async fn rotate_signing_secret(
    principal: Principal,
    req: HttpRequest,
    pool: Shared<WritePool>,
    settings: Shared<Arc<Settings>>,
    sealer: Shared<Arc<SecretSealer>>,
) -> Result<HttpResponse, ApiError> {
    if let Some(guard) =
        <Arc<crate::auth::limits::Guard> as crate::http::state::Component>::from_app(&req)
    {
        guard.admit_rotation(&principal.client_id)?;
    }
    let grace = std::time::Duration::from_secs(settings.delivery.secret_rotation_grace_s);
    let rotation = crate::delivery::secrets::rotate_signing_secret(
        &pool.0,
        &sealer,
        &principal.client_id,
        grace,
    )
    .await?;
    tracing::info!(
        target: "hookrelay::command",
        previous_expires_at = ?rotation.previous_expires_at,
        "signing secret rotated"
    );
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(RotatedSigningSecret {
            secret: rotation.secret,
            previous_expires_at: rotation.previous_expires_at,
        }))
}

// The read side owns `StatusDocument`; building one from a just-accepted
// command belongs to the write side, which is the one that imports both.
impl StatusDocument {
    /// The document of a command that was just accepted.
    pub fn accepted(c: &NewCommand, created_at: chrono::DateTime<chrono::Utc>) -> Self {
        StatusDocument {
            id: c.id,
            status: CommandStatus::Accepted,
            integration: c.integration.clone(),
            operation: c.operation.clone(),
            created_at,
            updated_at: created_at,
            result: None,
            callback: CallbackState {
                url: c.callback_url.as_str().to_owned(),
                status: DeliveryStatus::Pending,
                attempts: 0,
                webhook_id: None,
            },
        }
    }
}

/// Turns a request into a [`NewCommand`], naming the field of the first problem.
fn validate(
    settings: &Settings,
    principal: &Principal,
    request: CommandRequest,
    idempotency_key: Option<IdempotencyKey>,
) -> Result<NewCommand, ApiError> {
    let integration = settings
        .integrations
        .get(&request.integration)
        .ok_or_else(|| {
            ApiError::validation(
                "integration",
                format!("unknown integration `{}`", request.integration),
            )
        })?;
    let operation = integration
        .operations
        .get(&request.operation)
        .ok_or_else(|| {
            ApiError::validation(
                "operation",
                format!(
                    "integration `{}` has no operation `{}`",
                    request.integration, request.operation
                ),
            )
        })?;
    principal.require(crate::auth::authz::operation_roles(operation))?;
    let params_text = request
        .params
        .unwrap_or_else(|| JsonText::from_value(&Value::Object(serde_json::Map::new())));
    let params: serde_json::Map<String, Value> = serde_json::from_str(params_text.as_str())
        .map_err(|e| ApiError::validation("params", format!("must be a JSON object: {e}")))?;
    check_params_size(&params, &settings.commands)?;
    let path = operation
        .path
        .fill(&params)
        .map_err(|(field, message)| ApiError::validation(field, message))?;
    let callback = CallbackUrl::parse(
        &request.callback_url,
        settings.commands.max_callback_url_len,
        &settings.security.callback_policy,
    )
    .map_err(|m| ApiError::validation("callback_url", m))?;
    let params = Value::Object(params);
    reject_nul("params", &params)?;
    // The body is stored and sent as the exact text received; only the
    // idempotency hash looks inside it (key order must not matter there). A
    // body serde_json cannot hold as a value (a number beyond f64, such as
    // `1e400`) is hashed by its text.
    let (body_value, body_text) = match &request.body {
        None => (None, None),
        Some(b) => match serde_json::from_str::<Value>(b.as_str()) {
            Ok(v) => (Some(v), None),
            Err(_) => (None, Some(b.as_str())),
        },
    };
    let canonical = canonical_json(&serde_json::json!({
        "integration": request.integration,
        "operation": request.operation,
        "params": params,
        "body": body_value,
        "body_text": body_text,
        "callback_url": callback.as_str(),
    }));
    Ok(NewCommand {
        id: Uuid::now_v7(),
        client_id: principal.client_id.clone(),
        integration: request.integration,
        operation: request.operation,
        method: operation.method.as_str().to_owned(),
        path,
        params: params_text,
        body: request.body,
        callback_url: callback,
        idempotency_key: idempotency_key.map(|k| k.as_str().to_owned()),
        request_hash: Sha256::digest(canonical.as_bytes()).to_vec(),
    })
}

/// `params` within `commands.max_params` entries and
/// `commands.max_params_bytes` bytes of compact JSON (422 naming `params`).
fn check_params_size(
    params: &serde_json::Map<String, Value>,
    limits: &crate::config::CommandSettings,
) -> Result<(), ApiError> {
    if params.len() > limits.max_params {
        return Err(ApiError::validation(
            "params",
            format!("must have at most {} entries", limits.max_params),
        ));
    }
    let bytes = serde_json::to_vec(params)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if bytes > limits.max_params_bytes {
        return Err(ApiError::validation(
            "params",
            format!(
                "must be at most {} bytes as JSON, got {bytes}",
                limits.max_params_bytes
            ),
        ));
    }
    Ok(())
}

/// Params fill the request path, where U+0000 has no place; refuse it with
/// the field's path. (The body is kept as text, so `\u0000` in it is stored
/// and sent as sent.)
fn reject_nul(path: &str, value: &Value) -> Result<(), ApiError> {
    let bad = |p: &str| ApiError::validation(p, "must not contain the NUL character (\\u0000)");
    match value {
        Value::String(s) if s.contains('\0') => Err(bad(path)),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, v)| reject_nul(&format!("{path}[{i}]"), v)),
        Value::Object(map) => map.iter().try_for_each(|(k, v)| {
            let p = format!("{path}.{k}");
            if k.contains('\0') {
                return Err(bad(&p));
            }
            reject_nul(&p, v)
        }),
        _ => Ok(()),
    }
}

/// JSON with object keys sorted at every level, so equal requests hash equal
/// whatever their key order.
fn canonical_json(value: &Value) -> String {
    fn sorted(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                let mut out = serde_json::Map::new();
                for k in keys {
                    out.insert(k.clone(), sorted(&m[k]));
                }
                Value::Object(out)
            }
            Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    // Serialising a map whose insertion order is sorted yields sorted output
    // with or without serde_json's `preserve_order`.
    sorted(value).to_string()
}

/// Intake errors at the HTTP edge: shutting down is a 503; a database error
/// follows the database rule (503 when transient, else 500).
impl From<IntakeError> for ApiError {
    fn from(e: IntakeError) -> Self {
        match e {
            IntakeError::ShuttingDown => ApiError::Unavailable(e.to_string()),
            IntakeError::Database(e) => e.into(),
        }
    }
}

/// The signing-secret store's errors at the HTTP edge: a database error
/// follows the database rule (503 when transient, else 500); a sealing
/// failure is a 500.
impl From<SecretStoreError> for ApiError {
    fn from(e: SecretStoreError) -> Self {
        match e {
            SecretStoreError::Database(e) => e.into(),
            other => ApiError::Internal(anyhow::Error::new(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_json_ignores_key_order() {
        let a = json!({"b": 1, "a": {"y": [1, {"d": 1, "c": 2}], "x": null}});
        let b = json!({"a": {"x": null, "y": [1, {"c": 2, "d": 1}]}, "b": 1});
        assert_eq!(canonical_json(&a), canonical_json(&b));
        assert_ne!(canonical_json(&a), canonical_json(&json!({"b": 2})));
    }

    #[test]
    fn nul_is_refused_with_its_path() {
        let err = reject_nul("body", &json!({"a": [1, "x\u{0}y"]})).expect_err("nul");
        assert!(matches!(err, ApiError::Validation { field, .. } if field == "body.a[1]"));
        assert!(reject_nul("body", &json!({"a": "fine"})).is_ok());
    }

    #[test]
    fn json_errors_name_the_field() {
        let err = parse_json::<CommandRequest>(br#"{"integration": 5}"#).expect_err("type");
        assert!(
            matches!(err, ApiError::Validation { ref field, .. } if field == "integration"),
            "{err:?}"
        );
        let err = parse_json::<CommandRequest>(br#"{"integration": "a", "operation": "b"}"#)
            .expect_err("missing");
        assert!(
            matches!(err, ApiError::Validation { ref field, .. } if field == "callback_url"),
            "{err:?}"
        );
        let err = parse_json::<CommandRequest>(
            br#"{"integration": "a", "operation": "b", "operation": "c", "callback_url": "x"}"#,
        )
        .expect_err("duplicate");
        assert!(
            matches!(err, ApiError::Validation { ref field, .. } if field == "operation"),
            "{err:?}"
        );
        let err = parse_json::<crate::query::upstream::BatchRequest>(
            br#"{"queries": [{"integration": "a", "query": "b", "query": "c"}]}"#,
        )
        .expect_err("nested duplicate");
        assert!(
            matches!(err, ApiError::Validation { ref field, .. } if field == "queries[0].query"),
            "{err:?}"
        );
        let err = parse_json::<crate::query::upstream::BatchRequest>(
            br#"{"queries": [{"integration": "a", "query": "b", "bogus": 1}]}"#,
        )
        .expect_err("nested unknown");
        assert!(
            matches!(err, ApiError::Validation { ref field, .. } if field == "queries[0].bogus"),
            "{err:?}"
        );
        let err = parse_json::<crate::query::upstream::BatchRequest>(
            br#"{"queries": [{"integration": "a"}]}"#,
        )
        .expect_err("nested missing");
        assert!(
            matches!(err, ApiError::Validation { ref field, .. } if field == "queries[0].query"),
            "{err:?}"
        );
        let err = parse_json::<CommandRequest>(b"{not json").expect_err("syntax");
        assert!(matches!(err, ApiError::BadRequest { .. }), "{err:?}");
    }
}
