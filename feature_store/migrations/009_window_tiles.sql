-- featurepipe schema, version 9: sliding-window aggregations from hourly tiles, and Python function features.
--
-- A window feature's hourly run stores one tile per (entity, hour): the partial aggregates of that hour's
-- source rows. Every window value is combined from tiles, so an hourly run reads one hour of source rows
-- plus tiles, never days of source rows. `window_tile_hours` records which hours have been tiled (an hour
-- without rows has no tiles but was computed), so a rerun knows which later windows contain it.
ALTER TABLE feature_store.feature_definitions ADD COLUMN IF NOT EXISTS aggregation jsonb;
ALTER TABLE feature_store.feature_definitions ADD COLUMN IF NOT EXISTS function text;
ALTER TABLE feature_store.feature_definitions ADD COLUMN IF NOT EXISTS function_source text;

CREATE TABLE IF NOT EXISTS feature_store.window_tiles (
    tenant_id         text NOT NULL,
    feature_group_id  text NOT NULL,
    feature_name      text NOT NULL,
    entity_id         text NOT NULL,
    hour_end          timestamptz NOT NULL,
    row_count         bigint NOT NULL,          -- source rows (count)
    value_count       bigint NOT NULL,          -- non-null numeric values (avg's divisor)
    total             numeric,                  -- sum
    low               numeric,                  -- min
    high              numeric,                  -- max
    last_time         timestamptz,              -- last: the latest row's event time and value
    last_value        jsonb,
    hashes            bigint[],                 -- approximate distinct count: the K smallest distinct value hashes
    job_id            bigint,
    -- The key covers what count/sum/avg/min/max combine: an entity's window is an index-only range scan.
    PRIMARY KEY (tenant_id, feature_group_id, feature_name, entity_id, hour_end)
        INCLUDE (row_count, value_count, total, low, high)
);
CREATE INDEX IF NOT EXISTS window_tiles_hour
    ON feature_store.window_tiles (tenant_id, feature_group_id, feature_name, hour_end);

CREATE TABLE IF NOT EXISTS feature_store.window_tile_hours (
    tenant_id         text NOT NULL,
    feature_group_id  text NOT NULL,
    feature_name      text NOT NULL,
    hour_end          timestamptz NOT NULL,
    job_id            bigint,
    computed_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, feature_group_id, feature_name, hour_end)
);
