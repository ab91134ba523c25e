-- featurepipe schema, version 2: missed deadlines (SLAs) reported by the orchestrator.
CREATE TABLE feature_store.deadline_misses (
    id             bigserial PRIMARY KEY,
    dag_id         text NOT NULL,
    run_id         text NOT NULL,
    deadline_time  timestamptz,
    detected_at    timestamptz NOT NULL DEFAULT now(),
    message        text NOT NULL
);
CREATE INDEX deadline_misses_recent ON feature_store.deadline_misses (detected_at DESC);
