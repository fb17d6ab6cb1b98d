-- A delivery can be created already dead-lettered: the quarantine of an
-- execute job whose seal failed (reason `integrity`) inserts it that way, so
-- it never passes through the UPDATE trigger of 0007. Announce it as
-- callback.dead_lettered like every other dead letter. Statement-level, so the
-- dispatcher's batched inserts of pending deliveries cost one filtered scan of
-- the transition table.
CREATE FUNCTION hookrelay_delivery_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
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
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN
        PERFORM pg_notify('hookrelay_events', '');
    END IF;
    RETURN NULL;
END;
$$;
CREATE TRIGGER deliveries_events_insert AFTER INSERT ON deliveries
    REFERENCING NEW TABLE AS new_deliveries
    FOR EACH STATEMENT EXECUTE FUNCTION hookrelay_delivery_inserted();

-- A client's catch-up (`GET /v1/events` resumed from an old Last-Event-ID)
-- reads its own events in (xid, id) order: without this index it would walk
-- every client's events since its position.
CREATE INDEX command_events_client_idx ON command_events (client_id, xid, id);
