-- Sealed outbox jobs (issue #6, item 2). A job row only points at the rows it
-- acts on, so the MAC ("seal") lives on those rows and covers exactly what the
-- job will act on (src/seal.rs):
--   commands.seal   : HMAC-SHA256 over kind 'execute', the command id, client,
--                     integration, operation, method, path, params, body,
--                     callback URL and idempotency key. Written at intake; set
--                     to NULL when the command finishes, so an execute job can
--                     never verify against a finished command again.
--   deliveries.seal : HMAC-SHA256 over kind 'deliver', the delivery id, command
--                     id, client, callback URL and payload. Written with the
--                     delivery; kept for replays (a replay inserts a job that
--                     points at the same, still sealed, row).
-- Format: "{key_id}:{base64(mac)}" (key from security.job_mac_keys). NULL =
-- unsealed: a job whose row is unsealed is quarantined, never executed. Rows
-- written before this migration are unsealed; drain the outbox before
-- upgrading (docs/security.md, "Sealed outbox jobs").
ALTER TABLE commands ADD COLUMN seal text;
ALTER TABLE deliveries ADD COLUMN seal text;

COMMENT ON COLUMN commands.seal IS
    'execute-job MAC: {key_id}:{base64(HMAC-SHA256)}; NULL once the command finished';
COMMENT ON COLUMN deliveries.seal IS
    'deliver-job MAC: {key_id}:{base64(HMAC-SHA256)}';
COMMENT ON COLUMN deliveries.dead_letter_reason IS
    '''exhausted'' | ''gone'' | ''abandoned'' | ''integrity'' (failed seal verification; not replayable)';

-- One live execute job per command and one live deliver job per delivery: a
-- copied job row is refused by the database, so two holders can never run the
-- same command (or the same delivery) at once. Any duplicates that exist
-- already are removed first (the oldest job of each stays).
DELETE FROM jobs j
 USING jobs k
 WHERE j.kind = k.kind
   AND j.command_id = k.command_id
   AND j.delivery_id IS NOT DISTINCT FROM k.delivery_id
   AND j.id > k.id;
CREATE UNIQUE INDEX jobs_one_execute_per_command ON jobs (command_id) WHERE kind = 'execute';
CREATE UNIQUE INDEX jobs_one_deliver_per_delivery ON jobs (delivery_id) WHERE kind = 'deliver';
