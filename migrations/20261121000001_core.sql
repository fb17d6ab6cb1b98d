-- Core pipeline: commands, the jobs outbox, deliveries, attempts, signing secrets.

-- A command: one write against a declared integration operation.
CREATE TABLE commands (
    id               uuid PRIMARY KEY,          -- UUIDv7: time-ordered, so ORDER BY id = newest first
    client_id        text NOT NULL,             -- JWT `sub` of the sender
    integration      text NOT NULL,
    operation        text NOT NULL,
    method           text NOT NULL,             -- resolved from config at intake
    path             text NOT NULL,             -- filled, URL-encoded path at intake
    params           jsonb NOT NULL,
    body             jsonb,
    callback_url     text NOT NULL,
    idempotency_key  text,
    request_hash     bytea NOT NULL,            -- SHA-256 of the canonical request, for idempotency
    status           text NOT NULL DEFAULT 'accepted'
                     CHECK (status IN ('accepted', 'in_progress', 'succeeded', 'failed')),
    result           jsonb,                     -- {status_code, body, error?} once the upstream call ended
    last_error       text,                      -- last retryable upstream failure, for operators
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT commands_idempotency_key UNIQUE (client_id, idempotency_key)
);
CREATE INDEX commands_client_id_idx ON commands (client_id, id DESC);

-- One callback delivery per command. Its id is the `webhook-id`, stable across
-- retries and replays. `payload` is the exact signed body, serialised once.
CREATE TABLE deliveries (
    id                uuid PRIMARY KEY,
    command_id        uuid NOT NULL UNIQUE REFERENCES commands (id) ON DELETE CASCADE,
    client_id         text NOT NULL,
    url               text NOT NULL,
    payload           text NOT NULL,
    status            text NOT NULL DEFAULT 'pending'
                      CHECK (status IN ('pending', 'delivered', 'dead_lettered')),
    attempts          integer NOT NULL DEFAULT 0,
    last_error        text,
    dead_letter_reason text,                    -- 'exhausted' | 'gone'
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    delivered_at      timestamptz,
    dead_lettered_at  timestamptz
);
CREATE INDEX deliveries_dead_lettered_idx ON deliveries (dead_lettered_at DESC)
    WHERE status = 'dead_lettered';

-- The delivery audit log: every webhook attempt.
CREATE TABLE delivery_attempts (
    delivery_id      uuid NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    attempt          integer NOT NULL,          -- 1-based, over the delivery's whole life
    trigger          text NOT NULL DEFAULT 'scheduled' CHECK (trigger IN ('scheduled', 'replay')),
    started_at       timestamptz NOT NULL,
    duration_ms      integer NOT NULL,
    response_status  integer,                   -- NULL on a network error
    response_body    text,                      -- first delivery.response_body_limit_bytes
    error            text,                      -- why the attempt failed, NULL on success
    PRIMARY KEY (delivery_id, attempt)
);

-- The outbox. A row is work still to do; finished jobs are deleted so the
-- ready-set index stays small. `run_at` is when the job may next be claimed:
-- claiming moves it to the lease end, so an expired lease is simply a ready job.
CREATE TABLE jobs (
    id            bigserial PRIMARY KEY,
    kind          text NOT NULL CHECK (kind IN ('execute', 'deliver')),
    command_id    uuid NOT NULL REFERENCES commands (id) ON DELETE CASCADE,
    delivery_id   uuid REFERENCES deliveries (id) ON DELETE CASCADE,
    run_at        timestamptz NOT NULL DEFAULT now(),
    attempts      integer NOT NULL DEFAULT 0,  -- claims so far in this run
    locked_until  timestamptz,                 -- lease end while claimed, else NULL
    lease_token   uuid,                        -- the current holder; outcome writes must match it
    last_error    text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    CHECK ((kind = 'deliver') = (delivery_id IS NOT NULL))
);
CREATE INDEX jobs_run_at_idx ON jobs (run_at);
CREATE INDEX jobs_command_id_idx ON jobs (command_id);

-- Per-client Standard Webhooks signing secrets (`whsec_...`). Rotation
-- (issue: delivery guarantees) adds rows with `expires_at` on the old one.
CREATE TABLE signing_secrets (
    id          uuid PRIMARY KEY,
    client_id   text NOT NULL,
    secret      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz                     -- NULL = the current secret
);
CREATE UNIQUE INDEX signing_secrets_current_idx ON signing_secrets (client_id)
    WHERE expires_at IS NULL;

-- Wake idle dispatchers the moment work is inserted (one NOTIFY per statement;
-- Postgres folds identical notifications within a transaction). Retries
-- scheduled for later are found by the dispatcher's timer, not by NOTIFY.
CREATE FUNCTION hookrelay_notify_jobs() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM new_jobs) THEN
        PERFORM pg_notify('hookrelay_jobs', '');
    END IF;
    RETURN NULL;
END;
$$;
CREATE TRIGGER jobs_notify AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION hookrelay_notify_jobs();
