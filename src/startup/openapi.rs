//! The OpenAPI 3 document, generated from the handlers' annotations (utoipa).

use actix_web::HttpResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// The API description served at `/openapi.json`.
#[derive(OpenApi)]
#[openapi(
    info(title = "hookrelay", description = "Callback-first async command service. Errors are application/problem+json (RFC 9457)."),
    paths(
        crate::command::post_command,
        crate::command::get_signing_secret,
        crate::command::rotate_signing_secret,
        crate::query::status::get_command,
        crate::query::commands::list_commands,
        crate::query::attempts::list_attempts,
        crate::query::dead_letters::list_dead_letters,
        crate::query::events::stream_events,
        crate::query::events::stream_command_events,
        crate::query::upstream::get_query,
        crate::query::upstream::batch_queries,
        crate::command::replay::replay_one,
        crate::command::replay::replay_bulk,
        crate::query::integrations::integrations,
        crate::http::health::healthz,
        crate::http::health::readyz,
        crate::telemetry::metrics::metrics_page,
        openapi_json,
    ),
    modifiers(&BearerAuth, &LimitResponses),
    tags(
        (name = "commands", description = "Send commands and read their status"),
        (name = "events", description = "Push stream of command and callback status changes (Server-Sent Events)"),
        (name = "signing", description = "Webhook signing secrets"),
        (name = "queries", description = "Read-only upstream calls through the cache"),
        (name = "dead-letters", description = "Inspect and replay dead-lettered deliveries (admin)"),
        (name = "operations", description = "Probes, metrics and API description"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// The answers of the abuse limits (`src/auth/limits.rs`), which any route may
/// give besides its own, added to every operation so the document describes
/// what a client can actually receive:
///
/// - `429` rate limited (`[limits]`), with `Retry-After` in seconds, on every
///   route but the probes and `/metrics`;
/// - `431` request headers over `server.max_header_bytes`, on every route;
/// - `413` body over `server.body_limit_bytes`, on every route with a body.
///
/// A route that documents one of these statuses itself keeps its own answer
/// (a 429 of its own gets the rate limit added to its description).
///
/// Two more answers that depend on the route, not on the handler:
///
/// - `404` on the admin paths ([`crate::auth::limits::is_admin_path`]): with
///   `server.admin_bind` set they are served only on the admin listener, and
///   the main listener answers 404;
/// - every `503` (database unavailable, breaker open, too many streams) carries
///   `Retry-After` in seconds, so each documented 503 declares that header.
struct LimitResponses;

impl LimitResponses {
    /// The `Retry-After` response header (RFC 9110 §10.2.3), whole seconds.
    fn retry_after_header() -> utoipa::openapi::header::Header {
        utoipa::openapi::header::HeaderBuilder::new()
            .schema(
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::Integer),
            )
            .description(Some("Seconds to wait before trying again"))
            .build()
    }

    fn problem(description: &str, retry_after: bool) -> utoipa::openapi::Response {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let mut response = ResponseBuilder::new().description(description).content(
            crate::http::error::PROBLEM_JSON,
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Problem")))
                .build(),
        );
        if retry_after {
            response = response.header("Retry-After", Self::retry_after_header());
        }
        response.build()
    }
}

impl Modify for LimitResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{Ref, RefOr};
        let answers = [
            (
                "429",
                "RateLimited",
                "Over a rate limit (`[limits]`); retry after `Retry-After` seconds",
                true,
            ),
            (
                "431",
                "HeadersTooLarge",
                "Request headers over `server.max_header_bytes`",
                false,
            ),
            (
                "413",
                "PayloadTooLarge",
                "Request body over `server.body_limit_bytes`",
                false,
            ),
            (
                "404",
                "AdminListenerOnly",
                "Not served on this listener: with `server.admin_bind` set, this route is served only on the admin listener",
                false,
            ),
        ];
        let components = openapi.components.get_or_insert_with(Default::default);
        for (_, name, description, retry_after) in answers {
            components.responses.insert(
                name.to_owned(),
                RefOr::T(Self::problem(description, retry_after)),
            );
        }
        for (path, item) in openapi.paths.paths.iter_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for op in operations.into_iter().flatten() {
                for (status, name, description, _) in answers {
                    let applies = match status {
                        "429" => !crate::auth::limits::is_exempt(path),
                        "413" => op.request_body.is_some(),
                        "404" => crate::auth::limits::is_admin_path(path),
                        _ => true,
                    };
                    if !applies {
                        continue;
                    }
                    match op.responses.responses.get_mut(status) {
                        // The upstream query's own 429 (throttled) is a
                        // different cause with the same answer: name both.
                        Some(RefOr::T(own)) if matches!(status, "429" | "404") => {
                            own.description = format!("{}; or: {description}", own.description);
                        }
                        Some(_) => {}
                        None => {
                            op.responses.responses.insert(
                                status.to_owned(),
                                RefOr::Ref(Ref::from_response_name(name)),
                            );
                        }
                    }
                }
                if let Some(RefOr::T(unavailable)) = op.responses.responses.get_mut("503") {
                    unavailable
                        .headers
                        .entry("Retry-After".to_owned())
                        .or_insert_with(Self::retry_after_header);
                }
            }
        }
    }
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "OpenAPI 3 document", content_type = "application/json")))]
pub async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok().json(ApiDoc::openapi())
}
