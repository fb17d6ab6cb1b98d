//! Dead-letter replay: the SQL that puts dead-lettered deliveries back into
//! the outbox (`POST /v1/dead-letters/{id}/replay` and `/v1/dead-letters/replay`,
//! handled in `command::replay`).

use sqlx::PgPool;
use uuid::Uuid;

/// Which dead letters a replay (or its "more remain" check) matches: `d` is
/// the delivery, `c` its command; `$1` an optional delivery id, `$2`–`$5` the
/// [`ReplayFilter`] fields in order. Dead letters quarantined for `integrity`
/// never match: their rows failed seal verification, so replaying them would
/// only quarantine them again (docs/security.md).
const DEAD_LETTER_MATCH: &str = "d.status = 'dead_lettered'
               AND ($1::uuid IS NULL OR d.id = $1)
               AND ($2::text IS NULL OR c.integration = $2)
               AND ($3::text IS NULL OR d.client_id = $3)
               AND ($4::timestamptz IS NULL OR d.dead_lettered_at >= $4)
               AND ($5::timestamptz IS NULL OR d.dead_lettered_at < $5)
               AND d.dead_letter_reason IS DISTINCT FROM 'integrity'";

/// Whether any dead letter still matches `filter` (after a capped bulk replay).
///
/// # Errors
/// Database errors.
pub async fn dead_letters_remain(pool: &PgPool, filter: &ReplayFilter) -> sqlx::Result<bool> {
    sqlx::query_scalar(&format!(
        "SELECT EXISTS (SELECT 1 FROM deliveries d JOIN commands c ON c.id = d.command_id
          WHERE {DEAD_LETTER_MATCH})"
    ))
    .bind(None::<Uuid>)
    .bind(filter.integration.as_deref())
    .bind(filter.client_id.as_deref())
    .bind(filter.since)
    .bind(filter.until)
    .fetch_one(pool)
    .await
}

/// Filter of a bulk replay; `None` fields match everything.
#[derive(Debug, Clone, Default)]
pub struct ReplayFilter {
    /// Only commands of this integration.
    pub integration: Option<String>,
    /// Only this client's deliveries.
    pub client_id: Option<String>,
    /// Dead-lettered at or after this time.
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Dead-lettered before this time.
    pub until: Option<chrono::DateTime<chrono::Utc>>,
}

/// Re-enqueues dead-lettered deliveries matching `filter` (or exactly
/// `delivery_id`): each goes back to `pending` with a new `deliver` job whose
/// trigger is `replay` — one statement, so the whole replay is durable (or
/// not done) at once, and a restart afterwards loses nothing. A delivery that
/// is not dead-lettered is untouched (so concurrent replays enqueue it once).
/// At most `limit` deliveries (oldest dead letters first); returns how many.
///
/// # Errors
/// Database errors (nothing is replayed then).
pub async fn replay_dead_letters(
    pool: &PgPool,
    delivery_id: Option<Uuid>,
    filter: &ReplayFilter,
    limit: i64,
) -> sqlx::Result<i64> {
    let replayed: i64 = sqlx::query_scalar(&format!(
        r#"
        WITH pick AS (
            SELECT d.id
              FROM deliveries d
              JOIN commands c ON c.id = d.command_id
             WHERE {DEAD_LETTER_MATCH}
             ORDER BY d.dead_lettered_at
             LIMIT $6
               FOR UPDATE OF d SKIP LOCKED
        ), d AS (
            UPDATE deliveries
               SET status = 'pending', dead_letter_reason = NULL, dead_lettered_at = NULL,
                   updated_at = now()
              FROM pick
             WHERE deliveries.id = pick.id
         RETURNING deliveries.id, deliveries.command_id
        ), j AS (
            INSERT INTO jobs (kind, command_id, delivery_id, trigger)
            SELECT 'deliver', command_id, id, 'replay' FROM d
            ON CONFLICT (delivery_id) WHERE kind = 'deliver' DO NOTHING
        )
        SELECT count(*) FROM d
        "#
    ))
    .bind(delivery_id)
    .bind(filter.integration.as_deref())
    .bind(filter.client_id.as_deref())
    .bind(filter.since)
    .bind(filter.until)
    .bind(limit)
    .fetch_one(pool)
    .await?;
    if replayed > 0 {
        // After the commit, in a transaction of its own: wake the runners
        // and event tailers of every process (`outbox::signal`'s channels).
        // Best effort: they also poll.
        if let Err(e) =
            sqlx::query("SELECT pg_notify('hookrelay_jobs', ''), pg_notify('hookrelay_events', '')")
                .execute(pool)
                .await
        {
            tracing::debug!(error = %e, "announcing replayed deliveries failed; the runners poll");
        }
    }
    Ok(replayed)
}
