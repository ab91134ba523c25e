-- featurepipe schema, version 12: per-tenant API keys of the HTTP feature server.
-- Only a SHA-256 of each key is stored (keys are 32 random bytes, so a fast hash is enough to make a
-- leaked table useless); a key sees its own tenant only; revoking keeps the row for the audit.
CREATE TABLE IF NOT EXISTS feature_store.api_keys (
    id          bigserial PRIMARY KEY,
    tenant_id   text NOT NULL REFERENCES feature_store.tenants (id),
    name        text NOT NULL DEFAULT '',
    key_hash    text NOT NULL UNIQUE,
    key_prefix  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
