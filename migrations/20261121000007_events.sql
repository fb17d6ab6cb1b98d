-- The event log: every status change of a command and of its callback, in a
-- durable, gap-free order, for the SSE push stream (`GET /v1/events`,
-- `GET /v1/commands/{id}/events`, see src/events.rs and docs/events.md).
--
-- Rows are written only by the statement-level triggers below, in the same
-- transaction as the state change they describe: an event exists exactly when
-- its change committed, and the Rust write paths are unchanged. A batched
-- outcome statement (one UPDATE for many rows) costs one trigger call.
--
-- Order: `id` (bigserial) is NOT commit order — a transaction holding id 10
-- may commit after id 11 was read. Readers therefore order and page by
-- `(xid, id)` and read only events with `xid < pg_snapshot_xmin(pg_current_snapshot())`:
-- every transaction below that xmin has ended, so no event can later appear
-- behind a reader's cursor. The SSE event id is "{xid}-{id}".
CREATE TABLE command_events (
    xid         xid8 NOT NULL DEFAULT pg_current_xact_id(),  -- writing (top-level) transaction
    id          bigserial NOT NULL,
    command_id  uuid NOT NULL,        -- no foreign key: the log outlives nothing, costs no lookup
    client_id   text NOT NULL,        -- the command's owner, for per-client streams
    type        text NOT NULL CHECK (type IN (
                    'command.accepted', 'command.in_progress', 'command.succeeded',
                    'command.failed', 'callback.delivered', 'callback.dead_lettered',
                    'callback.replayed')),
    data        jsonb NOT NULL,       -- the SSE `data:` document
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (xid, id)             -- the read order of every stream
);
-- `GET /v1/commands/{id}/events` (a command has a handful of events).
CREATE INDEX command_events_command_id_idx ON command_events (command_id);
-- Retention (`maintenance.event_retention_s`): rows are appended in time
-- order, so a BRIN index finds old ones at almost no write cost.
CREATE INDEX command_events_created_at_idx ON command_events USING brin (created_at);

COMMENT ON TABLE command_events IS
    'Status changes of commands and callbacks, written by triggers; read in (xid, id) order below the snapshot xmin';

-- commands INSERT → command.accepted
CREATE FUNCTION hookrelay_command_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
BEGIN
    INSERT INTO command_events (command_id, client_id, type, data)
    SELECT c.id, c.client_id, 'command.accepted',
           jsonb_build_object('command_id', c.id, 'client_id', c.client_id,
                              'type', 'command.accepted', 'status', c.status,
                              'integration', c.integration, 'operation', c.operation,
                              'occurred_at', c.created_at)
      FROM new_commands c
     ORDER BY c.id;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN
        PERFORM pg_notify('hookrelay_events', '');
    END IF;
    RETURN NULL;
END;
$$;
CREATE TRIGGER commands_events_insert AFTER INSERT ON commands
    REFERENCING NEW TABLE AS new_commands
    FOR EACH STATEMENT EXECUTE FUNCTION hookrelay_command_inserted();

-- commands UPDATE with a status change → command.{in_progress,succeeded,failed}.
-- Updates that leave the status alone (retry bookkeeping, maintenance) emit nothing.
CREATE FUNCTION hookrelay_command_updated() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
BEGIN
    INSERT INTO command_events (command_id, client_id, type, data)
    SELECT c.id, c.client_id, 'command.' || c.status,
           jsonb_build_object('command_id', c.id, 'client_id', c.client_id,
                              'type', 'command.' || c.status, 'status', c.status,
                              'integration', c.integration, 'operation', c.operation,
                              'occurred_at', c.updated_at)
           || CASE WHEN c.status IN ('succeeded', 'failed')
                   THEN jsonb_build_object('status_code', c.result -> 'status_code')
                   ELSE '{}'::jsonb END
      FROM new_commands c
      JOIN old_commands o ON o.id = c.id
     WHERE c.status IS DISTINCT FROM o.status
     ORDER BY c.id;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN
        PERFORM pg_notify('hookrelay_events', '');
    END IF;
    RETURN NULL;
END;
$$;
CREATE TRIGGER commands_events_update AFTER UPDATE ON commands
    REFERENCING OLD TABLE AS old_commands NEW TABLE AS new_commands
    FOR EACH STATEMENT EXECUTE FUNCTION hookrelay_command_updated();

-- deliveries UPDATE with a status change → callback.delivered,
-- callback.dead_lettered, or callback.replayed (a dead letter back to pending).
-- A delivery's creation (pending) is announced by command.succeeded/failed.
CREATE FUNCTION hookrelay_delivery_updated() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
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
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN
        PERFORM pg_notify('hookrelay_events', '');
    END IF;
    RETURN NULL;
END;
$$;
CREATE TRIGGER deliveries_events_update AFTER UPDATE ON deliveries
    REFERENCING OLD TABLE AS old_deliveries NEW TABLE AS new_deliveries
    FOR EACH STATEMENT EXECUTE FUNCTION hookrelay_delivery_updated();
