-- Replay: a deliver job knows why it runs, so its attempts are audited as
-- 'scheduled' (the delivery's own run) or 'replay' (an admin re-enqueued a
-- dead letter). A replay is a fresh run: a new job, so the retry schedule
-- starts again, with the delivery's id (the webhook-id) unchanged.
ALTER TABLE jobs
    ADD COLUMN trigger text NOT NULL DEFAULT 'scheduled'
        CHECK (trigger IN ('scheduled', 'replay'));

-- Dead-letter listing filters by client and time.
CREATE INDEX deliveries_dead_lettered_client_idx ON deliveries (client_id, dead_lettered_at DESC)
    WHERE status = 'dead_lettered';
