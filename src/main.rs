//! The `hookrelay` binary: `serve`, `migrate` and `token` (`docs/reference.md`,
//! "Command line"),
//! `reseal-secrets` for retiring a signing-secret encryption key, and
//! `reseal-jobs` for retiring a job MAC key.

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
        /// Lifetime in seconds (at most auth.max_token_lifetime_s).
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
    },
    /// Re-seal every stored signing secret with the first key of
    /// security.signing_key_encryption_keys, so older keys can be removed.
    /// Exits 1 if a stored secret opens with no configured key.
    ResealSecrets,
    /// Re-seal every live job's command or delivery with the first key of
    /// security.job_mac_keys, so older keys can be removed. Rows whose seal
    /// does not verify are left as they are; exits 1 if there are any.
    ResealJobs,
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
        // Settings::load read the keys; every failure left is a
        // configuration problem (no private key, --ttl over the maximum): 2.
        let minted = hookrelay::auth::JwtKeys::from_loaded(&settings.auth)
            .map_err(anyhow::Error::from)
            .and_then(|keys| keys.mint(sub, roles, *ttl));
        return match minted {
            Ok(t) => {
                println!("{t}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("cannot mint token: {e}");
                ExitCode::from(2)
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
                if settings.database.create_if_missing {
                    hookrelay::db::ensure_database(url).await?;
                }
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
                let sealer =
                    hookrelay::security::SecretSealer::from_ring(&settings.security.signing_keys)?;
                let key = sealer.key_ids().next().unwrap_or_default().to_owned();
                let report =
                    hookrelay::delivery::secrets::reseal_signing_secrets(&pool, &sealer).await?;
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
            Command::ResealJobs => {
                let url = settings.database.url.expose_secret();
                let pool =
                    hookrelay::db::connect(url, 1, std::time::Duration::from_secs(10)).await?;
                let sealer =
                    hookrelay::security::seal::JobSealer::from_ring(&settings.security.job_keys);
                let key = sealer.key_ids().next().unwrap_or_default().to_owned();
                let report = hookrelay::security::seal::reseal_jobs(&pool, &sealer).await?;
                println!("re-sealed {} job rows with key `{key}`", report.resealed);
                if report.unverified > 0 {
                    anyhow::bail!(
                        "{} job rows do not verify (logged above): they were altered or their key \
                         is gone; they stay quarantined, and were not re-sealed",
                        report.unverified
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
