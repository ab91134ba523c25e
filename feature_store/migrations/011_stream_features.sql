-- featurepipe schema, version 11: the event -> feature mapping of stream features, declared in the repo
-- (`stream: {event, entity, op, field, alpha, default}`), kept with the feature's definition.
ALTER TABLE feature_store.feature_definitions ADD COLUMN IF NOT EXISTS stream jsonb;
