//! What a claim reads for the jobs, and how a claimed row becomes a typed
//! [`Job`] — once, at claim.
//!
//! The claim statement's generic part (taking leases) is in
//! [`crate::outbox::store::claim`]; [`CLAIM_SELECT`] is the part only the job
//! kinds know: an execute job's command moves from `accepted` to
//! `in_progress` in the same statement, and each row carries the command, the
//! delivery (deliver jobs) and the client's signing secrets (deliver jobs), so
//! a job needs no second round trip. The SQL is kind-aware, so it lives here
//! and reaches the store through [`crate::outbox::BackgroundJob::CLAIM_SELECT`].

use sqlx::postgres::PgRow;
use uuid::Uuid;

use super::{DeliverJob, ExecuteJob, Job, JobCommand};
use crate::domain::{CallbackUrl, CommandStatus, DeliveryStatus, JobKind};
use crate::outbox::{Claimed, Trigger};

/// The claim statement after its `claimed` CTE (see
/// [`crate::outbox::store::claim`]).
pub const CLAIM_SELECT: &str = r#", started AS (
            UPDATE commands SET status = 'in_progress', updated_at = now()
             WHERE id IN (SELECT command_id FROM claimed WHERE kind = 'execute')
               AND status = 'accepted'
        )
        SELECT cl.id, cl.kind, cl.command_id, cl.delivery_id, cl.attempts, cl.lease_token, cl.trigger,
               c.client_id, c.integration, c.operation, c.method, c.path, c.body,
               c.idempotency_key, c.params, c.created_at AS command_created_at,
               c.status AS command_status,
               d.url, d.payload, d.status AS delivery_status,
               c.callback_url, c.seal AS command_seal, d.seal AS delivery_seal,
               CASE WHEN cl.kind = 'deliver' THEN
                   ARRAY(SELECT s.secret FROM signing_secrets s
                          WHERE s.client_id = c.client_id
                            AND (s.expires_at IS NULL OR s.expires_at > now())
                          ORDER BY s.created_at DESC)
               END AS secrets
          FROM claimed cl
          JOIN commands c ON c.id = cl.command_id
          LEFT JOIN deliveries d ON d.id = cl.delivery_id"#;

/// One claimed row as the statement returns it (both kinds in one shape);
/// turned into a [`Job`] at once by [`decode`].
#[derive(Debug, Clone, sqlx::FromRow)]
struct Row {
    id: i64,
    kind: JobKind,
    command_id: Uuid,
    delivery_id: Option<Uuid>,
    attempts: i32,
    lease_token: Uuid,
    trigger: String,
    client_id: String,
    integration: String,
    operation: String,
    method: String,
    path: String,
    body: Option<String>,
    idempotency_key: Option<String>,
    params: String,
    command_created_at: chrono::DateTime<chrono::Utc>,
    command_status: CommandStatus,
    /// Decoded with [`CallbackUrl::from_stored`]: a stored URL that is not
    /// one fails this row only (its job is [`Claimed::undecodable`]).
    url: Option<CallbackUrl>,
    payload: Option<String>,
    delivery_status: Option<DeliveryStatus>,
    secrets: Option<Vec<String>>,
    callback_url: String,
    command_seal: Option<String>,
    delivery_seal: Option<String>,
}

impl Row {
    fn into_claimed(self, undecodable: Option<String>) -> Claimed<Job> {
        let command = JobCommand {
            id: self.command_id,
            client_id: self.client_id,
            integration: self.integration,
            operation: self.operation,
            created_at: self.command_created_at,
            callback_url: self.callback_url,
        };
        let job = match self.kind {
            JobKind::Execute => Job::Execute(ExecuteJob {
                command,
                method: self.method,
                path: self.path,
                body: self.body,
                idempotency_key: self.idempotency_key,
                params: self.params,
                status: self.command_status,
                seal: self.command_seal,
            }),
            // The delivery's columns are NULL only when its row is gone; the
            // job then has nothing to do (`status` None) and is dropped
            // before any of them is read.
            JobKind::Deliver => Job::Deliver(DeliverJob {
                command,
                delivery_id: self.delivery_id.unwrap_or_default(),
                url: self.url,
                payload: self.payload.unwrap_or_default(),
                status: self.delivery_status,
                secrets: self.secrets,
                seal: self.delivery_seal,
                // `jobs.trigger` is CHECKed to one of the two values.
                trigger: Trigger::parse(&self.trigger).unwrap_or(Trigger::Scheduled),
            }),
        };
        Claimed {
            id: self.id,
            lease_token: self.lease_token,
            attempts: self.attempts,
            job,
            undecodable,
        }
    }
}

/// Decodes one claimed row; when that fails, decodes column by column and
/// marks the job [`Claimed::undecodable`], naming the columns that failed.
/// A decoder that panics instead of failing (sqlx's chrono decoding panics on
/// a timestamp of `infinity`) counts as failing: it must not take the
/// dispatcher with it.
pub fn decode(row: &PgRow) -> Claimed<Job> {
    use sqlx::{FromRow, Row as _};
    let error = match decoded(|| Row::from_row(row)) {
        Ok(job) => return job.into_claimed(None),
        Err(e) => e,
    };
    let mut failed: Vec<String> = Vec::new();
    macro_rules! col {
        ($name:literal) => {
            match decoded(|| row.try_get($name)) {
                Ok(v) => v,
                Err(e) => {
                    failed.push(format!("{}: {e}", $name));
                    Default::default()
                }
            }
        };
    }
    let job = Row {
        id: col!("id"),
        kind: col!("kind"),
        command_id: col!("command_id"),
        delivery_id: col!("delivery_id"),
        attempts: col!("attempts"),
        lease_token: col!("lease_token"),
        trigger: col!("trigger"),
        client_id: col!("client_id"),
        integration: col!("integration"),
        operation: col!("operation"),
        method: col!("method"),
        path: col!("path"),
        body: col!("body"),
        idempotency_key: col!("idempotency_key"),
        params: col!("params"),
        command_created_at: col!("command_created_at"),
        command_status: col!("command_status"),
        url: col!("url"),
        payload: col!("payload"),
        delivery_status: col!("delivery_status"),
        secrets: col!("secrets"),
        callback_url: col!("callback_url"),
        command_seal: col!("command_seal"),
        delivery_seal: col!("delivery_seal"),
    };
    // A column only the other kind of job uses does not stop this one (a
    // deliver job never reads the command's body or creation time).
    let unused: &[&str] = match job.kind {
        JobKind::Deliver => &[
            "method",
            "path",
            "body",
            "idempotency_key",
            "params",
            "command_created_at",
            "command_status",
            "command_seal",
        ],
        JobKind::Execute => &[
            "url",
            "payload",
            "delivery_status",
            "secrets",
            "delivery_seal",
        ],
    };
    let relevant: Vec<String> = failed
        .into_iter()
        .filter(|f| !unused.iter().any(|u| f.split(':').next() == Some(*u)))
        .collect();
    if relevant.is_empty() {
        // Every column this job reads decoded on its own.
        tracing::debug!(target: "hookrelay::jobs", job_id = job.id, %error, "a claimed row decodes only column by column");
        return job.into_claimed(None);
    }
    let why = relevant.join("; ");
    tracing::error!(target: "hookrelay::jobs", job_id = job.id, command_id = %job.command_id, reason = %why, "a claimed job does not decode; failing it on its own");
    job.into_claimed(Some(why))
}

/// Runs a decoder, turning both its error and its panic into a message.
fn decoded<T>(decode: impl FnOnce() -> sqlx::Result<T>) -> Result<T, String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(decode)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(panic) => Err(panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "the decoder panicked".to_owned())),
    }
}
