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
        crate::query::get_command,
        crate::query::list_commands,
        crate::query::list_attempts,
        crate::query::list_dead_letters,
        crate::query::events::stream_events,
        crate::query::events::stream_command_events,
        crate::query::upstream::get_query,
        crate::query::upstream::batch_queries,
        crate::command::replay::replay_one,
        crate::command::replay::replay_bulk,
        crate::admin::integrations,
        crate::health::healthz,
        crate::health::readyz,
        crate::metrics::metrics_page,
        openapi_json,
    ),
    modifiers(&BearerAuth),
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

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "OpenAPI 3 document", content_type = "application/json")))]
pub async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok().json(ApiDoc::openapi())
}
