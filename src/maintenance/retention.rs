//! The `purge_finished` task: deletes finished history (`[retention]`).
//!
//! A command is deleted, with its delivery, the delivery's attempts and its
//! events, when all of these hold:
//! - its status is final (`succeeded`, `failed`);
//! - it has no outbox job (nothing will act on it any more);
//! - its callback was delivered more than `retention.finished_days` ago, or
//!   it has no callback delivery and finished more than `finished_days` ago,
//!   or its callback was dead-lettered more than `retention.dead_letter_days`
//!   ago (a pending callback is never deleted; a replayed dead letter is
//!   pending again);
//! - its `Idempotency-Key`, if it still has one, is older than
//!   `maintenance.idempotency_key_ttl_s` (a key still honoured keeps its
//!   command, so a retried request is answered with it, never run twice).
//!
//! `0` days keeps that kind forever. Command ids are UUIDv7, ordered by
//! creation time, and a command finishes after it was created, so the task
//! walks the primary key from the oldest id up to the id of "now minus the
//! shorter bound", [`BATCH`] commands per statement, a cursor moving forward:
//! no extra index (nothing added to the intake's writes) and each row is
//! looked at once per run, even the dead letters that must stay. The rows are
//! locked `FOR UPDATE SKIP LOCKED`, so a command another transaction holds
//! (a replay inserting its job) is left for the next run.
//!
//! Children are deleted by the statement itself, not left to foreign-key
//! cascades, so the purge does not depend on them.

use std::time::{Duration, SystemTime};

use sqlx::PgPool;
use uuid::Uuid;

use crate::config::RetentionSettings;

/// Commands looked at (and at most deleted) per statement.
pub const BATCH: i64 = 1_000;

/// The smallest UUIDv7 of the millisecond `at`: every command id created
/// before `at` is smaller.
pub fn uuid_v7_floor(at: SystemTime) -> Uuid {
    let ms = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis();
    let ms = u64::try_from(ms).unwrap_or(u64::MAX) & 0xFFFF_FFFF_FFFF;
    // 48-bit big-endian ms, version 7, variant 0b10, zero random bits.
    let value: u128 = (u128::from(ms) << 80) | (0x7u128 << 76) | (0b10u128 << 62);
    Uuid::from_u128(value)
}

/// Deletes finished commands past their retention in batches; returns the
/// commands deleted (their deliveries, attempts and events go with them).
///
/// # Errors
/// Database errors (the run is retried after its lease).
pub async fn purge_finished(
    pool: &PgPool,
    retention: &RetentionSettings,
    idempotency_key_ttl_s: u64,
) -> sqlx::Result<u64> {
    let shorter = [retention.finished_days, retention.dead_letter_days]
        .into_iter()
        .filter(|d| *d > 0)
        .min();
    let Some(shorter) = shorter else {
        return Ok(0);
    };
    let before =
        uuid_v7_floor(SystemTime::now() - Duration::from_secs(u64::from(shorter) * 86_400));
    let mut after = Uuid::nil();
    let mut total = 0u64;
    loop {
        let (last, deleted): (Option<Uuid>, i64) = sqlx::query_as(PURGE)
            .bind(after)
            .bind(before)
            .bind(BATCH)
            .bind(i32::try_from(retention.finished_days).unwrap_or(i32::MAX))
            .bind(i32::try_from(retention.dead_letter_days).unwrap_or(i32::MAX))
            .bind(idempotency_key_ttl_s as f64)
            .fetch_one(pool)
            .await?;
        total += u64::try_from(deleted).unwrap_or(0);
        match last {
            Some(last) => after = last,
            None => break,
        }
    }
    Ok(total)
}

/// One batch. `$1`/`$2`: the id window (exclusive); `$3`: batch size; `$4`,
/// `$5`: `finished_days`, `dead_letter_days` (0 = keep); `$6`: the
/// idempotency-key TTL, seconds. Returns the last id looked at (NULL when the
/// window is exhausted) and the commands deleted.
const PURGE: &str = "
WITH scanned AS (
    SELECT id FROM commands
     WHERE id > $1 AND id < $2
     ORDER BY id
     LIMIT $3
), bounds AS (
    SELECT CASE WHEN $4 = 0 THEN '-infinity'::timestamptz
                ELSE now() - make_interval(days => $4) END AS finished,
           CASE WHEN $5 = 0 THEN '-infinity'::timestamptz
                ELSE now() - make_interval(days => $5) END AS dead_letter
), doomed AS (
    SELECT c.id
      FROM commands c, bounds b
     WHERE c.id IN (SELECT id FROM scanned)
       AND c.status IN ('succeeded', 'failed')
       AND (c.idempotency_key IS NULL
            OR c.created_at < now() - make_interval(secs => $6))
       AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.command_id = c.id)
       AND CASE
             WHEN NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.command_id = c.id)
               THEN c.updated_at < b.finished
             ELSE EXISTS (SELECT 1 FROM deliveries d
                           WHERE d.command_id = c.id
                             AND ((d.status = 'delivered' AND d.delivered_at < b.finished)
                               OR (d.status = 'dead_lettered' AND d.dead_lettered_at < b.dead_letter)))
           END
       FOR UPDATE OF c SKIP LOCKED
), gone_events AS (
    DELETE FROM command_events e USING doomed WHERE e.command_id = doomed.id
), gone_attempts AS (
    DELETE FROM delivery_attempts a USING deliveries d, doomed
     WHERE a.delivery_id = d.id AND d.command_id = doomed.id
), gone_deliveries AS (
    DELETE FROM deliveries d USING doomed WHERE d.command_id = doomed.id
), gone AS (
    DELETE FROM commands c USING doomed WHERE c.id = doomed.id RETURNING c.id
)
SELECT (SELECT id FROM scanned ORDER BY id DESC LIMIT 1), (SELECT count(*) FROM gone)";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_orders_below_every_id_of_that_millisecond() {
        let now = SystemTime::now();
        let floor = uuid_v7_floor(now);
        assert_eq!(floor.get_version_num(), 7);
        let later = Uuid::now_v7();
        assert!(floor <= later, "{floor} {later}");
        let earlier = uuid_v7_floor(now - Duration::from_secs(1));
        assert!(earlier < floor);
        let ms = |u: Uuid| u.get_timestamp().expect("v7").to_unix();
        assert_eq!(ms(floor).0, ms(later).0.min(ms(floor).0));
    }
}
