-- featurepipe schema, version 10: per-window statistics of every feature, stored by the validate stage.
--
-- One row per (tenant, group, feature, window): a rerun of the window replaces it. Value statistics
-- cover the rows that passed validation; null and quarantine rates cover every staged row.
CREATE TABLE IF NOT EXISTS feature_store.feature_statistics (
    tenant_id          text NOT NULL,
    feature_group_id   text NOT NULL,
    feature_name       text NOT NULL,
    window_start       timestamptz NOT NULL,
    window_end         timestamptz NOT NULL,
    job_id             bigint NOT NULL,
    value_type         text NOT NULL,
    rows_total         bigint NOT NULL,
    rows_null          bigint NOT NULL,
    rows_quarantined   bigint NOT NULL,
    rows_valid         bigint NOT NULL,
    min_value          double precision,
    max_value          double precision,
    mean_value         double precision,
    stddev_value       double precision,
    percentiles        jsonb,
    distinct_count     bigint NOT NULL,
    top_values         jsonb,
    bin_counts         bigint[] NOT NULL,
    drift_psi          double precision,
    baseline_windows   integer NOT NULL DEFAULT 0,
    computed_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, feature_group_id, feature_name, window_start, window_end)
);
CREATE INDEX IF NOT EXISTS feature_statistics_recent
    ON feature_store.feature_statistics (tenant_id, feature_group_id, feature_name, window_end DESC);

-- The bins a feature's drift is measured in, fixed by its first window with values: the deciles of a
-- number, the top values of a string or bool. Every window counts its values in the same bins, so
-- a window and its baseline compare exactly (ties and all).
CREATE TABLE IF NOT EXISTS feature_store.feature_statistics_bins (
    tenant_id          text NOT NULL,
    feature_group_id   text NOT NULL,
    feature_name       text NOT NULL,
    edges              double precision[],
    categories         jsonb,
    created_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, feature_group_id, feature_name),
    CHECK ((edges IS NULL) <> (categories IS NULL))
);
