-- featurepipe schema, version 15: API sources declared in the repo (their tables are created by apply).
CREATE TABLE IF NOT EXISTS feature_store.api_sources (
    name        text PRIMARY KEY,
    definition  jsonb NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
