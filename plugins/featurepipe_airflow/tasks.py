"""Bodies of the `feature_materialization` tasks: each opens the store, calls one library stage, returns ids/counts."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any, TypedDict

import redis
from airflow.sdk.exceptions import AirflowFailException

from feature_store import ConnectionFailedError, FeatureStoreError, JobType, RunInfo, TimeWindow
from featurepipe_airflow.connections import open_store

log = logging.getLogger(__name__)


class WorkItem(TypedDict):
    """One batch feature of one job: what a mapped transform/validate/write task works on."""

    job_id: int
    feature: str
    label: str


class JobItem(TypedDict):
    """One job of the run: what a mapped finish task works on."""

    job_id: int
    label: str
    features: list[str]


def resolve_window(context: Any) -> TimeWindow:
    """The run's window: explicit start/end params, else the data interval, else the last complete hour.

    A manual run of an hourly DAG has a zero-width data interval, so it takes the hour before it.
    """
    params = context["params"]
    if params.get("start") or params.get("end"):
        if not (params.get("start") and params.get("end")):
            raise ValueError("params start and end must be given together (ISO 8601 with time zone)")
        return TimeWindow(start=_parse(params["start"], "start"), end=_parse(params["end"], "end"))
    start, end = context.get("data_interval_start"), context.get("data_interval_end")
    if start is not None and end is not None and start < end:
        return TimeWindow(start=start, end=end)
    anchor = end or context.get("logical_date") or datetime.now(timezone.utc)
    return TimeWindow.last_complete_hour(anchor)


def _parse(value: str, name: str) -> datetime:
    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError(f"param {name}={value!r} has no time zone; add Z or +00:00")
    return parsed


def run_info(context: Any) -> RunInfo:
    ti = context["ti"]
    return RunInfo(dag_id=ti.dag_id, run_id=ti.run_id, try_number=ti.try_number)


def plan(context: Any) -> list[JobItem]:
    """Create one pending job per active tenant x group and list the batch features to run."""
    params = context["params"]
    try:
        window = resolve_window(context)
    except ValueError as exc:  # bad params: retrying cannot help
        raise AirflowFailException(f"invalid window for this run: {exc}") from exc
    with open_store(online=False) as store, _failing_fast():
        planned = store.pipeline(online=False).plan(
            window=window,
            mode=JobType(params["mode"]),
            write_online=bool(params["write_online"]),
            write_offline=bool(params["write_offline"]),
            tenant_ids=params.get("tenant_ids") or None,
            group_ids=params.get("feature_group_ids") or None,
            run=run_info(context),
            overwrite_online=params.get("overwrite_online") or None,
        )
    return [
        {"job_id": p.job_id, "label": f"{p.tenant_id}/{p.feature_group_id}", "features": list(p.features)}
        for p in planned
    ]


def work_items(jobs: list[JobItem]) -> list[WorkItem]:
    """One item per (job, batch feature), labelled `tenant/group/feature`."""
    return [
        {"job_id": job["job_id"], "feature": feature, "label": f"{job['label']}/{feature}"}
        for job in jobs
        for feature in job["features"]
    ]


class Tries(TypedDict):
    try_number: int
    final: bool


def tries(context: Any) -> Tries:
    """This task's try number, and whether it is the last one Airflow will make (what the library calls
    `final`: a failure a retry could fix then fails the feature or job instead of being noted).

    Airflow retries a failed try while `try_number <= max_tries` (max_tries = retries of the task),
    so the try after the last retry, or any try of a task without retries, is final.
    """
    ti = context["ti"]
    return {"try_number": ti.try_number, "final": ti.try_number > ti.max_tries}


def transform(item: WorkItem, context: Any) -> int:
    with open_store(online=False) as store, _failing_fast():
        return store.pipeline(online=False).transform(item["job_id"], item["feature"], **tries(context))


def validate(item: WorkItem, context: Any) -> dict[str, int]:
    with open_store(online=False) as store, _failing_fast():
        outcome = store.pipeline(online=False).validate(item["job_id"], item["feature"], **tries(context))
    return {"rows": outcome.rows_total, "rows_failed": outcome.rows_failed}


def write(item: WorkItem, context: Any) -> int:
    with open_store(online=False) as store, _failing_fast():
        return store.pipeline(online=False).write(item["job_id"], item["feature"], **tries(context))


def finish(job: JobItem, context: Any) -> dict[str, int]:
    """Publish online and end the job; fails without retry when the job ended failed (it is over)."""
    with open_store() as store, _failing_fast():
        result = store.pipeline().finish(job["job_id"], **tries(context))
    if not result.succeeded:
        raise AirflowFailException(f"job {result.job_id} ({job['label']}) failed:\n" + "\n".join(result.errors))
    return {"rows": result.rows_processed, "rows_failed": result.rows_failed, "rows_online": result.rows_online}


def check_online() -> dict[str, int]:
    """Reconcile the online store from the offline store when Redis restarted since the last check.

    Redis being unreachable does not fail the run: each finish task retries its own publish, and the
    next run's check still sees the restart (the server id it records only moves on success).
    """
    try:
        with open_store() as store, _failing_fast():
            check = store.check_online()
    except (ConnectionFailedError, redis.ConnectionError, redis.TimeoutError) as exc:
        log.warning("online store not checked this run: %s", exc)
        return {"groups_reconciled": 0, "values": 0, "skipped": 1}
    return {"groups_reconciled": len(check.reconciled), "values": sum(r.values for r in check.reconciled)}


@contextmanager
def _failing_fast() -> Iterator[None]:
    """Skip Airflow's retries for failures a retry cannot fix (bad SQL, bad data, unknown ids, a window in
    the future, a bad setting); keep them for the rest (lost connections, deadlocks, timeouts)."""
    try:
        yield
    except FeatureStoreError as exc:
        if exc.retryable:
            raise
        raise AirflowFailException(str(exc)) from exc


def retry_delay() -> timedelta:
    """First retry delay of every task (FEATUREPIPE_RETRY_DELAY_SECONDS, default 20); it doubles each try."""
    return timedelta(seconds=float(os.environ.get("FEATUREPIPE_RETRY_DELAY_SECONDS") or 20))


def run_deadline() -> list[timedelta]:
    """How long after being queued a run may take (FEATUREPIPE_DEADLINE_MINUTES; 0 or empty: no deadline).

    Measured from when the run was queued rather than from its logical date, so backfills of old
    hours do not all miss their deadline at once.
    """
    raw = os.environ.get("FEATUREPIPE_DEADLINE_MINUTES", "45").strip()
    minutes = float(raw) if raw else 0.0
    return [timedelta(minutes=minutes)] if minutes > 0 else []
