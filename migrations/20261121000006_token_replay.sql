-- Token replay protection (auth.require_jti): the jti of every token that
-- made a state-changing request (POST), remembered until the token expires
-- (plus the leeway). A second POST with the same client id and jti conflicts
-- on the primary key and is refused as a replay (401). The maintenance task
-- purge_token_jtis deletes rows whose expires_at has passed.
CREATE TABLE token_jtis (
    client_id   text NOT NULL,
    jti         text NOT NULL,
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (client_id, jti)
);
CREATE INDEX token_jtis_expires_at_idx ON token_jtis (expires_at);
