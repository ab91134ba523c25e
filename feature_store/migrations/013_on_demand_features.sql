-- featurepipe schema, version 13: on-demand features' function and inputs, kept with their definition
-- (`on_demand: {function: 'module:function', inputs: [group:feature, ...], request_data: [...]}`).
ALTER TABLE feature_store.feature_definitions ADD COLUMN IF NOT EXISTS on_demand jsonb;
