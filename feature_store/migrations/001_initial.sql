-- featurepipe schema, version 1: registry, jobs, offline store, quarantine.
-- Applied by `feature-store init` inside one transaction; see feature_store/schema.py.

CREATE SCHEMA IF NOT EXISTS feature_store;
-- One unlogged table per in-flight job lives here (see feature_store/staging.py).
CREATE SCHEMA IF NOT EXISTS feature_store_staging;

CREATE TABLE feature_store.tenants (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    status      text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'inactive')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE feature_store.feature_groups (
    id                        text PRIMARY KEY,
    entity_type               text NOT NULL,
    description               text NOT NULL DEFAULT '',
    online_enabled            boolean NOT NULL DEFAULT true,
    offline_enabled           boolean NOT NULL DEFAULT true,
    ttl_seconds               integer CHECK (ttl_seconds > 0),
    status                    text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'inactive')),
    max_failure_rate          double precision NOT NULL DEFAULT 0.05 CHECK (max_failure_rate BETWEEN 0 AND 1),
    freshness_target_seconds  integer CHECK (freshness_target_seconds > 0),
    created_at                timestamptz NOT NULL DEFAULT now(),
    updated_at                timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE feature_store.feature_definitions (
    feature_group_id    text NOT NULL REFERENCES feature_store.feature_groups (id) ON DELETE CASCADE,
    name                text NOT NULL,
    description         text NOT NULL DEFAULT '',
    source_type         text NOT NULL CHECK (source_type IN ('batch', 'stream', 'on_demand')),
    value_type          text NOT NULL CHECK (value_type IN ('int64', 'float64', 'string', 'bool')),
    transformation_sql  text,
    validation_rules    jsonb NOT NULL DEFAULT '{}',
    status              text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'inactive')),
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (feature_group_id, name),
    CHECK (source_type <> 'batch' OR transformation_sql IS NOT NULL)
);

-- One row per (tenant, feature group, time window, dag run); mirrors Airflow's task and run state.
CREATE TABLE feature_store.materialization_jobs (
    id                bigserial PRIMARY KEY,
    tenant_id         text NOT NULL REFERENCES feature_store.tenants (id),
    feature_group_id  text NOT NULL REFERENCES feature_store.feature_groups (id),
    job_type          text NOT NULL CHECK (job_type IN ('full', 'incremental')),
    start_time        timestamptz NOT NULL,
    end_time          timestamptz NOT NULL,
    status            text NOT NULL DEFAULT 'pending'
                      CHECK (status IN ('pending', 'running', 'completed', 'failed')),
    progress          double precision NOT NULL DEFAULT 0 CHECK (progress BETWEEN 0 AND 1),
    error_message     text,
    rows_processed    bigint NOT NULL DEFAULT 0,
    rows_failed       bigint NOT NULL DEFAULT 0,
    duration_ms       bigint,
    created_at        timestamptz NOT NULL DEFAULT now(),
    started_at        timestamptz,
    completed_at      timestamptz,
    dag_id            text,
    run_id            text,
    try_number        integer,
    write_online      boolean NOT NULL DEFAULT true,
    write_offline     boolean NOT NULL DEFAULT true,
    features_total    integer NOT NULL DEFAULT 0,
    CHECK (start_time < end_time)
);
-- A retried planning task finds its jobs again instead of creating new ones.
CREATE UNIQUE INDEX materialization_jobs_run_key
    ON feature_store.materialization_jobs (dag_id, run_id, tenant_id, feature_group_id)
    WHERE run_id IS NOT NULL;
CREATE INDEX materialization_jobs_recent ON feature_store.materialization_jobs (created_at DESC);
CREATE INDEX materialization_jobs_group ON feature_store.materialization_jobs
    (tenant_id, feature_group_id, status, completed_at DESC);

-- Per-feature progress of a job: what each transform/validate/write task did.
CREATE TABLE feature_store.materialization_job_features (
    job_id          bigint NOT NULL REFERENCES feature_store.materialization_jobs (id) ON DELETE CASCADE,
    feature_name    text NOT NULL,
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'transformed', 'validated', 'written', 'failed')),
    rows_processed  bigint NOT NULL DEFAULT 0,
    rows_failed     bigint NOT NULL DEFAULT 0,
    error_message   text,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, feature_name)
);

-- Offline store: full history, one row per (tenant, feature, entity, event time).
CREATE TABLE feature_store.feature_values (
    tenant_id         text NOT NULL,
    feature_group_id  text NOT NULL,
    feature_name      text NOT NULL,
    entity_id         text NOT NULL,
    event_time        timestamptz NOT NULL,
    value             jsonb,
    job_id            bigint,
    created_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, feature_group_id, feature_name, entity_id, event_time)
);
-- Window replacement deletes by (tenant, feature, event-time range).
CREATE INDEX feature_values_window
    ON feature_store.feature_values (tenant_id, feature_group_id, feature_name, event_time);

-- Rows a validation rule rejected, with the rule and a readable reason.
CREATE TABLE feature_store.quarantined_rows (
    id                bigserial PRIMARY KEY,
    job_id            bigint NOT NULL REFERENCES feature_store.materialization_jobs (id) ON DELETE CASCADE,
    tenant_id         text NOT NULL,
    feature_group_id  text NOT NULL,
    feature_name      text NOT NULL,
    entity_id         text,
    event_time        timestamptz,
    value             jsonb,
    rule              text NOT NULL,
    reason            text NOT NULL,
    quarantined_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX quarantined_rows_job ON feature_store.quarantined_rows (job_id, feature_name);
CREATE INDEX quarantined_rows_recent ON feature_store.quarantined_rows (quarantined_at DESC);

-- The role transformation SQL runs as: it may read the declared source schemas (granted by `apply`)
-- and insert into staging, nothing else. Roles are cluster-wide, so create it only once.
DO $$
BEGIN
    CREATE ROLE featurepipe_transform NOLOGIN NOSUPERUSER NOBYPASSRLS;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END
$$;
GRANT featurepipe_transform TO CURRENT_USER;
GRANT USAGE ON SCHEMA feature_store_staging TO featurepipe_transform;
