"""One stage of one feature for many jobs (a tenant shard), each job on its own.

An orchestrator task can then cover many tenants at once without coupling their fates: a failure
stays with its tenant's job, a retry skips the tenants that already got past the stage, and a job
whose features are all done is published and finished right away instead of at the end of the run.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from feature_store.errors import FinishError, PipelineError
from feature_store.pipeline import jobs
from feature_store.pipeline.models import FeatureStatus
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
