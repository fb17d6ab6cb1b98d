//! The signing-secret store: each client's Standard Webhooks signing
//! secrets in `signing_secrets`, sealed at rest with
//! [`crate::security::SecretSealer`]: created on first use
//! ([`ensure_signing_secrets`]), rotated with a grace period
//! ([`rotate_signing_secret`]) and re-sealed under a new encryption key
//! ([`reseal_signing_secrets`]). At most [`MAX_SIGNING_SECRETS`] sign one
//! callback.

use std::time::Duration;

use crate::security::{new_signing_secret, SealError, SecretSealer};

/// Advisory-lock class (first key of `pg_advisory_xact_lock(int, int)`) that
/// serialises writes to one client's signing secrets; the second key is
/// `hashtext(client_id)`. The two-key lock space does not overlap the one-key
/// space that sqlx's migration lock uses. The value spells `hrss`.
const SECRETS_LOCK_CLASS: i32 = 0x6872_7373;

/// Reading, creating or rotating stored signing secrets failed.
#[derive(Debug, thiserror::Error)]
pub enum SecretStoreError {
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// A new secret could not be sealed.
    #[error(transparent)]
    Seal(#[from] SealError),
}

/// Takes the per-client lock that serialises creating and rotating its
/// secrets, so concurrent writers never race on `signing_secrets_current_idx`.
/// Held until `tx` ends.
async fn lock_client_secrets(
    tx: &mut sqlx::PgConnection,
    client_id: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
        .bind(SECRETS_LOCK_CLASS)
        .bind(client_id)
        .execute(tx)
        .await?;
    Ok(())
}

/// Most signing secrets that sign one callback: the current one and, during
/// its rotation grace, the one before it ([`rotate_signing_secret`]).
pub const MAX_SIGNING_SECRETS: usize = 2;

/// The client's active sealed secrets, newest first: at most
/// [`MAX_SIGNING_SECRETS`], even if older rows are still in the table (rows
/// written before rotation retired them at once), so the
/// `webhook-signature` header stays small.
async fn active_sealed(pool: &sqlx::PgPool, client_id: &str) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar::<_, String>(
        "SELECT secret FROM signing_secrets
          WHERE client_id = $1 AND (expires_at IS NULL OR expires_at > now())
          ORDER BY created_at DESC
          LIMIT $2",
    )
    .bind(client_id)
    .bind(MAX_SIGNING_SECRETS as i64)
    .fetch_all(pool)
    .await
}

/// The client's active signing secrets, opened, newest first, creating the
/// first one if the client has none ("created on first use"). Concurrent
/// first uses converge on one secret (per-client lock and the partial unique
/// index on the current secret). Values that do not open are logged and left
/// out ([`SecretSealer::open_all`]), so the result can be empty.
///
/// # Errors
/// Database errors; sealing a new secret failed.
pub async fn ensure_signing_secrets(
    pool: &sqlx::PgPool,
    sealer: &SecretSealer,
    client_id: &str,
) -> Result<Vec<String>, SecretStoreError> {
    let mut sealed = active_sealed(pool, client_id).await?;
    if sealed.is_empty() {
        let new = sealer.seal(client_id, &new_signing_secret())?;
        let mut tx = pool.begin().await?;
        lock_client_secrets(&mut tx, client_id).await?;
        // clock_timestamp(), not now(): taken after the lock, so created_at
        // follows the order in which writers got it ("newest first").
        sqlx::query(
            "INSERT INTO signing_secrets (id, client_id, secret, created_at)
             VALUES ($1, $2, $3, clock_timestamp())
             ON CONFLICT (client_id) WHERE expires_at IS NULL DO NOTHING",
        )
        .bind(uuid::Uuid::now_v7())
        .bind(client_id)
        .bind(new)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        sealed = active_sealed(pool, client_id).await?;
    }
    Ok(sealer.open_all(client_id, &sealed))
}

/// What [`rotate_signing_secret`] did.
#[derive(Debug, Clone)]
pub struct Rotation {
    /// The new current secret (`whsec_…`), signing from now on.
    pub secret: String,
    /// When the previous current secret stops signing; `None` if the client
    /// had none.
    pub previous_expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Rotates the client's signing secret in one transaction: every previous
/// secret is deleted — expired or still in its grace — so it never signs
/// again; the current secret (if any) gets `expires_at = now + grace` and
/// keeps signing until then; a new current secret is inserted. So at most two
/// secrets ever sign ([`MAX_SIGNING_SECRETS`]): the current one and the one
/// before it, during its grace. Rotating twice in a row therefore revokes a
/// leaked secret at once. Concurrent rotations of one client are serialised
/// by a per-client advisory lock. (The rotation rate limit is applied by the
/// HTTP handler, [`crate::auth::limits::Guard::admit_rotation`].)
///
/// # Errors
/// Database errors (nothing is changed then); sealing failed.
pub async fn rotate_signing_secret(
    pool: &sqlx::PgPool,
    sealer: &SecretSealer,
    client_id: &str,
    grace: Duration,
) -> Result<Rotation, SecretStoreError> {
    let secret = new_signing_secret();
    let sealed = sealer.seal(client_id, &secret)?;
    let mut tx = pool.begin().await?;
    lock_client_secrets(&mut tx, client_id).await?;
    // The secret rotated out last time stops signing now, even within its
    // grace: only the current one and the one it replaces may sign.
    sqlx::query("DELETE FROM signing_secrets WHERE client_id = $1 AND expires_at IS NOT NULL")
        .bind(client_id)
        .execute(&mut *tx)
        .await?;
    // clock_timestamp(): measured after the lock, so later rotations always
    // get later timestamps even if their transactions started earlier.
    let previous_expires_at: Option<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(
        "UPDATE signing_secrets
            SET expires_at = clock_timestamp() + make_interval(secs => $2)
          WHERE client_id = $1 AND expires_at IS NULL
      RETURNING expires_at",
    )
    .bind(client_id)
    .bind(grace.as_secs_f64())
    .fetch_optional(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO signing_secrets (id, client_id, secret, created_at)
         VALUES ($1, $2, $3, clock_timestamp())",
    )
    .bind(uuid::Uuid::now_v7())
    .bind(client_id)
    .bind(sealed)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Rotation {
        secret,
        previous_expires_at,
    })
}

/// What [`reseal_signing_secrets`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ResealReport {
    /// Rows re-sealed with the first key.
    pub resealed: u64,
    /// Rows that no configured key opens (logged at error, left as they are).
    pub unopenable: u64,
}

/// Re-seals every stored signing secret that is not sealed with the first key
/// of `sealer`, so that older encryption keys can be removed from the
/// configuration (`hookrelay reseal-secrets`, docs/operations.md). Safe while
/// the service runs: each row is updated only if its sealed value is still the
/// one that was read, and running it again does nothing.
///
/// # Errors
/// Database errors (rows already re-sealed stay re-sealed); sealing failed.
pub async fn reseal_signing_secrets(
    pool: &sqlx::PgPool,
    sealer: &SecretSealer,
) -> Result<ResealReport, SecretStoreError> {
    let first = sealer.key_ids().next().ok_or(SealError)?;
    let rows: Vec<(uuid::Uuid, String, String)> = sqlx::query_as(
        "SELECT id, client_id, secret FROM signing_secrets
          WHERE NOT starts_with(secret, $1 || ':')
          ORDER BY id",
    )
    .bind(first)
    .fetch_all(pool)
    .await?;
    let mut report = ResealReport::default();
    for (id, client_id, sealed) in rows {
        let secret = match sealer.open(&client_id, &sealed) {
            Ok(secret) => secret,
            Err(error) => {
                tracing::error!(%id, client_id, %error, "a stored signing secret does not open; not re-sealed");
                report.unopenable += 1;
                continue;
            }
        };
        let resealed = sealer.seal(&client_id, &secret)?;
        report.resealed +=
            sqlx::query("UPDATE signing_secrets SET secret = $3 WHERE id = $1 AND secret = $2")
                .bind(id)
                .bind(&sealed)
                .bind(resealed)
                .execute(pool)
                .await?
                .rows_affected();
    }
    Ok(report)
}
