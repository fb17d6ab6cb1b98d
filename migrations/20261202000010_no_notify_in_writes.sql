-- No NOTIFY inside the durable write transactions.
--
-- Postgres serialises the commits of every transaction that sent a NOTIFY: a
-- database-wide lock is held from the notification queue insert through the
-- commit's WAL flush, so notifying writers cannot share a group commit. Every
-- hot-path write (intake, claim, outcome, attempt) used to notify through the
-- triggers below.
--
-- From now on the writers wake their own process's tasks directly after the
-- commit and tell other processes with a coalesced `SELECT pg_notify(...)` of
-- their own, outside the write (src/outbox/signal.rs). The channels
-- (`hookrelay_jobs`, `hookrelay_events`) and the event rows are unchanged:
-- the functions below are those of 0007/0008/0009 without `pg_notify`.

DROP TRIGGER jobs_notify ON jobs;
DROP FUNCTION hookrelay_notify_jobs();

CREATE OR REPLACE FUNCTION hookrelay_command_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO command_events (command_id, client_id, type, data)
    SELECT c.id, c.client_id, 'command.accepted',
           jsonb_build_object('command_id', c.id, 'client_id', c.client_id,
                              'type', 'command.accepted', 'status', c.status,
                              'integration', c.integration, 'operation', c.operation,
                              'occurred_at', c.created_at)
      FROM new_commands c
     ORDER BY c.id;
    RETURN NULL;
END;
$$;

CREATE OR REPLACE FUNCTION hookrelay_command_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO command_events (command_id, client_id, type, data)
    SELECT c.id, c.client_id, 'command.' || c.status,
           jsonb_build_object('command_id', c.id, 'client_id', c.client_id,
                              'type', 'command.' || c.status, 'status', c.status,
                              'integration', c.integration, 'operation', c.operation,
                              'occurred_at', c.updated_at)
           || CASE WHEN c.status IN ('succeeded', 'failed')
                   THEN jsonb_build_object('status_code', hookrelay_result_status_code(c.result))
                   ELSE '{}'::jsonb END
      FROM new_commands c
      JOIN old_commands o ON o.id = c.id
     WHERE c.status IS DISTINCT FROM o.status
     ORDER BY c.id;
    RETURN NULL;
END;
$$;

CREATE OR REPLACE FUNCTION hookrelay_delivery_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO command_events (command_id, client_id, type, data)
    SELECT d.command_id, d.client_id, e.type,
           jsonb_build_object('command_id', d.command_id, 'client_id', d.client_id,
                              'type', e.type, 'status', c.status,
                              'integration', c.integration, 'operation', c.operation,
                              'occurred_at', d.updated_at,
                              'callback', jsonb_build_object(
                                  'status', d.status, 'attempts', d.attempts,
                                  'webhook_id', d.id, 'reason', d.dead_letter_reason))
      FROM new_deliveries d
      JOIN old_deliveries o ON o.id = d.id
      JOIN commands c ON c.id = d.command_id
     CROSS JOIN LATERAL (SELECT CASE d.status
                                    WHEN 'delivered' THEN 'callback.delivered'
                                    WHEN 'dead_lettered' THEN 'callback.dead_lettered'
                                    ELSE 'callback.replayed' END AS type) e
     WHERE d.status IS DISTINCT FROM o.status
       AND (d.status <> 'pending' OR o.status = 'dead_lettered')
     ORDER BY d.command_id;
    RETURN NULL;
END;
$$;

CREATE OR REPLACE FUNCTION hookrelay_delivery_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO command_events (command_id, client_id, type, data)
    SELECT d.command_id, d.client_id, 'callback.dead_lettered',
           jsonb_build_object('command_id', d.command_id, 'client_id', d.client_id,
                              'type', 'callback.dead_lettered', 'status', c.status,
                              'integration', c.integration, 'operation', c.operation,
                              'occurred_at', d.updated_at,
                              'callback', jsonb_build_object(
                                  'status', d.status, 'attempts', d.attempts,
                                  'webhook_id', d.id, 'reason', d.dead_letter_reason))
      FROM new_deliveries d
      JOIN commands c ON c.id = d.command_id
     WHERE d.status = 'dead_lettered'
     ORDER BY d.command_id;
    RETURN NULL;
END;
$$;
