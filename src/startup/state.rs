//! [`AppState`]: everything the HTTP handlers and middleware share, built
//! once per process and registered once per listener (`web::Data<AppState>`).
//!
//! Handlers and middleware reach its parts through
//! [`crate::http::state::Shared`] and [`crate::http::state::component`]; the
//! [`Component`] implementations at the end of this file say which field
//! answers for which type.

use std::sync::Arc;

use actix_web::{web, HttpRequest};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::auth::authz::Authz;
use crate::auth::limits::Guard;
use crate::auth::JwtKeys;
use crate::command::admission::Admission;
use crate::command::Intake;
use crate::config::Settings;
use crate::db::{ReadPool, WritePool};
use crate::http::state::Component;
use crate::integration::resilience::Policies;
use crate::integration::Integrations;
use crate::query::event_log::EventFeed;
use crate::query::upstream::QueryCache;
use crate::query::QueryState;
use crate::security::SecretSealer;

/// The application state of one listener. Cheap to clone (`Arc`s, pools and
/// handles); every listener of a process shares the same components except
/// [`AppState::guard`], which is per listener.
#[derive(Clone)]
pub struct AppState {
    /// The settings the process started with.
    pub settings: Arc<Settings>,
    /// The primary pool (writes, and reads that must see them).
    pub write_pool: WritePool,
    /// The read pool (a replica, or the primary).
    pub read_pool: ReadPool,
    /// Token verification (`[auth]`).
    pub keys: Arc<JwtKeys>,
    /// The route × role table's configured role lists.
    pub authz: Arc<Authz>,
    /// This listener's abuse limits and the paths it serves; `None` lets
    /// everything pass (the limits middleware's rule).
    pub guard: Option<Arc<Guard>>,
    /// Seals and opens signing secrets at rest.
    pub sealer: Arc<SecretSealer>,
    /// Per-integration throttles, breakers and retry budget.
    pub policies: Arc<Policies>,
    /// The configured integrations (upstream clients, templates).
    pub integrations: Arc<Integrations>,
    /// The upstream query cache (moka, or Redis).
    pub query_cache: Arc<QueryCache>,
    /// The read side: status cache, long-poll waiters, latency hints.
    pub query_state: Arc<QueryState>,
    /// The group-intake writers; `None` in the worker role (its admin
    /// listener takes no commands).
    pub intake: Option<Intake>,
    /// Admission control of `POST /v1/commands` (`[admission]`); `None` in
    /// the worker role.
    pub admission: Option<Arc<Admission>>,
    /// The event-log tail; `None` in the worker role (no streams there).
    pub events: Option<EventFeed>,
    /// Renders `GET /metrics`.
    pub metrics: PrometheusHandle,
}

impl AppState {
    /// The registered state of the app serving `req`, if any.
    fn of(req: &HttpRequest) -> Option<&AppState> {
        req.app_data::<web::Data<AppState>>().map(|d| d.get_ref())
    }
}

/// `impl Component for $ty`, answered by `AppState.$field` (a plain value,
/// or an `Option` with `?`).
macro_rules! component {
    ($ty:ty, $field:ident) => {
        impl Component for $ty {
            fn from_app(req: &HttpRequest) -> Option<Self> {
                AppState::of(req).map(|s| s.$field.clone())
            }
        }
    };
    ($ty:ty, $field:ident ?) => {
        impl Component for $ty {
            fn from_app(req: &HttpRequest) -> Option<Self> {
                AppState::of(req).and_then(|s| s.$field.clone())
            }
        }
    };
}

component!(Arc<Settings>, settings);
component!(WritePool, write_pool);
component!(ReadPool, read_pool);
component!(Arc<JwtKeys>, keys);
component!(Arc<Authz>, authz);
component!(Arc<Guard>, guard?);
component!(Arc<SecretSealer>, sealer);
component!(Arc<Policies>, policies);
component!(Arc<Integrations>, integrations);
component!(Arc<QueryCache>, query_cache);
component!(Arc<QueryState>, query_state);
component!(Intake, intake?);
component!(Arc<Admission>, admission?);
component!(EventFeed, events?);
component!(PrometheusHandle, metrics);
