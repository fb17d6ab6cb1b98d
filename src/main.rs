//! The `hookrelay` binary: `serve`, `migrate` and `token` (SPEC "Running"),
//! and `reseal-secrets` for retiring a signing-secret encryption key.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hookrelay::config::Settings;
use hookrelay::startup::{Application, ServeRole};
use secrecy::ExposeSecret;

/// Callback-first async command service.
#[derive(Parser)]
#[command(name = "hookrelay", version, about)]
struct Cli {
    /// Configuration file layered over config/default.toml (also HOOKRELAY_CONFIG).
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the API and the dispatcher (or one of them with --role).
    Serve {
        /// Which half to run.
        #[arg(long, value_enum, default_value = "all")]
        role: ServeRole,
    },
    /// Create the database if missing and apply pending migrations.
    Migrate,
    /// Print a JWT signed with the configured key (for development).
    Token {
        /// The client id (`sub`).
        #[arg(long)]
        sub: String,
        /// A role (client, admin, reader); repeat for several.
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
    },
    /// Re-seal every stored signing secret with the first key of
    /// security.signing_key_encryption_keys, so older keys can be removed.
    /// Exits 1 if a stored secret opens with no configured key.
    ResealSecrets,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if let Command::Token { sub, roles, ttl } = &cli.command {
        let keys = hookrelay::auth::JwtKeys::new(&settings.auth);
        return match keys.mint(sub, roles, *ttl) {
            Ok(t) => {
                println!("{t}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("cannot mint token: {e}");
                ExitCode::FAILURE
            }
        };
    }
    hookrelay::telemetry::init(&settings.telemetry);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve { role } => {
                let app = Application::build(settings, role).await?;
                if let Some(port) = app.port() {
                    tracing::info!(port, ?role, "hookrelay listening");
                }
                app.run_until_stopped().await
            }
            Command::Migrate => {
                let url = settings.database.url.expose_secret();
                hookrelay::db::ensure_database(url).await?;
                let pool =
                    hookrelay::db::connect(url, 1, std::time::Duration::from_secs(10)).await?;
                hookrelay::db::migrate(&pool, url).await?;
                tracing::info!("migrations applied");
                Ok(())
            }
            Command::ResealSecrets => {
                let url = settings.database.url.expose_secret();
                let pool =
                    hookrelay::db::connect(url, 1, std::time::Duration::from_secs(10)).await?;
                let sealer = hookrelay::security::SecretSealer::from_keys(
                    &settings.security.signing_key_encryption_keys,
                )?;
                let key = sealer.key_ids().next().unwrap_or_default().to_owned();
                let report = hookrelay::security::reseal_signing_secrets(&pool, &sealer).await?;
                println!(
                    "re-sealed {} signing secrets with key `{key}`",
                    report.resealed
                );
                if report.unopenable > 0 {
                    anyhow::bail!(
                        "{} stored signing secrets open with no configured key (logged above); \
                         keep the old keys configured until this is resolved",
                        report.unopenable
                    );
                }
                Ok(())
            }
            Command::Token { .. } => Ok(()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
