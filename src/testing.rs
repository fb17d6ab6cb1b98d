//! Test support: the small surface that the integration tests (`tests/`)
//! and the benchmark (`benches/`) use besides the HTTP API, the CLI and
//! [`crate::startup::Application`].
//!
//! Tests drive hookrelay from outside wherever they can (HTTP requests
//! against an [`Application`](crate::startup::Application) built on a fresh
//! database); what they cannot reach that way — preparing a database,
//! re-sealing with a rotated key list, the outbox's lag, a worker that dies
//! holding a lease — goes through this module, so that a change of the
//! internals is adapted here once rather than in every test.
//!
//! Always compiled (integration tests and benches link the library as an
//! outside crate, and a cargo feature would need the crate as its own
//! dev-dependency); nothing in the service calls it. Not a stable API: it
//! follows the tests.

use std::time::Duration;

use secrecy::SecretString;
use sqlx::PgPool;

use crate::delivery::secrets::ResealReport;
use crate::security::seal::{JobSealer, ResealJobsReport};
use crate::security::{OpenError, SecretSealer};

/// Creates the database at `url` if it is missing and applies the
/// migrations, as `hookrelay migrate` does (with `database.create_if_missing`).
///
/// # Errors
/// The database cannot be reached, created or migrated.
pub async fn prepare_database(url: &str) -> anyhow::Result<()> {
    crate::db::ensure_database(url).await?;
    let pool = crate::db::connect(url, 2, Duration::from_secs(5)).await?;
    crate::db::migrate(&pool, url).await?;
    pool.close().await;
    Ok(())
}

/// A new Standard Webhooks signing secret (`whsec_` + base64 of 32 random
/// bytes), unrelated to any stored one.
pub fn new_signing_secret() -> String {
    crate::security::new_signing_secret()
}

/// Opens one stored signing secret (`signing_secrets.secret` of
/// `client_id`) with `keys` (`security.signing_key_encryption_keys`).
///
/// # Errors
/// Outer: a bad key list ([`crate::security::KeyConfigError`]). Inner: why
/// the value does not open ([`OpenError`]).
pub fn open_signing_secret(
    keys: &[SecretString],
    client_id: &str,
    sealed: &str,
) -> anyhow::Result<Result<String, OpenError>> {
    Ok(SecretSealer::from_keys(keys)?.open(client_id, sealed))
}

/// Re-seals every stored signing secret under the first of `keys`, as
/// `hookrelay reseal-secrets` does.
///
/// # Errors
/// A bad key list; the database failed.
pub async fn reseal_signing_secrets(
    pool: &PgPool,
    keys: &[SecretString],
) -> anyhow::Result<ResealReport> {
    let sealer = SecretSealer::from_keys(keys)?;
    Ok(crate::delivery::secrets::reseal_signing_secrets(pool, &sealer).await?)
}

/// Re-seals the stored commands and deliveries under the first of `keys`
/// (`security.job_mac_keys`), as `hookrelay reseal-jobs` does.
///
/// # Errors
/// A bad key list; the database failed.
pub async fn reseal_jobs(pool: &PgPool, keys: &[SecretString]) -> anyhow::Result<ResealJobsReport> {
    let sealer = JobSealer::from_keys(keys)?;
    Ok(crate::security::seal::reseal_jobs(pool, &sealer).await?)
}

/// The outbox's lag: how long the oldest job that is ready to run has been
/// waiting (zero when none is), as exported in `hookrelay_outbox_lag_seconds`.
///
/// # Errors
/// The database failed.
pub async fn outbox_lag(pool: &PgPool) -> sqlx::Result<Duration> {
    crate::outbox::oldest_ready_age(pool).await
}

/// What a worker does with the outbox, for tests that play a worker by hand
/// (one that dies holding a lease, a stale outcome, the stored form of a
/// claimed job). These are the outbox's own functions and types.
pub mod outbox {
    pub use crate::jobs::execute::{finish_execute, ExecuteJob};
    pub use crate::jobs::{claim, Job};
    pub use crate::outbox::{finish_batch, Claimed, Finish};

    use secrecy::SecretString;

    /// A claimed job as the worker holds it: lease, attempt count and the
    /// decoded [`Job`].
    pub type ClaimedJob = Claimed<Job>;

    /// Whether the seal of a claimed execute job's command verifies under
    /// `keys` (`security.job_mac_keys`), as the worker checks before it acts.
    ///
    /// # Errors
    /// A bad key list.
    pub fn execute_seal_verifies(
        keys: &[SecretString],
        job: &ExecuteJob,
    ) -> anyhow::Result<Result<(), crate::security::seal::SealError>> {
        let sealer = crate::security::seal::JobSealer::from_keys(keys)?;
        Ok(sealer.verify_execute(job.seal.as_deref(), &job.execute_seal()))
    }
}
