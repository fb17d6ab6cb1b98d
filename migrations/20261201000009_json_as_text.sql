-- JSON kept as text (issue: no accepted command lost to its own seal).
--
-- `params`, `body` and `result` were jsonb. jsonb re-writes numbers
-- (`1.2345678901234567e-7` comes back as `0.00000012345678901234567`,
-- `1.7976931348623157e308` as a 309-digit integer that serde_json cannot read
-- back into an f64, `-0.0` as `0.0`), so a seal computed over the request could
-- fail over the row read back, and one stored number could fail the decode of
-- every job claimed with it. As `text` the exact bytes a client sent (and a
-- vendor answered) are stored, sealed, sent on and read back; hookrelay never
-- looks inside them in SQL.
--
-- `result` is written by hookrelay as `{"status_code":N|null,...}`, status
-- first (src/integration.rs, `UpstreamResult`), so the event trigger reads the
-- status code with a pattern instead of parsing a vendor's body in SQL (where
-- a lone `\ud800` escape or similar could fail the whole outcome write).
ALTER TABLE commands
    ALTER COLUMN params TYPE text USING params::text,
    ALTER COLUMN body TYPE text USING body::text,
    ALTER COLUMN result TYPE text USING result::text;

CREATE OR REPLACE FUNCTION hookrelay_result_status_code(result text) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT (substring(result FROM '^\{"status_code":\s*([0-9]{1,3})[,}]'))::integer
$$;

CREATE OR REPLACE FUNCTION hookrelay_command_updated() RETURNS trigger LANGUAGE plpgsql AS $$
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
                   THEN jsonb_build_object('status_code', hookrelay_result_status_code(c.result))
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
