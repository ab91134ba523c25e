"""Deadline-miss callback: runs in the triggerer when a `feature_materialization` run misses its deadline."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Any

log = logging.getLogger(__name__)


async def record_deadline_miss(context: dict[str, Any] | None = None, **_: Any) -> str:
    """Log the miss and record it in `feature_store.deadline_misses`, where the plugin view shows it."""
    context = context or {}
    dag_run = context.get("dag_run") or {}
    deadline = context.get("deadline") or {}
    dag_id = str(dag_run.get("dag_id", "feature_materialization"))
    run_id = str(dag_run.get("dag_run_id") or dag_run.get("run_id") or "unknown")
    deadline_time = _parse(deadline.get("deadline_time"))
    message = (
        f"run {run_id} of {dag_id} had not finished by its deadline {deadline_time or '?'}"
        f" (state {dag_run.get('state', '?')})"
    )
    log.warning("%s", message)
    await asyncio.to_thread(_record, dag_id, run_id, deadline_time, message)
    return message


def _record(dag_id: str, run_id: str, deadline_time: datetime | None, message: str) -> None:
    from featurepipe_airflow.hooks import open_store

    with open_store() as store:
        store.record_deadline_miss(dag_id=dag_id, run_id=run_id, deadline_time=deadline_time, message=message)


def _parse(value: object) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str) and value:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    return None
