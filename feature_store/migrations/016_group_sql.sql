-- featurepipe schema, version 16: one transformation SQL per feature group, for its batch features
-- without one of their own (each reads its column of the group's SQL); the repo checks that every
-- batch feature has either, which a CHECK of one table cannot.
ALTER TABLE feature_store.feature_groups ADD COLUMN IF NOT EXISTS transformation_sql text;
ALTER TABLE feature_store.feature_definitions DROP CONSTRAINT IF EXISTS feature_definitions_check;
