//! Building and running the application: pools, the HTTP server (API role)
//! and the dispatcher (worker role), with graceful shutdown.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::{web, App, HttpServer};
use anyhow::Context;
use metrics_exporter_prometheus::PrometheusHandle;
use secrecy::ExposeSecret;
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing_actix_web::TracingLogger;

use crate::auth::JwtKeys;
use crate::command::Intake;
use crate::config::{Settings, DEV_JWT_SECRET};
use crate::delivery::Sender;
use crate::dispatcher::{DispatchContext, Dispatcher, HostLimits};
use crate::error::{not_found, path_error_handler, query_error_handler};
use crate::integration::Integrations;
use crate::maintenance::Scheduler;
use crate::outbox::Outcomes;
use crate::resilience::{Policies, RetryBudget};
use crate::security::SecretSealer;
use crate::telemetry::RootSpan;

/// The primary (write) pool, as app data.
#[derive(Clone)]
pub struct WritePool(pub PgPool);

/// The read pool (replica, or the primary), as app data.
#[derive(Clone)]
pub struct ReadPool(pub PgPool);

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
    server: Option<Server>,
    dispatcher: Option<Dispatcher>,
    scheduler: Option<Scheduler>,
    intake_writers: Vec<JoinHandle<()>>,
    outcome_writers: Vec<JoinHandle<()>>,
    cancel: CancellationToken,
    pool: PgPool,
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
        if settings.auth.jwt_secret.expose_secret() == DEV_JWT_SECRET {
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
        // Before anything records: the recorder is process-global.
        let metrics = crate::metrics::install();
        let sealer = Arc::new(
            SecretSealer::from_keys(&settings.security.signing_key_encryption_keys)
                .context("security.signing_key_encryption_keys")?,
        );
        let settings = Arc::new(settings);
        let (primary, read) = crate::db::pools(&settings.database, true).await?;
        let integrations = Arc::new(Integrations::from_settings(&settings.integrations)?);
        let policies = Arc::new(Policies::from_settings(&settings.integrations));
        let cancel = CancellationToken::new();

        let mut outcome_writers = Vec::new();
        let dispatcher = if role.worker() {
            // Two writers: one statement in flight while the next batch gathers.
            let (outcomes, writers) =
                Outcomes::start(primary.clone(), 2, settings.dispatcher.claim_batch);
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
                recording: std::sync::Mutex::new(Default::default()),
                hosts: HostLimits::new(settings.delivery.max_in_flight_per_host),
                policies: policies.clone(),
                retry_budget: RetryBudget::new(
                    settings.resilience.retry_budget_ratio,
                    settings.resilience.retry_budget_min_per_s,
                ),
                wake: Arc::new(tokio::sync::Notify::new()),
                sealer: sealer.clone(),
            }))
        } else {
            None
        };

        let scheduler = if role.worker() {
            Some(Scheduler::new(
                primary.clone(),
                settings.maintenance.clone(),
            )?)
        } else {
            None
        };

        let (port, server, intake_writers) = if role.api() {
            let listener = TcpListener::bind(&settings.server.bind).map_err(|e| {
                anyhow::anyhow!("cannot bind server.bind = {}: {e}", settings.server.bind)
            })?;
            let port = listener.local_addr()?.port();
            let (intake, writers) = Intake::start(
                primary.clone(),
                settings.commands.intake_writers,
                settings.commands.intake_batch_max,
                Duration::from_millis(settings.commands.intake_batch_window_ms),
            );
            let server = http_server(
                listener,
                settings.clone(),
                HttpState {
                    primary: primary.clone(),
                    read,
                    intake,
                    sealer,
                    policies: policies.clone(),
                    integrations: integrations.clone(),
                    metrics,
                },
            )?;
            (Some(port), Some(server), writers)
        } else {
            (None, None, Vec::new())
        };

        Ok(Application {
            port,
            server,
            dispatcher,
            scheduler,
            intake_writers,
            outcome_writers,
            cancel,
            pool: primary,
        })
    }

    /// The bound HTTP port (API role), useful with `server.bind = "…:0"`.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// The primary pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
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

        if let Some(server) = self.server {
            let handle = server.handle();
            let stopper = cancel.clone();
            tokio::spawn(async move {
                stopper.cancelled().await;
                handle.stop(true).await;
            });
            let served = server.await;
            cancel.cancel();
            served?;
        } else {
            cancel.cancelled().await;
        }
        for writer in self.intake_writers {
            let _ = writer.await;
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

/// What the HTTP handlers share, besides the settings.
struct HttpState {
    primary: PgPool,
    read: PgPool,
    intake: Intake,
    sealer: Arc<SecretSealer>,
    policies: Arc<Policies>,
    integrations: Arc<Integrations>,
    metrics: PrometheusHandle,
}

fn http_server(
    listener: TcpListener,
    settings: Arc<Settings>,
    state: HttpState,
) -> anyhow::Result<Server> {
    let HttpState {
        primary,
        read,
        intake,
        sealer,
        policies,
        integrations,
        metrics,
    } = state;
    let integrations = web::Data::new(integrations);
    let query_cache = web::Data::new(crate::query::upstream::QueryCache::new(10_000));
    let policies = web::Data::new(policies);
    let keys = web::Data::new(JwtKeys::new(&settings.auth));
    let settings_data = web::Data::new(settings.clone());
    let write_pool = web::Data::new(WritePool(primary));
    let read_pool = web::Data::new(ReadPool(read));
    let intake = web::Data::new(intake);
    let sealer = web::Data::from(sealer);
    let metrics = web::Data::new(metrics);
    let mut server = HttpServer::new(move || {
        App::new()
            .wrap(TracingLogger::<RootSpan>::new())
            .app_data(keys.clone())
            .app_data(settings_data.clone())
            .app_data(write_pool.clone())
            .app_data(read_pool.clone())
            .app_data(intake.clone())
            .app_data(sealer.clone())
            .app_data(policies.clone())
            .app_data(integrations.clone())
            .app_data(query_cache.clone())
            .app_data(metrics.clone())
            .app_data(web::QueryConfig::default().error_handler(query_error_handler))
            .app_data(web::PathConfig::default().error_handler(path_error_handler))
            .configure(crate::command::routes)
            .configure(crate::query::routes)
            .configure(crate::health::routes)
            .configure(crate::admin::routes)
            .route("/openapi.json", web::get().to(crate::openapi::openapi_json))
            .route("/metrics", web::get().to(crate::metrics::metrics_page))
            .default_service(web::to(not_found))
    })
    .listen(listener)?
    .disable_signals()
    .shutdown_timeout(settings.server.shutdown_timeout_s);
    if settings.server.workers > 0 {
        server = server.workers(settings.server.workers);
    }
    Ok(server.run())
}
