"""Mirror Airflow task and run state into `feature_store.materialization_jobs`.

Called by the listener in whichever component saw the change (worker, scheduler, API server), so a
task that was killed, timed out or marked failed from the UI still ends its job `failed` with the
reason and the Airflow run id / try.
"""

from __future__ import annotations

import logging

from featurepipe_airflow.fanout import shard_of
from featurepipe_airflow.hooks import open_store

log = logging.getLogger(__name__)

DAG_ID = "feature_materialization"


def task_failed(
    *, dag_id: str, run_id: str, task_id: str, label: str | None, try_number: int | None, error: str
) -> None:
    """A task of the DAG failed for good: fail its features (stage tasks) or its jobs (finish).

    Labels name one job (`tenant/group[/feature]`) or a tenant shard (`group[/feature]/shard N of M`).
    """
    if dag_id != DAG_ID or not label:
        return
    parts = label.split("/")
    shard = shard_of(label)
    if shard is not None:
        group_id, feature = parts[0], (parts[1] if len(parts) == 3 else None)
    elif len(parts) in (2, 3):
        group_id, feature = parts[1], (parts[2] if len(parts) == 3 else None)
    else:
        return
    reason = f"Airflow task {task_id} [{label}] of run {run_id} failed (try {try_number}): {error}"
    with open_store() as store:
        runs = store.runs
        if shard is not None:
            job_ids = runs.find_shard(dag_id=dag_id, run_id=run_id, group_id=group_id, shard=shard)
        else:
            found = runs.find_job(dag_id=dag_id, run_id=run_id, tenant_id=parts[0], group_id=group_id)
            job_ids = [found] if found is not None else []
        changed = [
            job_id
            for job_id in job_ids
            if (runs.fail_feature(job_id, feature, reason) if feature is not None else runs.fail_job(job_id, reason))
        ]
    if changed:
        log.warning("featurepipe: job(s) %s: %s", ", ".join(map(str, changed)), reason)


def run_ended(*, dag_id: str, run_id: str, state: str, message: str | None) -> None:
    """A run ended: any job of it still pending or running can no longer finish, so it failed."""
    if dag_id != DAG_ID:
        return
    reason = f"Airflow run {run_id} ended {state} before the job finished" + (f" ({message})" if message else "")
    with open_store() as store:
        failed = store.runs.fail_run(dag_id=dag_id, run_id=run_id, reason=reason)
    if failed:
        log.warning("featurepipe: %s unfinished job(s) of run %s marked failed", failed, run_id)
