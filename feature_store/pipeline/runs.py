"""What an orchestrator tells the feature store about its runs: a task that failed for good, a run that ended.

The Airflow listener reports through this (via `FeatureStore.runs`), so a task that was killed,
timed out or marked failed from the UI still ends its feature or job `failed` with the reason.
"""

from __future__ import annotations

import psycopg

from feature_store.pipeline import jobs
from feature_store.pipeline.staging import drop_staging


class RunLedger:
    """The jobs of orchestrator runs, found by run and by tenant shard, and failed from outside."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self._conn = conn

    def find_job(self, *, dag_id: str, run_id: str, tenant_id: str, group_id: str) -> int | None:
        """The job the run created for (tenant, group), if any."""
        return jobs.find_run_job(self._conn, dag_id=dag_id, run_id=run_id, tenant_id=tenant_id, group_id=group_id)

    def find_shard(self, *, dag_id: str, run_id: str, group_id: str, shard: int) -> list[int]:
        """The jobs of one tenant shard of the run."""
        return jobs.find_shard_jobs(self._conn, dag_id=dag_id, run_id=run_id, group_id=group_id, shard=shard)

    def fail_feature(self, job_id: int, feature: str, reason: str) -> bool:
        """A feature's task failed for good; a feature already written, or already failed, keeps that."""
        return jobs.fail_feature(self._conn, job_id, feature, reason)

    def fail_job(self, job_id: int, reason: str) -> bool:
        """A job's finish task failed for good; a finished job keeps its outcome."""
        return jobs.fail_job(self._conn, job_id, reason)

    def fail_run(self, *, dag_id: str, run_id: str, reason: str) -> int:
        """The run ended: its unfinished jobs fail, and every job's staging goes. Returns the jobs failed."""
        failed = jobs.fail_jobs_of_run(self._conn, dag_id=dag_id, run_id=run_id, reason=reason)
        for job_id in jobs.run_jobs(self._conn, dag_id=dag_id, run_id=run_id):
            drop_staging(self._conn, job_id)
        return failed
