//! Admin diagnostics: the resilience state of every integration.
//!
//! `GET /v1/admin/integrations` (role `admin`) shows, for this process, each
//! integration's circuit-breaker state, throttle state, recent failure rate and
//! p50/p99 upstream latency. Policies are per process (see
//! [`crate::integration::resilience`]); with several worker processes, ask each, or use the
//! Prometheus series, which aggregate across processes.

use std::sync::Arc;

use actix_web::{web, HttpResponse};
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::Principal;
use crate::http::error::{ApiError, Problem};
use crate::http::state::Shared;
use crate::integration::resilience::{Policies, PolicySnapshot};

/// One integration's diagnostics.
#[derive(Debug, Serialize, ToSchema)]
pub struct IntegrationHealth {
    /// The `[integrations.NAME]` key.
    pub name: String,
    /// Breaker, throttle and latency state.
    #[serde(flatten)]
    pub policy: PolicySnapshot,
}

/// Answer of `GET /v1/admin/integrations`.
#[derive(Debug, Serialize, ToSchema)]
pub struct IntegrationsHealth {
    /// Every configured integration, by name.
    pub data: Vec<IntegrationHealth>,
}

/// Routes of the admin diagnostics.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/admin/integrations", web::get().to(integrations));
}

/// Resilience state of every integration (this process's view).
#[utoipa::path(
    get, path = "/v1/admin/integrations", tag = "operations",
    responses(
        (status = 200, description = "Breaker, throttle, failure rate and latency per integration", body = IntegrationsHealth),
        (status = 401, description = "No or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn integrations(
    // Role checked by the authz layer; taking it keeps the route fail-closed.
    _principal: Principal,
    policies: Shared<Arc<Policies>>,
) -> Result<HttpResponse, ApiError> {
    let data = policies
        .snapshots()
        .into_iter()
        .map(|(name, policy)| IntegrationHealth { name, policy })
        .collect();
    Ok(HttpResponse::Ok().json(IntegrationsHealth { data }))
}
