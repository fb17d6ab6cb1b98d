-- Signing secrets are sealed at rest from now on (XChaCha20-Poly1305 under
-- `security.signing_key_encryption_keys`, see src/security.rs): the `secret`
-- column holds "{key_id}:{base64(nonce || ciphertext)}", never a `whsec_` value.
--
-- Any existing rows are plaintext. hookrelay has no deployments yet, so they
-- are deleted rather than sealed in place (SQL cannot seal them: the key lives
-- in the configuration). A client whose secret is deleted gets a new one on
-- first use, as before.
DELETE FROM signing_secrets;

-- Refuse anything that is not in the sealed format, so a plaintext secret can
-- never be stored by mistake. The key id rules match the configuration check.
ALTER TABLE signing_secrets
    ADD CONSTRAINT signing_secrets_sealed
    CHECK (secret ~ '^[A-Za-z0-9._-]{1,32}:[A-Za-z0-9+/]+={0,2}$');

COMMENT ON COLUMN signing_secrets.secret IS
    'sealed: {key_id}:{base64(24-byte nonce || XChaCha20-Poly1305 ciphertext)}, associated data bound to client_id';

-- Every callback claim reads a client's active secrets; with rotation a client
-- has several rows, and the partial unique index only covers the current one.
CREATE INDEX signing_secrets_client_id_idx ON signing_secrets (client_id, created_at DESC);
