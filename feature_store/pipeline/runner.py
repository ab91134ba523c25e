"""Running stages: one stage of one feature for many jobs (what an orchestrator task does for a tenant
shard), and one job end to end in this process (what `FeatureStore.materialize` does).

A shard's task covers many tenants without coupling their fates: a failure stays with its tenant's
job, a retry skips the tenants that already got past the stage, and a job whose features are all
done is published and finished right away instead of at the end of the run.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

import psycopg
import redis

from feature_store.errors import FinishError, PipelineError
from feature_store.pipeline import jobs
from feature_store.pipeline.failures import is_transient
from feature_store.pipeline.jobs import RunInfo
from feature_store.pipeline.models import FeatureStatus, PipelineConfig, PipelineResult
from feature_store.pipeline.stages import FeaturePipeline

log = logging.getLogger(__name__)


class Stage(str, enum.Enum):
    TRANSFORM = "transform"
    VALIDATE = "validate"
    WRITE = "write"


# A job whose feature is already in one of these got past the stage (an earlier try did it).
_PAST = {
    Stage.TRANSFORM: {FeatureStatus.TRANSFORMED, FeatureStatus.VALIDATED, FeatureStatus.WRITTEN},
    Stage.VALIDATE: {FeatureStatus.VALIDATED, FeatureStatus.WRITTEN},
    Stage.WRITE: {FeatureStatus.WRITTEN},
}


@dataclass
class ShardReport:
    """What one stage did for each job of the shard."""

    done: dict[int, int] = field(default_factory=dict)
    """Job id -> rows, for the jobs this call ran the stage for."""

    skipped: list[int] = field(default_factory=list)
    """Jobs already past the stage (an earlier try did it)."""

    failed_before: list[int] = field(default_factory=list)
    """Jobs whose feature had already failed (at an earlier stage, or on an earlier try)."""

    failed: dict[int, PipelineError] = field(default_factory=dict)
    """Jobs whose feature failed for good at this stage."""

    retrying: dict[int, PipelineError] = field(default_factory=dict)
    """Jobs whose stage failed in a way a later try may fix (noted, not failed)."""

    finished: list[int] = field(default_factory=list)
    """Jobs published and ended right away because all their features were done."""

    @property
    def rows(self) -> int:
        return sum(self.done.values())


def run_stage(
    pipeline: FeaturePipeline,
    stage: Stage,
    job_ids: Sequence[int],
    feature: str,
    *,
    try_number: int | None = None,
    final: bool = True,
    finish_done_jobs: bool = False,
) -> ShardReport:
    """Run `stage` of `feature` for every job; never raises for one job's PipelineError.

    With `finish_done_jobs`, a job all of whose features are written or failed is finished here
    (published online and ended); a failure to finish is left to the orchestrator's finish task.
    """
    report = ShardReport()
    for job_id in job_ids:
        status = pipeline.feature_status(job_id, feature)
        if status is FeatureStatus.FAILED:
            report.failed_before.append(job_id)
        elif status in _PAST[stage]:
            report.skipped.append(job_id)
        else:
            try:
                report.done[job_id] = _run(pipeline, stage, job_id, feature, try_number=try_number, final=final)
            except PipelineError as exc:
                (report.failed if final or not exc.retryable else report.retrying)[job_id] = exc
                log.warning("%s", exc)
        if finish_done_jobs and job_id not in report.retrying and jobs.claim_finish(pipeline.conn, job_id):
            try:
                pipeline.finish(job_id, try_number=try_number, final=False)
                report.finished.append(job_id)
            except FinishError as exc:
                log.warning("%s; the run's finish task will retry", exc)
    return report


def _run(
    pipeline: FeaturePipeline, stage: Stage, job_id: int, feature: str, *, try_number: int | None, final: bool
) -> int:
    if stage is Stage.TRANSFORM:
        return pipeline.transform(job_id, feature, try_number=try_number, final=final)
    if stage is Stage.VALIDATE:
        return pipeline.validate(job_id, feature, try_number=try_number, final=final).rows_total
    return pipeline.write(job_id, feature, try_number=try_number, final=final)


# -- one job, without an orchestrator ------------------------------------------------------------

# A retryable failure gets this many attempts, waiting RUN_BACKOFF_S after the first and twice as
# long after each further one (what Airflow's retries do for the DAG's tasks).
RUN_ATTEMPTS = 3
RUN_BACKOFF_S = 0.5

FEATURES_AT_ONCE = 8
"""How many features of a job `FeatureStore.materialize` runs at once by default: all of a usual
group's; each holds a connection and up to 64 MB of PostgreSQL's sort memory while it validates."""

T = TypeVar("T")


def run_job(
    pipeline: FeaturePipeline,
    config: PipelineConfig,
    *,
    run: RunInfo | None = None,
    parallelism: int = 1,
    features_at_once: int | None = None,
) -> PipelineResult:
    """Run one job end to end; a failing feature is recorded and its siblings still run.

    With `features_at_once` (default: `parallelism`) > 1 and a pipeline that can open connections,
    that many features run at once, each on its own connection: the work happens inside PostgreSQL,
    which then uses as many cores. Finishing the job flushes its features to the stores in one pass,
    on up to `parallelism` connections.
    """
    planned = pipeline.start(config, run=run)
    job_id = planned.job_id
    at_once = parallelism if features_at_once is None else features_at_once
    with pipeline.reconnecting():
        try:
            if at_once > 1 and pipeline.can_reconnect and len(planned.features) > 1:
                with ThreadPoolExecutor(max_workers=at_once, thread_name_prefix="feature") as pool:
                    list(pool.map(lambda name: _run_feature_apart(pipeline, job_id, name), planned.features))
            else:
                for name in planned.features:
                    _run_feature(pipeline, job_id, name)
        except Exception as exc:
            # Not a feature's own failure (those are recorded and skipped): the job cannot go on.
            pipeline.fail(job_id, f"materialization stopped: {exc}")
            raise
        try:
            return _attempts(pipeline, lambda final: pipeline.finish(job_id, final=final, parallelism=parallelism))
        except FinishError as exc:
            log.warning("%s", exc)  # finish ended the job failed
            return pipeline.close_failed(job_id)
        except Exception as exc:
            log.exception("finishing job %s failed", job_id)
            return pipeline.fail(job_id, f"finish failed: {exc}")


def _run_feature(pipeline: FeaturePipeline, job_id: int, name: str) -> None:
    try:
        _attempts(pipeline, lambda final: pipeline.transform(job_id, name, final=final))
        _attempts(pipeline, lambda final: pipeline.validate(job_id, name, final=final))
        _attempts(pipeline, lambda final: pipeline.write(job_id, name, final=final))
    except PipelineError as exc:
        log.warning("%s", exc)


def _run_feature_apart(pipeline: FeaturePipeline, job_id: int, name: str) -> None:
    apart = pipeline.sibling()
    try:
        with apart.reconnecting():
            _run_feature(apart, job_id, name)
    finally:
        apart.conn.close()


def _attempts(pipeline: FeaturePipeline, call: Callable[[bool], T]) -> T:
    """Call a stage (given whether this is its last attempt), retrying a failure a retry can fix
    with a short backoff, on a new connection if the old one died."""
    for attempt in range(1, RUN_ATTEMPTS + 1):
        final = attempt == RUN_ATTEMPTS
        try:
            return call(final)
        except (PipelineError, FinishError, psycopg.Error, redis.RedisError) as exc:
            if final or not is_transient(exc):
                raise
            delay = RUN_BACKOFF_S * 2 ** (attempt - 1)
            log.warning("%s; attempt %d of %d in %.1fs", exc, attempt + 1, RUN_ATTEMPTS, delay)
        time.sleep(delay)
        pipeline.reconnect_if_lost()
    raise AssertionError("unreachable")
