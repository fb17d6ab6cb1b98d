//! The deliver job: one signed callback attempt for a finished command, then
//! what follows it — delivered, retried on the delivery schedule, or
//! dead-lettered.

use std::time::Duration;

use uuid::Uuid;

use super::{DispatchContext, JobCommand, Lease};
use crate::delivery::secrets::{ensure_signing_secrets, SecretStoreError};
use crate::delivery::{next_delay, AttemptOutcome};
use crate::domain::CallbackUrl;
use crate::outbox::{AfterAttempt, AttemptRecord, Outcome, Trigger};
use crate::security::seal::DeliverSeal;

/// A deliver job: the delivery its command's callback is sent as.
#[derive(Debug, Clone)]
pub struct DeliverJob {
    /// The command.
    pub command: JobCommand,
    /// The delivery (the `webhook-id`).
    pub delivery_id: Uuid,
    /// Callback URL of the delivery, decoded once at claim; `None` only
    /// when the delivery row is gone (see `status`) or the row did not
    /// decode (the job is then ended without running).
    pub url: Option<CallbackUrl>,
    /// The signed body, serialised once when the command finished.
    pub payload: String,
    /// Delivery status at claim time; `None` when the delivery row is gone
    /// (its id, URL and payload are then empty, and the job is dropped
    /// before any of them is read).
    pub status: Option<crate::domain::DeliveryStatus>,
    /// Active signing secrets, sealed, newest first (`None` or empty if the
    /// client has none yet).
    pub secrets: Option<Vec<String>>,
    /// The delivery's seal (`deliveries.seal`).
    pub seal: Option<String>,
    /// Why the job runs.
    pub trigger: Trigger,
}

impl DeliverJob {
    /// The fields a deliver job acts on, as covered by its delivery's seal.
    pub fn deliver_seal(&self) -> DeliverSeal<'_> {
        DeliverSeal {
            delivery_id: self.delivery_id,
            command_id: self.command.id,
            client_id: &self.command.client_id,
            url: self.url.as_ref().map_or("", CallbackUrl::as_str),
            payload: &self.payload,
        }
    }
}

/// Runs a deliver job. Only pending deliveries get here (`Job::run` drops
/// the others first).
pub(super) async fn run(
    ctx: &DispatchContext,
    lease: &Lease,
    job: &DeliverJob,
) -> sqlx::Result<bool> {
    let cmd = &job.command;
    let Some(url) = &job.url else {
        // Unreachable: a pending delivery's row has a URL, and a row whose
        // URL does not decode never runs. Never send without one.
        let why = "not sent: the delivery has no callback URL".to_owned();
        return dead_letter_unsent(ctx, lease, job, why, "undecodable").await;
    };
    let secrets = match &job.secrets {
        // Newest first; older rows than the current secret and the one it
        // replaced never sign (rows left from before rotation retired them).
        Some(sealed) if !sealed.is_empty() => ctx.sealer.open_all(
            &cmd.client_id,
            &sealed[..sealed
                .len()
                .min(crate::delivery::secrets::MAX_SIGNING_SECRETS)],
        ),
        _ => match ensure_signing_secrets(&ctx.pool, &ctx.sealer, &cmd.client_id).await {
            Ok(secrets) => secrets,
            Err(SecretStoreError::Database(e)) => return Err(e),
            Err(e) => {
                tracing::error!(target: "hookrelay::jobs", error = %e, "creating the client's first signing secret failed");
                Vec::new()
            }
        },
    };
    let Some(host_slot) = ctx.hosts.acquire(url.as_str()).await else {
        // The host is at its limit: try again shortly, without spending an attempt.
        let delay = Duration::from_millis(rand::random_range(500..1500));
        tracing::debug!(
            target: "hookrelay::jobs",
            delay_ms = delay.as_millis() as u64,
            "callback host at its limit; deferring"
        );
        let done =
            crate::outbox::store::defer(&ctx.pool, lease.id, lease.lease_token, delay).await?;
        ctx.signals.wake_runner();
        return Ok(done);
    };
    let webhook_id = job.delivery_id.to_string();
    let mut outcome = if secrets.is_empty() {
        // Never send an unsigned webhook: record a failed attempt without
        // contacting the receiver; the schedule retries (and dead-letters).
        AttemptOutcome::not_sent(
            "not sent: no signing secret of this client could be opened (server configuration)",
        )
    } else {
        ctx.sender
            .attempt(url, &webhook_id, &secrets, &job.payload)
            .await
    };
    drop(host_slot);
    // The receiver's answer is outside text: masked before it reaches the
    // audit log, last_error or a log line.
    outcome.response_body = ctx.redactor.opt_text(outcome.response_body);
    outcome.error = ctx.redactor.opt_text(outcome.error);
    let settings = &ctx.settings.delivery;
    let next = if outcome.delivered() {
        AfterAttempt::Delivered
    } else if outcome.gone() {
        AfterAttempt::DeadLettered("gone")
    } else {
        match next_delay(
            &settings.retry_schedule_s,
            settings.jitter,
            lease.attempt(),
            outcome.retry_after,
            Duration::from_secs(settings.max_retry_after_s),
        ) {
            Some(d) => AfterAttempt::RetryIn(d),
            None => AfterAttempt::DeadLettered("exhausted"),
        }
    };
    tracing::debug!(target: "hookrelay::jobs", webhook_id = %webhook_id, status = ?outcome.response_status, next = ?next, "callback attempt");
    crate::telemetry::metrics::delivery_attempt(
        next.metric_outcome(),
        f64::from(outcome.duration_ms) / 1000.0,
    );
    if let AfterAttempt::DeadLettered(reason) = next {
        tracing::warn!(target: "hookrelay::jobs", webhook_id = %webhook_id, reason, error = ?outcome.error, "delivery dead-lettered");
    }
    let done = ctx
        .outcomes
        .record(
            lease.id,
            Outcome::Attempt(AttemptRecord {
                job_id: lease.id,
                lease_token: lease.lease_token,
                outcome,
                next,
                trigger: job.trigger,
            }),
        )
        .await?;
    if matches!(next, AfterAttempt::RetryIn(_)) {
        ctx.signals.wake_runner();
    }
    if done && next == AfterAttempt::Delivered && job.trigger == Trigger::Scheduled {
        // Accepted → delivered, as the database clock saw the acceptance. A
        // replayed delivery's latency would include its time as a dead letter.
        let latency = (chrono::Utc::now() - cmd.created_at)
            .to_std()
            .unwrap_or_default();
        crate::telemetry::metrics::command_delivery_latency(
            &cmd.integration,
            latency.as_secs_f64(),
        );
    }
    Ok(done)
}

/// Dead-letters a deliver job with `reason` without sending anything; the
/// attempt log records why (`error` = `why`, no response).
pub(super) async fn dead_letter_unsent(
    ctx: &DispatchContext,
    lease: &Lease,
    job: &DeliverJob,
    why: String,
    reason: &'static str,
) -> sqlx::Result<bool> {
    ctx.outcomes
        .record(
            lease.id,
            Outcome::Attempt(AttemptRecord {
                job_id: lease.id,
                lease_token: lease.lease_token,
                outcome: AttemptOutcome::not_sent(why),
                next: AfterAttempt::DeadLettered(reason),
                trigger: job.trigger,
            }),
        )
        .await
}
