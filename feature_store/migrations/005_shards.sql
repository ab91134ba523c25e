-- featurepipe schema, version 5: tenant shards of a run, and jobs that finish as they go.
-- `shard` is the run's tenant shard a job belongs to when the DAG groups tenants (its tasks are
-- labelled `group/feature/shard N of M`), so a failure of a shard's task reaches its jobs.
-- `finish_claimed_at` is set by the one write task that found all of a job's features done and
-- publishes it right away (the mapped finish tasks at the end of the run then find it finished).
ALTER TABLE feature_store.materialization_jobs
    ADD COLUMN shard integer,
    ADD COLUMN finish_claimed_at timestamptz;
CREATE INDEX materialization_jobs_run_shard
    ON feature_store.materialization_jobs (dag_id, run_id, feature_group_id, shard)
    WHERE run_id IS NOT NULL;
