-- Maintenance runs: the durable queue of scheduled housekeeping. Every worker
-- process computes the same cron fire times and inserts (task, scheduled_for);
-- the primary key lets exactly one insert win, and a claim with a lease lets
-- exactly one process run it (an abandoned run is claimed again after its lease).
CREATE TABLE maintenance_runs (
    task           text NOT NULL,
    scheduled_for  timestamptz NOT NULL,
    attempts       integer NOT NULL DEFAULT 0,
    locked_until   timestamptz,
    lease_token    uuid,
    done_at        timestamptz,
    affected       bigint,          -- rows changed by the run
    last_error     text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (task, scheduled_for)
);
CREATE INDEX maintenance_runs_pending_idx ON maintenance_runs (scheduled_for)
    WHERE done_at IS NULL;

-- What the tasks scan.
CREATE INDEX commands_idempotency_expiry_idx ON commands (created_at)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX delivery_attempts_body_idx ON delivery_attempts (started_at)
    WHERE response_body IS NOT NULL;
