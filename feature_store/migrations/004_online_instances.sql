-- featurepipe schema, version 4: which online-store server the last consistency check saw.
-- When the server's id changes (a restart that may have lost data), `check_online` reconciles the
-- online store from the offline store's latest valid values.
CREATE TABLE feature_store.online_instances (
    redis_prefix   text PRIMARY KEY,
    instance_id    text NOT NULL,
    checked_at     timestamptz NOT NULL DEFAULT now()
);
