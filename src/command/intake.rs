//! Group intake: concurrent `POST /v1/commands` requests are written together.
//!
//! Handlers hand a validated [`NewCommand`] to the [`Intake`] and wait. Writer
//! tasks (`commands.intake_writers`, see [`crate::db::batch`]) each take whatever is
//! queued (up to `commands.intake_batch_max`, optionally waiting
//! `intake_batch_window_ms` for more) and insert the commands and their `execute` jobs with one `UNNEST`
//! statement in one transaction; only after the commit is every request in the
//! batch answered. So a 202 always means the command is durable, and under load
//! many commands share one commit (see `docs/performance.md`). A request of a
//! failed batch whose row committed after all (the commit's answer was lost)
//! is still answered 202 (see `answer_committed`).
//!
//! Idempotency keys are resolved in the same transaction: the insert skips rows
//! whose `(client_id, idempotency_key)` exists (`ON CONFLICT DO NOTHING`, which
//! also covers two requests with one key in the same batch), then the existing
//! rows' request hashes decide between "the same command" and 409.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::db::batch::{with_single_fallback, Batcher};
use crate::domain::{CallbackUrl, JsonText};
use crate::outbox::Signals;
use crate::security::seal::{ExecuteSeal, JobSealer};

/// A validated command, ready to insert.
#[derive(Debug, Clone)]
pub struct NewCommand {
    /// New UUIDv7.
    pub id: Uuid,
    /// Owner (`sub`).
    pub client_id: String,
    /// Integration name (exists in config).
    pub integration: String,
    /// Operation name (exists in config).
    pub operation: String,
    /// Method resolved from config.
    pub method: String,
    /// Path filled and encoded from params.
    pub path: String,
    /// Params, the exact JSON text sent (`{}` when absent).
    pub params: JsonText,
    /// Body, the exact JSON text sent.
    pub body: Option<JsonText>,
    /// Checked callback URL.
    pub callback_url: CallbackUrl,
    /// Checked idempotency key.
    pub idempotency_key: Option<String>,
    /// SHA-256 of the canonical request.
    pub request_hash: Vec<u8>,
}

/// What happened to one submitted command.
#[derive(Debug, Clone)]
pub enum IntakeOutcome {
    /// Inserted now, at this database time.
    Created {
        /// Insert time.
        created_at: chrono::DateTime<chrono::Utc>,
    },
    /// Same client, same key, same request: this existing command.
    Existing(Uuid),
    /// Same client and key, different request.
    Conflict,
}

/// Handle to the intake writers; cheap to clone into every HTTP worker.
#[derive(Clone)]
pub struct Intake {
    batcher: Batcher<NewCommand, sqlx::Result<IntakeOutcome>>,
}

impl Intake {
    /// Starts `writers` writer tasks on the current Tokio runtime. The tasks end
    /// once every `Intake` clone is dropped and the queue is drained. After a
    /// commit that created commands they tell `signals` (new jobs and events;
    /// no write of theirs sends `NOTIFY`).
    pub fn start(
        pool: PgPool,
        sealer: Arc<JobSealer>,
        signals: Arc<Signals>,
        writers: usize,
        batch_max: usize,
        window: Duration,
    ) -> (Intake, Vec<JoinHandle<()>>) {
        let (batcher, handles) = Batcher::start(
            writers,
            batch_max,
            window,
            move |commands: Vec<NewCommand>| {
                let pool = pool.clone();
                let sealer = sealer.clone();
                let signals = signals.clone();
                async move {
                    let results =
                        with_single_fallback(&commands, |batch| insert(&pool, &sealer, batch))
                            .await;
                    let answers = answer_committed(&pool, &commands, results).await;
                    if answers
                        .iter()
                        .any(|a| matches!(a, Ok(IntakeOutcome::Created { .. })))
                    {
                        // After the commit: wake this process's runner and
                        // event tailer, announce to the other processes.
                        signals.jobs_committed();
                        signals.events_committed();
                    }
                    answers
                }
            },
        );
        (Intake { batcher }, handles)
    }

    /// Writes `command` durably (or finds its idempotent twin) and returns the
    /// outcome once the transaction has committed.
    ///
    /// # Errors
    /// [`IntakeError::ShuttingDown`] once the writers have stopped;
    /// [`IntakeError::Database`] when the write failed.
    pub async fn submit(&self, command: NewCommand) -> Result<IntakeOutcome, IntakeError> {
        self.batcher
            .submit(command)
            .await
            .ok_or(IntakeError::ShuttingDown)?
            .map_err(IntakeError::Database)
    }
}

/// Why [`Intake::submit`] could not write a command. At the HTTP edge both
/// are 503 when they are worth retrying (shutting down; a transient database
/// error) and 500 otherwise.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// The intake writers have stopped: the service is shutting down.
    #[error("the service is shutting down")]
    ShuttingDown,
    /// The database write failed (nothing of this command was committed).
    #[error(transparent)]
    Database(sqlx::Error),
}

/// Gives every command whose own row is committed its own answer, `Created`,
/// whatever the write path reported for it.
///
/// A write can fail after some of its rows committed: the commit succeeded
/// but its answer was lost (connection reset, server restart), or
/// [`insert`]'s second transaction failed after its first committed. The
/// single-row retries of [`with_single_fallback`] then meet the command's own
/// row: without an idempotency key they fail on the primary key, with one
/// they find "an existing command" that is in fact this one. Answering either
/// with an error (or as a replay) would make a client resend, and a resend
/// without a key creates a duplicate. The command id is generated per request
/// (UUIDv7), so a row with that id can only be this request's, written with
/// its `execute` job in the same transaction: it gets 202. When the look-up
/// itself fails (the database is still unreachable) the answers stay as they
/// were.
async fn answer_committed(
    pool: &PgPool,
    commands: &[NewCommand],
    mut results: Vec<sqlx::Result<IntakeOutcome>>,
) -> Vec<sqlx::Result<IntakeOutcome>> {
    let unsure: Vec<Uuid> = commands
        .iter()
        .zip(&results)
        .filter(|(c, r)| match r {
            Err(_) => true,
            Ok(IntakeOutcome::Existing(id)) => *id == c.id,
            Ok(_) => false,
        })
        .map(|(c, _)| c.id)
        .collect();
    if unsure.is_empty() {
        return results;
    }
    let found: Vec<Inserted> = match sqlx::query_as(
        "SELECT id, created_at FROM commands WHERE id = ANY($1)",
    )
    .bind(&unsure)
    .fetch_all(pool)
    .await
    {
        Ok(rows) => rows,
        Err(e) => {
            tracing::warn!(error = %e, "checking which commands of a failed batch committed failed");
            return results;
        }
    };
    let found: HashMap<Uuid, chrono::DateTime<chrono::Utc>> =
        found.into_iter().map(|r| (r.id, r.created_at)).collect();
    for (command, result) in commands.iter().zip(results.iter_mut()) {
        if let Some(created_at) = found.get(&command.id) {
            *result = Ok(IntakeOutcome::Created {
                created_at: *created_at,
            });
        }
    }
    results
}

#[derive(sqlx::FromRow)]
struct Inserted {
    id: Uuid,
    created_at: chrono::DateTime<chrono::Utc>,
}

#[derive(sqlx::FromRow)]
struct Existing {
    id: Uuid,
    client_id: String,
    idempotency_key: String,
    request_hash: Vec<u8>,
}

/// Inserts the commands (each sealed for its execute job, see
/// [`crate::security::seal`]) and their execute jobs; returns one outcome per input, in
/// order.
///
/// A command skipped for its idempotency key whose holder is gone when it is
/// looked up (maintenance cleared the expired key in between) is inserted
/// again, in a second transaction, rather than answered 409.
async fn insert(
    pool: &PgPool,
    sealer: &JobSealer,
    commands: Vec<&NewCommand>,
) -> sqlx::Result<Vec<IntakeOutcome>> {
    let mut outcomes = insert_once(pool, sealer, commands.clone()).await?;
    let again: Vec<usize> = (0..outcomes.len())
        .filter(|i| outcomes[*i].is_none())
        .collect();
    if !again.is_empty() {
        let retried =
            insert_once(pool, sealer, again.iter().map(|i| commands[*i]).collect()).await?;
        for (i, outcome) in again.into_iter().zip(retried) {
            outcomes[i] = outcome;
        }
    }
    // Gone twice in a row: the key is contended; the client may retry.
    Ok(outcomes
        .into_iter()
        .map(|o| o.unwrap_or(IntakeOutcome::Conflict))
        .collect())
}

/// One transaction of [`insert`]: `None` for a command skipped for its
/// idempotency key whose holder could not be found.
async fn insert_once(
    pool: &PgPool,
    sealer: &JobSealer,
    commands: Vec<&NewCommand>,
) -> sqlx::Result<Vec<Option<IntakeOutcome>>> {
    // Insert in (client_id, idempotency_key) order so concurrent batches take
    // their ON CONFLICT locks in the same order and cannot deadlock; outcomes
    // are matched back to the caller's order by command id below.
    let mut sorted = commands.clone();
    sorted.sort_by(|a, b| {
        (&a.client_id, &a.idempotency_key).cmp(&(&b.client_id, &b.idempotency_key))
    });
    // Every column below is bound from `sorted`, so each row's fields stay
    // together (and match the seal computed from the same command).
    let seals: Vec<String> = sorted
        .iter()
        .map(|c| {
            sealer.seal_execute(&ExecuteSeal {
                command_id: c.id,
                client_id: &c.client_id,
                integration: &c.integration,
                operation: &c.operation,
                method: &c.method,
                path: &c.path,
                params: c.params.as_str(),
                body: c.body.as_ref().map(JsonText::as_str),
                callback_url: c.callback_url.as_str(),
                idempotency_key: c.idempotency_key.as_deref(),
            })
        })
        .collect();
    let mut tx = pool.begin().await?;
    let inserted: Vec<Inserted> = sqlx::query_as(
        r#"
        WITH input AS (
            SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[],
                                 $6::text[], $7::text[], $8::text[], $9::text[], $10::text[],
                                 $11::bytea[], $12::text[])
                AS t(id, client_id, integration, operation, method, path, params, body,
                     callback_url, idempotency_key, request_hash, seal)
        ), ins AS (
            INSERT INTO commands (id, client_id, integration, operation, method, path, params,
                                  body, callback_url, idempotency_key, request_hash, seal)
            SELECT id, client_id, integration, operation, method, path, params, body,
                   callback_url, idempotency_key, request_hash, seal
              FROM input
            ON CONFLICT (client_id, idempotency_key) DO NOTHING
            RETURNING id, created_at
        ), jobs AS (
            INSERT INTO jobs (kind, command_id) SELECT 'execute', id FROM ins
        )
        SELECT id, created_at FROM ins
        "#,
    )
    .bind(sorted.iter().map(|c| c.id).collect::<Vec<_>>())
    .bind(
        sorted
            .iter()
            .map(|c| c.client_id.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        sorted
            .iter()
            .map(|c| c.integration.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        sorted
            .iter()
            .map(|c| c.operation.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(sorted.iter().map(|c| c.method.as_str()).collect::<Vec<_>>())
    .bind(sorted.iter().map(|c| c.path.as_str()).collect::<Vec<_>>())
    .bind(sorted.iter().map(|c| c.params.as_str()).collect::<Vec<_>>())
    .bind(
        sorted
            .iter()
            .map(|c| c.body.as_ref().map(JsonText::as_str))
            .collect::<Vec<_>>(),
    )
    .bind(
        sorted
            .iter()
            .map(|c| c.callback_url.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        sorted
            .iter()
            .map(|c| c.idempotency_key.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind(
        sorted
            .iter()
            .map(|c| c.request_hash.as_slice())
            .collect::<Vec<_>>(),
    )
    .bind(&seals)
    .fetch_all(&mut *tx)
    .await?;

    let created: HashMap<Uuid, chrono::DateTime<chrono::Utc>> =
        inserted.into_iter().map(|r| (r.id, r.created_at)).collect();
    let skipped: Vec<&NewCommand> = commands
        .iter()
        .copied()
        .filter(|c| !created.contains_key(&c.id))
        .collect();
    let mut existing: HashMap<(String, String), (Uuid, Vec<u8>)> = HashMap::new();
    if !skipped.is_empty() {
        let rows: Vec<Existing> = sqlx::query_as(
            r#"
            SELECT id, client_id, idempotency_key, request_hash FROM commands
             WHERE (client_id, idempotency_key) IN
                   (SELECT * FROM UNNEST($1::text[], $2::text[]))
            "#,
        )
        .bind(
            skipped
                .iter()
                .map(|c| c.client_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            skipped
                .iter()
                .map(|c| c.idempotency_key.as_deref())
                .collect::<Vec<_>>(),
        )
        .fetch_all(&mut *tx)
        .await?;
        existing = rows
            .into_iter()
            .map(|r| ((r.client_id, r.idempotency_key), (r.id, r.request_hash)))
            .collect();
    }
    tx.commit().await?;

    Ok(commands
        .iter()
        .map(|c| {
            if let Some(created_at) = created.get(&c.id) {
                return Some(IntakeOutcome::Created {
                    created_at: *created_at,
                });
            }
            let key = (
                c.client_id.clone(),
                c.idempotency_key.clone().unwrap_or_default(),
            );
            match existing.get(&key) {
                Some((id, hash)) if *hash == c.request_hash => Some(IntakeOutcome::Existing(*id)),
                Some(_) => Some(IntakeOutcome::Conflict),
                None => None,
            }
        })
        .collect())
}
