//! The execute job: calls the upstream for a command, through the guarded
//! call, and ends the command — finished (its delivery created and its first
//! callback attempt sent by the same task, under the same lease), retried
//! later, deferred (no attempt spent), or answered by its fallback.

use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;

use super::{defer, DeliverJob, DispatchContext, Job, JobCommand, Lease};
use crate::config::FallbackSettings;
use crate::delivery::{WebhookBody, WebhookData};
use crate::domain::{CommandStatus, DeliveryStatus, JsonText};
use crate::integration::guarded::{Counting, Guarded, GuardedCall};
use crate::integration::{backoff, CallOutcome, UpstreamRequest, UpstreamResult};
use crate::outbox::{self, Claimed, Finish, Trigger};
use crate::security::seal::{DeliverSeal, ExecuteSeal};

/// An execute job: what its command's row says to call.
#[derive(Debug, Clone)]
pub struct ExecuteJob {
    /// The command.
    pub command: JobCommand,
    /// Resolved HTTP method.
    pub method: String,
    /// Resolved path.
    pub path: String,
    /// Command body: the stored JSON text, sent upstream as it is.
    pub body: Option<String>,
    /// Client's idempotency key.
    pub idempotency_key: Option<String>,
    /// Command params, the stored JSON text (for a fallback operation's path).
    pub params: String,
    /// Command status at claim time (before the claim's own update).
    pub status: CommandStatus,
    /// The command's seal (`commands.seal`; `None` once the command finished).
    pub seal: Option<String>,
}

impl ExecuteJob {
    /// The fields an execute job acts on, as covered by its command's seal.
    pub fn execute_seal(&self) -> ExecuteSeal<'_> {
        ExecuteSeal {
            command_id: self.command.id,
            client_id: &self.command.client_id,
            integration: &self.command.integration,
            operation: &self.command.operation,
            method: &self.method,
            path: &self.path,
            params: &self.params,
            body: self.body.as_deref(),
            callback_url: &self.command.callback_url,
            idempotency_key: self.idempotency_key.as_deref(),
        }
    }

    /// See [`crate::outbox::BackgroundJob::release_hold`]: the integration's
    /// `timeout_ms`, or its fallback integration's if longer.
    pub(super) fn release_hold(&self, ctx: &DispatchContext) -> Duration {
        let Some(integration) = ctx.integrations.get(&self.command.integration) else {
            return Duration::ZERO;
        };
        let fallback = integration
            .operation(&self.command.operation)
            .and_then(|op| op.fallback.as_ref())
            .and_then(|fb| fb.integration.as_deref())
            .and_then(|name| ctx.integrations.get(name))
            .map_or(0, |fb| fb.settings.timeout_ms);
        Duration::from_millis(integration.settings.timeout_ms.max(fallback))
    }
}

/// Runs an execute job. A job for a finished command never gets here
/// (`Job::run` drops it first): the upstream is never called twice.
pub(super) async fn run(
    ctx: &DispatchContext,
    lease: &Lease,
    job: &ExecuteJob,
) -> sqlx::Result<bool> {
    let cmd = &job.command;
    let (Some(integration), Some(policy)) = (
        ctx.integrations.get(&cmd.integration),
        ctx.policies.get(&cmd.integration),
    ) else {
        let result = UpstreamResult::no_response(format!(
            "integration `{}` is no longer configured",
            cmd.integration
        ));
        return finish(ctx, lease, job, CommandStatus::Failed, &result).await;
    };
    let attempt = lease.attempt();
    let guard = GuardedCall {
        policy,
        integration: &cmd.integration,
        operation: &cmd.operation,
        counting: Counting::Command,
        budget: Some((&ctx.retry_budget, attempt)),
    };
    let request = UpstreamRequest {
        command_id: cmd.id,
        operation: &cmd.operation,
        method: &job.method,
        path: &job.path,
        body: job.body.as_deref(),
    };
    let called = match integration.guarded_call(guard, &request).await {
        Guarded::Called(called) => called,
        Guarded::Wait { delay } => return defer(ctx, lease, delay).await,
        Guarded::Open { remaining } => {
            let fallback = integration
                .operation(&cmd.operation)
                .and_then(|op| op.fallback.as_ref());
            return match fallback {
                Some(fb) => run_fallback(ctx, lease, job, fb, remaining).await,
                None => defer(ctx, lease, remaining).await,
            };
        }
    };
    match called.outcome {
        CallOutcome::Succeeded(result) => {
            finish(ctx, lease, job, CommandStatus::Succeeded, &result).await
        }
        CallOutcome::Rejected(result) => {
            finish(ctx, lease, job, CommandStatus::Failed, &result).await
        }
        CallOutcome::Retryable {
            result,
            retry_after,
        } => {
            let horizon = Duration::from_secs(integration.settings.retry_horizon_s);
            let age = (chrono::Utc::now() - cmd.created_at)
                .to_std()
                .unwrap_or_default();
            if attempt >= integration.settings.max_attempts || age >= horizon {
                return finish(ctx, lease, job, CommandStatus::Failed, &result).await;
            }
            let mut delay = backoff(attempt, integration.settings.retry_backoff_ms);
            if let Some(ra) = retry_after {
                delay =
                    delay.max(ra.min(Duration::from_secs(ctx.settings.delivery.max_retry_after_s)));
            }
            let error = result
                .error
                .clone()
                .or_else(|| result.status_code.map(|s| format!("HTTP {s}")))
                .unwrap_or_default();
            let error = ctx.redactor.text(&error).into_owned();
            tracing::info!(target: "hookrelay::command", %error, delay_ms = delay.as_millis() as u64, "upstream call failed; retrying");
            crate::telemetry::metrics::upstream_retry(&cmd.integration, &cmd.operation);
            let done = retry(&ctx.pool, lease, delay, &error).await?;
            ctx.signals.wake_runner();
            Ok(done)
        }
    }
}

/// Answers a command from its operation's fallback while the primary's breaker
/// is open: a static response, or the fallback integration's operation (through
/// that integration's own policy). The result is marked `fallback: true`. If the
/// fallback cannot answer now, the command waits for the primary's cool-down.
async fn run_fallback(
    ctx: &DispatchContext,
    lease: &Lease,
    job: &ExecuteJob,
    fallback: &FallbackSettings,
    remaining: Duration,
) -> sqlx::Result<bool> {
    let cmd = &job.command;
    crate::telemetry::metrics::fallback_used(&cmd.integration, &cmd.operation);
    if let Some(status) = fallback.status {
        let result = UpstreamResult {
            status_code: Some(status),
            body: fallback
                .body
                .as_ref()
                .map_or_else(JsonText::null, JsonText::from_value),
            truncated: false,
            error: None,
            fallback: true,
        };
        let outcome = if (200..300).contains(&status) {
            CommandStatus::Succeeded
        } else {
            CommandStatus::Failed
        };
        return finish(ctx, lease, job, outcome, &result).await;
    }
    let (Some(name), Some(op_name)) = (&fallback.integration, &fallback.operation) else {
        return defer(ctx, lease, remaining).await;
    };
    let (Some(target), Some(policy)) = (ctx.integrations.get(name), ctx.policies.get(name)) else {
        return defer(ctx, lease, remaining).await;
    };
    let Some(op) = target.operation(op_name) else {
        return defer(ctx, lease, remaining).await;
    };
    let path = match op
        .path
        .fill_subset(&serde_json::from_str(&job.params).unwrap_or_default())
    {
        Ok(p) => p,
        _ => return defer(ctx, lease, remaining).await,
    };
    let guard = GuardedCall {
        policy,
        integration: name,
        operation: op_name,
        counting: Counting::Fallback,
        budget: None,
    };
    let request = UpstreamRequest {
        command_id: cmd.id,
        operation: op_name,
        method: op.method.as_str(),
        path: &path,
        body: job.body.as_deref(),
    };
    let Guarded::Called(called) = target.guarded_call(guard, &request).await else {
        return defer(ctx, lease, remaining).await;
    };
    tracing::info!(target: "hookrelay::command", integration = %cmd.integration, fallback = %name, "answered by the fallback");
    match called.outcome {
        CallOutcome::Succeeded(mut result) => {
            result.fallback = true;
            finish(ctx, lease, job, CommandStatus::Succeeded, &result).await
        }
        CallOutcome::Rejected(mut result) => {
            result.fallback = true;
            finish(ctx, lease, job, CommandStatus::Failed, &result).await
        }
        CallOutcome::Retryable { .. } => defer(ctx, lease, remaining).await,
    }
}

/// Ends a command: stores its result and creates its delivery with the body
/// signed on every attempt (serialised once here); the job becomes the
/// delivery's deliver job under the same lease, and this task sends the first
/// callback attempt at once ([`super::deliver::run`]). Returns whether the
/// outcomes were written under the lease (`false`: lost, nothing more done).
pub(super) async fn finish(
    ctx: &DispatchContext,
    lease: &Lease,
    job: &ExecuteJob,
    status: CommandStatus,
    result: &UpstreamResult,
) -> sqlx::Result<bool> {
    let cmd = &job.command;
    let event = match status {
        CommandStatus::Succeeded => "command.succeeded",
        _ => "command.failed",
    };
    // What the upstream said is outside text: masked before it is stored
    // (commands.result) and before it becomes the callback's data.result.
    let mut result = result.clone();
    result.body = ctx.redactor.json_text(&result.body);
    result.error = ctx.redactor.opt_text(result.error);
    let body = WebhookBody {
        type_: event,
        timestamp: chrono::Utc::now(),
        data: WebhookData {
            command_id: cmd.id,
            integration: &cmd.integration,
            operation: &cmd.operation,
            status: status.as_str(),
            result: &result,
        },
    };
    let payload = serde_json::to_string(&body).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    let delivery_id = Uuid::now_v7();
    let seal = ctx.job_sealer.seal_deliver(&DeliverSeal {
        delivery_id,
        command_id: cmd.id,
        client_id: &cmd.client_id,
        url: &cmd.callback_url,
        payload: &payload,
    });
    let deliver = DeliverJob {
        command: cmd.clone(),
        delivery_id,
        // Stored by intake from a `CallbackUrl`; a hand-edited row that no
        // longer parses is dead-lettered `undecodable` by the deliver job.
        url: crate::domain::CallbackUrl::from_stored(&cmd.callback_url).ok(),
        payload,
        status: Some(DeliveryStatus::Pending),
        secrets: None,
        seal: None,
        trigger: Trigger::Scheduled,
    };
    let secrets = ctx
        .outcomes
        .record_finish(
            lease.id,
            Finish {
                job_id: lease.id,
                lease_token: lease.lease_token,
                status,
                result,
                delivery_id,
                payload: deliver.payload.clone(),
                url: cmd.callback_url.clone(),
                seal: Some(seal),
            },
        )
        .await?;
    let Some(secrets) = secrets else {
        return Ok(false);
    };
    tracing::debug!(target: "hookrelay::command", status = %status, "command finished");
    // The job row is now the delivery's deliver job, first attempt, under the
    // lease this task holds (see `outbox::finish_batch`).
    let lease = Lease {
        attempts: 1,
        ..*lease
    };
    let deliver = DeliverJob {
        secrets: Some(secrets),
        ..deliver
    };
    super::deliver::run(ctx, &lease, &deliver).await
}

/// Puts an execute job back for another try after `delay`, recording the error
/// on the command. Returns `false` when the lease was lost.
///
/// # Errors
/// Database errors.
async fn retry(pool: &PgPool, lease: &Lease, delay: Duration, error: &str) -> sqlx::Result<bool> {
    let done = sqlx::query(
        r#"
        WITH j AS (
            UPDATE jobs SET run_at = now() + make_interval(secs => $3),
                            locked_until = NULL, lease_token = NULL, last_error = $4
             WHERE id = $1 AND lease_token = $2
         RETURNING command_id
        )
        UPDATE commands SET last_error = $4, updated_at = now()
         WHERE id IN (SELECT command_id FROM j)
        "#,
    )
    .bind(lease.id)
    .bind(lease.lease_token)
    .bind(delay.as_secs_f64())
    .bind(error)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(done == 1)
}

/// Finishes a claimed job's command in one statement, leaving the delivery
/// unsealed (tools and tests; the dispatcher seals) — see
/// [`outbox::finish_batch`]. The delivery goes to the command's callback URL.
/// Returns `false` when the lease was lost.
///
/// # Errors
/// Database errors.
pub async fn finish_execute(
    pool: &PgPool,
    job: &Claimed<Job>,
    status: CommandStatus,
    result: &UpstreamResult,
    delivery_id: Uuid,
    payload: &str,
) -> sqlx::Result<bool> {
    let row = Finish {
        job_id: job.id,
        lease_token: job.lease_token,
        status,
        result: result.clone(),
        delivery_id,
        payload: payload.to_owned(),
        url: job.job.command().callback_url.clone(),
        seal: None,
    };
    Ok(outbox::finish_batch(pool, vec![&row])
        .await?
        .first()
        .copied()
        .unwrap_or(false))
}
