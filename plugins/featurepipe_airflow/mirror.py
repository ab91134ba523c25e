"""Mirror Airflow task and run state into `feature_store.materialization_jobs`.

Called by the listener in whichever component saw the change (worker, scheduler, API server), so a
task that was killed, timed out or marked failed from the UI still ends its job `failed` with the
reason and the Airflow run id / try.
"""

from __future__ import annotations

import logging

from feature_store import jobs
from featurepipe_airflow.connections import open_store

log = logging.getLogger(__name__)

DAG_ID = "feature_materialization"


def task_failed(
    *, dag_id: str, run_id: str, task_id: str, label: str | None, try_number: int | None, error: str
) -> None:
    """A task of the DAG failed for good: fail its feature (stage tasks) or its job (finish)."""
    if dag_id != DAG_ID or not label:
        return
    parts = label.split("/")
    if len(parts) not in (2, 3):
        return
    tenant_id, group_id = parts[0], parts[1]
    reason = f"Airflow task {task_id} [{label}] of run {run_id} failed (try {try_number}): {error}"
    with open_store(online=False) as store:
        job_id = jobs.find_run_job(store.conn, dag_id=dag_id, run_id=run_id, tenant_id=tenant_id, group_id=group_id)
        if job_id is None:
            return
        if len(parts) == 3:
            changed = jobs.fail_feature(store.conn, job_id, parts[2], reason)
        else:
            changed = jobs.fail_job(store.conn, job_id, reason)
    if changed:
        log.warning("featurepipe: job %s: %s", job_id, reason)


def run_ended(*, dag_id: str, run_id: str, state: str, message: str | None) -> None:
    """A run ended: any job of it still pending or running can no longer finish, so it failed."""
    if dag_id != DAG_ID:
        return
    reason = f"Airflow run {run_id} ended {state} before the job finished" + (f" ({message})" if message else "")
    with open_store(online=False) as store:
        failed = jobs.fail_jobs_of_run(store.conn, dag_id=dag_id, run_id=run_id, reason=reason)
    if failed:
        log.warning("featurepipe: %s unfinished job(s) of run %s marked failed", failed, run_id)
