//! Building and running the application: pools, the HTTP server (API role)
//! and the dispatcher (worker role), with graceful shutdown.

pub mod openapi;
pub mod state;

pub use state::AppState;

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::http::KeepAlive;
use actix_web::{web, App, HttpServer};
use anyhow::Context;
use secrecy::ExposeSecret;
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing_actix_web::TracingLogger;

use crate::auth::limits::{Guard, Listener};
use crate::auth::JwtKeys;
use crate::command::Intake;
use crate::config::{Settings, DEV_JWT_SECRET};
use crate::delivery::host_limits::HostLimits;
use crate::delivery::Sender;
use crate::http::error::{not_found, path_error_handler, query_error_handler};
use crate::integration::resilience::{Policies, RetryBudget};
use crate::integration::Integrations;
use crate::jobs::{DispatchContext, Dispatcher};
use crate::maintenance::Scheduler;
use crate::outbox::{Outcomes, Signals};
use crate::query::cache::RedisCache;
use crate::query::event_log::EventFeed;
use crate::query::QueryState;
use crate::security::redact::Redactor;
use crate::security::seal::JobSealer;
use crate::security::SecretSealer;
use crate::telemetry::RootSpan;

use crate::db::{ReadPool, WritePool};

/// Which halves of the service this process runs (`serve --role`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ServeRole {
    /// HTTP API and dispatcher.
    All,
    /// HTTP API only.
    Api,
    /// Dispatcher only.
    Worker,
}

impl ServeRole {
    fn api(self) -> bool {
        matches!(self, ServeRole::All | ServeRole::Api)
    }
    fn worker(self) -> bool {
        matches!(self, ServeRole::All | ServeRole::Worker)
    }
}

/// A built, not yet running application.
pub struct Application {
    port: Option<u16>,
    admin_port: Option<u16>,
    servers: Vec<Server>,
    dispatcher: Option<Dispatcher>,
    scheduler: Option<Scheduler>,
    intake_writers: Vec<JoinHandle<()>>,
    event_tailer: Option<JoinHandle<()>>,
    outcome_writers: Vec<JoinHandle<()>>,
    cancel: CancellationToken,
    pool: PgPool,
    query_state: Option<Arc<QueryState>>,
}

impl Application {
    /// Connects to Postgres (creating and migrating the database when
    /// configured), binds the listener (API role) and prepares the dispatcher
    /// (worker role). Must be called inside a Tokio runtime.
    ///
    /// # Errors
    /// Database unreachable or setup failed ([`crate::db::DbError`]), the
    /// address cannot be bound, or an HTTP client cannot be built.
    pub async fn build(settings: Settings, role: ServeRole) -> anyhow::Result<Application> {
        let settings = settings.parsed()?;
        if settings.auth.algorithm == "HS256"
            && settings.auth.jwt_secret.expose_secret() == DEV_JWT_SECRET
        {
            tracing::warn!(
                "auth.jwt_secret is the development default; set your own before production use"
            );
        }
        if settings.security.uses_dev_encryption_key() {
            tracing::warn!(
                "security.signing_key_encryption_keys contains the public development key; \
                 signing secrets sealed with it are not protected at rest. Set your own before production use"
            );
        }
        if settings.security.uses_dev_job_mac_key() {
            tracing::warn!(
                "security.job_mac_keys contains the public development key; \
                 job seals made with it do not stop someone who can write to the database. \
                 Set your own before production use"
            );
        }
        if role.worker() {
            for warning in settings.shutdown_warnings() {
                tracing::warn!("{warning}");
            }
        }
        // Before anything records: the recorder is process-global.
        let metrics = crate::telemetry::metrics::install();
        let sealer = Arc::new(
            SecretSealer::from_ring(&settings.security.signing_keys)
                .context("security.signing_key_encryption_keys")?,
        );
        let job_sealer = Arc::new(JobSealer::from_ring(&settings.security.job_keys));
        let redactor = Arc::new(Redactor::from_settings(&settings));
        let settings = Arc::new(settings);
        let (primary, read) = crate::db::pools(&settings.database, true).await?;
        let integrations = Arc::new(Integrations::from_settings(&settings.integrations)?);
        let policies = Arc::new(Policies::from_settings(&settings.integrations));
        let cancel = CancellationToken::new();
        // Wake-ups after commits (no NOTIFY inside the writes), shared by
        // the intake, the outcome writers, the runner and the event tailer.
        let (signals, _announcer) = Signals::start(primary.clone(), cancel.clone());

        let mut outcome_writers = Vec::new();
        let dispatcher = if role.worker() {
            // Two writers: one statement in flight while the next batch gathers.
            let (outcomes, writers) = Outcomes::start(
                primary.clone(),
                2,
                settings.dispatcher.claim_batch,
                signals.clone(),
            );
            outcome_writers = writers;
            Some(Dispatcher::new(DispatchContext {
                pool: primary.clone(),
                settings: settings.clone(),
                integrations: integrations.clone(),
                sender: Sender::new(
                    &settings.delivery,
                    crate::security::CallbackPolicy::from_settings(&settings.security),
                )?,
                outcomes,
                hosts: HostLimits::new(settings.delivery.max_in_flight_per_host),
                policies: policies.clone(),
                retry_budget: RetryBudget::new(
                    settings.resilience.retry_budget_ratio,
                    settings.resilience.retry_budget_min_per_s,
                ),
                signals: signals.clone(),
                sealer: sealer.clone(),
                job_sealer: job_sealer.clone(),
                redactor,
            }))
        } else {
            None
        };

        let scheduler = if role.worker() {
            Some(Scheduler::new(
                primary.clone(),
                settings.maintenance.clone(),
                settings.retention.clone(),
            )?)
        } else {
            None
        };

        // Every role builds the read-side state: the admin listener of a
        // worker serves read handlers too (dead letters).
        let redis = RedisCache::from_settings(&settings.cache)?;
        let query_state = Arc::new(QueryState::new(
            &settings,
            redis.clone(),
            policies.clone(),
            primary.clone(),
            read.clone(),
        ));
        query_state.start_long_poll(&cancel);
        let (intake, events, intake_writers, event_tailer) = if role.api() {
            let (intake, writers) = Intake::start(
                primary.clone(),
                job_sealer,
                signals.clone(),
                settings.commands.intake_writers,
                settings.commands.intake_batch_max,
                Duration::from_millis(settings.commands.intake_batch_window_ms),
            );
            let (events, tailer) = EventFeed::start(
                primary.clone(),
                read.clone(),
                &settings.events,
                cancel.clone(),
                &signals,
            );
            // Every state change in the event log invalidates the cached
            // status document (in Redis: for every instance).
            tokio::spawn(
                query_state
                    .clone()
                    .invalidate_from_events(events.subscribe()),
            );
            (Some(intake), Some(events), writers, Some(tailer))
        } else {
            (None, None, Vec::new(), None)
        };
        let admission = role.api().then(|| {
            crate::command::admission::Admission::start(
                primary.clone(),
                &settings.admission,
                cancel.clone(),
            )
        });
        let listeners = JwtKeys::from_loaded(&settings.auth)
            .map_err(anyhow::Error::from)
            .and_then(|keys| {
                let state = AppState {
                    settings: settings.clone(),
                    write_pool: WritePool(primary.clone()),
                    read_pool: ReadPool(read),
                    keys: Arc::new(keys),
                    authz: Arc::new(crate::auth::authz::Authz::from_settings(&settings)),
                    guard: None,
                    sealer,
                    policies: policies.clone(),
                    integrations: integrations.clone(),
                    query_cache: Arc::new(crate::query::upstream::QueryCache::new(
                        settings.query.upstream_cache_capacity,
                        redis,
                    )),
                    query_state: query_state.clone(),
                    intake,
                    admission,
                    events,
                    metrics,
                };
                listen(&settings, role, state)
            });
        // A failure here must also stop the event tailer started above.
        let (port, admin_port, servers) = listeners.inspect_err(|_| cancel.cancel())?;

        Ok(Application {
            port,
            admin_port,
            servers,
            dispatcher,
            scheduler,
            intake_writers,
            event_tailer,
            outcome_writers,
            cancel,
            pool: primary,
            query_state: Some(query_state),
        })
    }

    /// The bound HTTP port (API role), useful with `server.bind = "…:0"`.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// The bound admin port (`server.admin_bind`, any role), useful with
    /// `server.admin_bind = "…:0"`; `None` when the admin listener is off.
    pub fn admin_port(&self) -> Option<u16> {
        self.admin_port
    }

    /// The primary pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The read side's state (API role): its status-document cache exposes
    /// [`crate::query::cache::StatusCache::invalidate`] for command-state changes.
    pub fn query_state(&self) -> Option<Arc<QueryState>> {
        self.query_state.clone()
    }

    /// Cancelling this token shuts the application down gracefully, as SIGTERM does.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Runs until SIGTERM/SIGINT (or the shutdown token): then the HTTP server
    /// stops accepting and finishes in-flight requests, the intake writers
    /// commit what they hold, and the dispatcher drains or releases its jobs.
    ///
    /// # Errors
    /// If the server or dispatcher fails.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let cancel = self.cancel.clone();
        tokio::spawn(stop_on_signal(cancel.clone()));

        // A dispatcher that fails must not leave an API accepting work that
        // nothing executes: its failure stops the whole process.
        let dispatcher = self.dispatcher.map(|d| {
            let cancel = cancel.clone();
            tokio::spawn(async move {
                let result = d.run(cancel.clone()).await;
                if let Err(e) = &result {
                    tracing::error!(error = %e, "dispatcher failed; shutting down");
                    cancel.cancel();
                }
                result
            })
        });

        let scheduler = self.scheduler.map(|s| tokio::spawn(s.run(cancel.clone())));

        if self.servers.is_empty() {
            cancel.cancelled().await;
        } else {
            // Either listener ending (or failing) stops the whole process.
            let served = futures_util::future::join_all(self.servers.into_iter().map(|server| {
                let handle = server.handle();
                let stopper = cancel.clone();
                tokio::spawn(async move {
                    stopper.cancelled().await;
                    handle.stop(true).await;
                });
                let cancel = cancel.clone();
                async move {
                    let result = server.await;
                    cancel.cancel();
                    result
                }
            }))
            .await;
            for result in served {
                result?;
            }
        }
        for writer in self.intake_writers {
            let _ = writer.await;
        }
        if let Some(tailer) = self.event_tailer {
            let _ = tailer.await;
        }
        if let Some(s) = scheduler {
            s.await?;
        }
        if let Some(d) = dispatcher {
            d.await??;
        }
        // Outcomes queued by jobs that finished during the drain are written
        // before the process exits (the writers end once the queue is empty).
        for writer in self.outcome_writers {
            let _ = writer.await;
        }
        tracing::info!("hookrelay stopped");
        Ok(())
    }
}

async fn stop_on_signal(cancel: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received; shutting down"),
        () = term => tracing::info!("SIGTERM received; shutting down"),
        () = cancel.cancelled() => return,
    }
    cancel.cancel();
}

/// Binds `server.bind` (API role) and `server.admin_bind` (when set, any
/// role) and builds their servers: `(port, admin_port, servers)`.
fn listen(
    settings: &Arc<Settings>,
    role: ServeRole,
    state: AppState,
) -> anyhow::Result<(Option<u16>, Option<u16>, Vec<Server>)> {
    let mut servers = Vec::new();
    let (mut port, mut admin_port) = (None, None);
    let admin_split = !settings.server.admin_bind.is_empty();
    if role.api() {
        let listener = TcpListener::bind(&settings.server.bind).map_err(|e| {
            anyhow::anyhow!("cannot bind server.bind = {}: {e}", settings.server.bind)
        })?;
        port = Some(listener.local_addr()?.port());
        let kind = if admin_split {
            Listener::Public
        } else {
            Listener::Combined
        };
        servers.push(http_server(listener, settings, state.clone(), kind)?);
    }
    if admin_split {
        let listener = TcpListener::bind(&settings.server.admin_bind).map_err(|e| {
            anyhow::anyhow!(
                "cannot bind server.admin_bind = {}: {e}",
                settings.server.admin_bind
            )
        })?;
        admin_port = Some(listener.local_addr()?.port());
        servers.push(http_server(listener, settings, state, Listener::Admin)?);
    }
    Ok((port, admin_port, servers))
}

/// One HTTP server on `listener`. Every listener registers every route; the
/// [`crate::auth::limits::guard`] middleware decides which paths `kind` serves
/// (404 for the others), and applies the header-size and rate limits.
fn http_server(
    listener: TcpListener,
    settings: &Settings,
    mut state: AppState,
    kind: Listener,
) -> anyhow::Result<Server> {
    state.guard = Some(Arc::new(Guard::new(
        kind,
        &settings.server,
        &settings.limits,
    )));
    // One registration: every handler and middleware finds its part in it.
    let state = web::Data::new(state);
    let mut server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(web::QueryConfig::default().error_handler(query_error_handler))
            .app_data(web::PathConfig::default().error_handler(path_error_handler))
            // Innermost first: limits (rate, header size, which listener
            // serves the path) run before the route table (authz) is
            // enforced, all inside the request's root span.
            .wrap(actix_web::middleware::from_fn(crate::auth::authz::layer))
            .wrap(actix_web::middleware::from_fn(crate::auth::limits::guard))
            .wrap(TracingLogger::<RootSpan>::new())
            .configure(crate::command::routes)
            .configure(crate::query::routes)
            .configure(crate::http::health::routes)
            .configure(crate::query::integrations::routes)
            .route(
                "/openapi.json",
                web::get().to(crate::startup::openapi::openapi_json),
            )
            .route(
                "/metrics",
                web::get().to(crate::telemetry::metrics::metrics_page),
            )
            .default_service(web::to(not_found))
    })
    .listen(listener)?
    // A client's FIN ends the connection (as in hyper and nginx): otherwise
    // actix keeps a half-closed connection until its response is written,
    // and an endless response (an SSE stream, a long poll) would hold its
    // slot until the next write fails.
    .h1_allow_half_closed(false)
    .disable_signals()
    .shutdown_timeout(settings.server.shutdown_timeout_s)
    .client_request_timeout(Duration::from_millis(
        settings.server.client_request_timeout_ms,
    ))
    .client_disconnect_timeout(Duration::from_millis(
        settings.server.client_disconnect_timeout_ms,
    ))
    .keep_alive(if settings.server.keep_alive_s == 0 {
        KeepAlive::Disabled
    } else {
        KeepAlive::Timeout(Duration::from_secs(settings.server.keep_alive_s))
    })
    .max_connections(settings.server.max_connections);
    if settings.server.workers > 0 {
        server = server.workers(settings.server.workers);
    } else if kind == Listener::Admin {
        // Scrapes and admin calls are rare: do not start one thread per core.
        server = server.workers(1);
    }
    Ok(server.run())
}
