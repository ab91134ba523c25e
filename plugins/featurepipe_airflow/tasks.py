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
from feature_store.pipeline.runner import Stage, run_stage
from featurepipe_airflow import fanout
from featurepipe_airflow.fanout import FanOutError, FinishItem, WorkItem, fan_out
from featurepipe_airflow.hooks import open_store
from featurepipe_airflow.requests import requests_of, scoped_params

log = logging.getLogger(__name__)


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


def plan(context: Any) -> list[FinishItem]:
    """Create one pending job per active tenant x group and cut the run into mapped items (see fanout)."""
    try:
        # An asset-triggered run materializes what its requests ask for (see requests.py).
        params = scoped_params(dict(context["params"]), requests_of(context))
        window = resolve_window({**_interval(context), "params": params})
    except ValueError as exc:  # bad params or request: retrying cannot help
        raise AirflowFailException(f"invalid window for this run: {exc}") from exc
    with open_store() as store, _failing_fast():
        pipeline = store.pipeline(online=False)
        planned = pipeline.plan(
            window=window,
            mode=JobType(params["mode"]),
            write_online=bool(params["write_online"]),
            write_offline=bool(params["write_offline"]),
            tenant_ids=params.get("tenant_ids") or None,
            group_ids=params.get("feature_group_ids") or None,
            run=run_info(context),
            overwrite_online=params.get("overwrite_online") or None,
        )
        try:
            cut = fan_out(
                [fanout.PlannedJob(p.job_id, p.tenant_id, p.feature_group_id, p.features) for p in planned],
                granularity=params.get("fanout") or "auto",
                shard_size=params.get("shard_size") or None,
                max_map_length=_max_map_length(),
                target_items=int(os.environ.get("FEATURE_STORE_TARGET_ITEMS") or 48),
            )
        except FanOutError as exc:
            pipeline.fail_jobs([p.job_id for p in planned], f"the run could not be planned: {exc}")
            raise AirflowFailException(str(exc)) from exc
        pipeline.record_shards(cut.shards)
    log.info(
        "%d jobs in %d feature items and %d finish items%s",
        len(planned),
        len(cut.work),
        len(cut.finish),
        f" (tenant shards of {cut.shard_size})" if cut.shard_size else " (one per tenant)",
    )
    return cut.finish


def land_api_sources(context: Any) -> dict[str, int]:
    """Land every API source for the run's tenants and window (each schedule window in full mode) before
    any transform reads them; fails, after landing all it can, when one could not be landed."""
    params = context["params"]
    window = resolve_window(context)
    windows = window.schedule_windows() if params.get("mode") == JobType.FULL.value else [window]
    with open_store() as store:
        sources = store.api_sources()
        if not sources:
            return {"sources": 0, "rows": 0}
        tokens = {s.name: _api_token(s.auth.connection) for s in sources if s.auth and s.auth.connection}
        results = [
            r
            for w in windows
            for r in store.land_api_sources(window=w, tenant_ids=params.get("tenant_ids") or None, tokens=tokens)
        ]
    failed = [r for r in results if r.error]
    if failed:
        raise FeatureStoreError(
            f"{len(failed)} of {len(results)} API source landings failed:\n" + "\n".join(str(r.error) for r in failed)
        )
    return {"sources": len(sources), "rows": sum(r.rows for r in results)}


def _api_token(conn_id: str) -> str:
    """An API source's token: the password of its Airflow connection."""
    from airflow.sdk import BaseHook

    return str(BaseHook.get_connection(conn_id).password or "")


def _interval(context: Any) -> dict[str, Any]:
    return {k: context.get(k) for k in ("data_interval_start", "data_interval_end", "logical_date")}


def work_items(finish: list[FinishItem]) -> list[WorkItem]:
    """The feature items of the run: what the mapped transform/validate/write tasks run."""
    return [w for item in finish for w in item["work"]]


def _max_map_length() -> int:
    from airflow.configuration import conf

    return conf.getint("core", "max_map_length")


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


def transform(item: WorkItem, context: Any) -> dict[str, int]:
    return _stage(Stage.TRANSFORM, item, context)


def validate(item: WorkItem, context: Any) -> dict[str, int]:
    return _stage(Stage.VALIDATE, item, context)


def write(item: WorkItem, context: Any) -> dict[str, int]:
    """Write offline; a job whose features are all done is published and finished right away."""
    return _stage(Stage.WRITE, item, context)


def _stage(stage: Stage, item: WorkItem, context: Any) -> dict[str, int]:
    """Run one stage for the item's jobs, each on its own (see stage_runner).

    A failure a later try may fix makes Airflow retry the task (the jobs already past the stage are
    skipped then). A feature that failed for good fails this task when it was the item's only job
    (its downstream stages have nothing to do); in a shard the other jobs carry on, and the write
    task fails at the end, naming the failed tenants, so the failure shows in the grid.
    """
    online = stage is Stage.WRITE
    with open_store() as store, _failing_fast():
        pipeline = store.pipeline(online=online)
        report = run_stage(pipeline, stage, item["job_ids"], item["feature"], finish_done_jobs=online, **tries(context))
    counts = {"jobs": len(item["job_ids"]), "rows": report.rows, "finished": len(report.finished)}
    if report.retrying:
        raise next(iter(report.retrying.values()))
    if report.failed and not report.done and not report.skipped:
        errors = list(report.failed.values())
        if all(not e.retryable for e in errors):
            raise AirflowFailException("\n".join(str(e) for e in errors))
        raise errors[0]
    if stage is Stage.WRITE and (report.failed or report.failed_before):
        failed = sorted(set(report.failed) | set(report.failed_before))
        raise AirflowFailException(
            f"{item['feature']} failed for {len(failed)} of {len(item['job_ids'])} jobs of {item['label']}"
            f" (job ids {', '.join(map(str, failed))}); the others were written. Reasons:\n"
            + "\n".join(str(e) for e in report.failed.values())
        )
    return counts


def finish(item: FinishItem, context: Any) -> dict[str, int]:
    """Publish online and end the item's jobs that are not finished yet; fails when any job ended failed."""
    results = []
    with open_store() as store, _failing_fast():
        pipeline = store.pipeline()
        for job_id in item["job_ids"]:
            results.append(pipeline.finish(job_id, **tries(context)))
    failed = [r for r in results if not r.succeeded]
    if failed:
        raise AirflowFailException(
            f"{len(failed)} of {len(results)} jobs of {item['label']} failed:\n"
            + "\n".join(f"job {r.job_id} ({r.tenant_id}/{r.feature_group_id}): " + "; ".join(r.errors) for r in failed)
        )
    return {
        "jobs": len(results),
        "rows": sum(r.rows_processed for r in results),
        "rows_failed": sum(r.rows_failed for r in results),
        "rows_online": sum(r.rows_online for r in results),
    }


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
    """First retry delay of every task (FEATURE_STORE_RETRY_DELAY_SECONDS, default 20); it doubles each try."""
    return timedelta(seconds=float(os.environ.get("FEATURE_STORE_RETRY_DELAY_SECONDS") or 20))


def run_deadline() -> list[timedelta]:
    """How long after being queued a run may take (FEATURE_STORE_DEADLINE_MINUTES; 0 or empty: no deadline).

    Measured from when the run was queued rather than from its logical date, so backfills of old
    hours do not all miss their deadline at once.
    """
    raw = os.environ.get("FEATURE_STORE_DEADLINE_MINUTES", "45").strip()
    minutes = float(raw) if raw else 0.0
    return [timedelta(minutes=minutes)] if minutes > 0 else []
