"""Airflow listener hooks: hand state changes of `feature_materialization` to `mirror`.

Errors are logged, never raised: a listener must not break the component that calls it.
"""

from __future__ import annotations

import logging
from typing import Any

from airflow.listeners import hookimpl
from airflow.sdk import TaskInstanceState

from featurepipe_airflow import mirror

log = logging.getLogger(__name__)


@hookimpl
def on_task_instance_failed(previous_state: Any, task_instance: Any, error: Any) -> None:
    if getattr(task_instance, "dag_id", None) != mirror.DAG_ID:
        return
    if _state(task_instance) == TaskInstanceState.UP_FOR_RETRY.value:
        return  # Airflow will try again; the job is not over (the stage noted the cause)
    try:
        mirror.task_failed(
            dag_id=task_instance.dag_id,
            run_id=task_instance.run_id,
            task_id=task_instance.task_id,
            label=getattr(task_instance, "rendered_map_index", None),
            try_number=getattr(task_instance, "try_number", None),
            error=str(error) if error else "unknown error",
        )
    except Exception:
        log.exception("featurepipe listener could not record the failure of %s", task_instance)


@hookimpl
def on_dag_run_failed(dag_run: Any, msg: str) -> None:
    _run_ended(dag_run, "failed", msg)


@hookimpl
def on_dag_run_success(dag_run: Any, msg: str) -> None:
    _run_ended(dag_run, "successfully", msg)


def _run_ended(dag_run: Any, state: str, msg: str | None) -> None:
    if getattr(dag_run, "dag_id", None) != mirror.DAG_ID:
        return
    try:
        mirror.run_ended(dag_id=dag_run.dag_id, run_id=dag_run.run_id, state=state, message=msg)
    except Exception:
        log.exception("featurepipe listener could not mirror the end of run %s", dag_run)


def _state(task_instance: Any) -> str | None:
    """The task instance's state as its plain value ('up_for_retry').

    Workers pass the task SDK's TaskInstanceState, whose str() is 'TaskInstanceState.UP_FOR_RETRY';
    the scheduler and API server pass airflow.utils.state's, whose str() is the value: compare values.
    """
    state = getattr(task_instance, "state", None)
    if state is None:
        return None
    return str(getattr(state, "value", state))
