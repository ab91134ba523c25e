"""The batch data path, Sources -> Transform -> Validate -> Write, as stages callable one by one.

Airflow runs each stage as its own task; `FeaturePipeline.run` chains them for use without Airflow.
Every stage is idempotent, so any of them can be retried, and a failing feature fails alone: its
error is recorded on the job and its siblings carry on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import psycopg
from psycopg import sql

from feature_store import jobs, offline_store, sources, transform, validate
from feature_store.config import Settings
from feature_store.errors import (
    FeatureNotFoundError,
    FeatureStoreError,
    JobStateError,
    PipelineError,
    TransformError,
    ValidationError,
    WindowError,
    WriteError,
)
from feature_store.jobs import RunInfo
from feature_store.models import (
    FeatureDefinition,
    FeatureGroup,
    FeatureStatus,
    JobType,
    MaterializationJob,
    PipelineConfig,
    PipelineResult,
    TimeWindow,
)
from feature_store.online_store import OnlineStore
from feature_store.publish import publish_job
from feature_store.registry import Registry
from feature_store.staging import create_staging, drop_staging, staging_exists, staging_table
from feature_store.types import ProgressCallback

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlannedJob:
    """A job created by `plan`, with the batch features its tasks will run."""

    job_id: int
    tenant_id: str
    feature_group_id: str
    features: tuple[str, ...]


@dataclass(frozen=True)
class _JobContext:
    job: MaterializationJob
    group: FeatureGroup

    @property
    def window(self) -> TimeWindow:
        """The window the job reads and replaces."""
        return TimeWindow(start=self.job.start_time, end=self.job.end_time)

    @property
    def windows(self) -> list[TimeWindow]:
        """The windows the SQL runs for: the job's window, or each schedule window in it in full mode."""
        if self.job.job_type is JobType.FULL:
            return self.window.schedule_windows()
        return [self.window]

    def feature(self, name: str) -> FeatureDefinition:
        feature = self.group.feature(name)
        if feature is None or feature.transformation_sql is None:
            raise FeatureNotFoundError(self.group.id, name)
        return feature


class FeaturePipeline:
    """Runs materialization jobs against one PostgreSQL connection and an online store."""

    def __init__(
        self,
        conn: psycopg.Connection,
        *,
        online: OnlineStore | None,
        settings: Settings,
        progress: ProgressCallback | None = None,
        connect: Callable[[], psycopg.Connection] | None = None,
    ) -> None:
        self._conn = conn
        self._connect = connect
        self._online = online
        self._settings = settings
        self._registry = Registry(conn)
        self._progress = progress or (lambda _message: None)

    # -- planning ----------------------------------------------------------------------------

    def plan(
        self,
        *,
        window: TimeWindow,
        mode: JobType = JobType.INCREMENTAL,
        write_online: bool = True,
        write_offline: bool = True,
        tenant_ids: Sequence[str] | None = None,
        group_ids: Sequence[str] | None = None,
        run: RunInfo | None = None,
        overwrite_online: str | None = None,
    ) -> list[PlannedJob]:
        """Create one pending job per active tenant x active feature group (optionally filtered)."""
        self._check_window(window, mode)
        tenants = self._registry.list_tenants(active_only=True)
        groups = [g for g in self._registry.list_groups(active_only=True) if g.online_enabled or g.offline_enabled]
        if tenant_ids:
            for tenant_id in tenant_ids:
                self._registry.get_tenant(tenant_id)  # an unknown id is an error, not an empty plan
            tenants = [t for t in tenants if t.id in set(tenant_ids)]
        if group_ids:
            for group_id in group_ids:
                self._registry.get_group(group_id)
            groups = [g for g in groups if g.id in set(group_ids)]
        planned = []
        for tenant in tenants:
            for group in groups:
                features = tuple(f.name for f in group.batch_features)
                job_id = jobs.create_job(
                    self._conn,
                    tenant_id=tenant.id,
                    group=group,
                    features=features,
                    window=window,
                    mode=mode,
                    write_online=write_online,
                    write_offline=write_offline,
                    run=run,
                    overwrite_online=overwrite_online,
                )
                planned.append(PlannedJob(job_id, tenant.id, group.id, features))
        return planned

    def start(self, config: PipelineConfig, *, run: RunInfo | None = None) -> PlannedJob:
        """Create the job for one (tenant, group, window)."""
        self._registry.get_tenant(config.tenant_id)
        group = self._registry.get_group(config.feature_group_id)
        names = tuple(f.name for f in group.batch_features)
        if config.features is not None:
            for name in config.features:
                if name not in names:
                    raise FeatureNotFoundError(group.id, name)
            names = tuple(config.features)
        window = TimeWindow(start=config.start_time, end=config.end_time)
        self._check_window(window, config.mode)
        job_id = jobs.create_job(
            self._conn,
            tenant_id=config.tenant_id,
            group=group,
            features=names,
            window=window,
            mode=config.mode,
            write_online=config.write_online,
            write_offline=config.write_offline,
            run=run,
            overwrite_online=config.overwrite_online,
        )
        return PlannedJob(job_id, config.tenant_id, group.id, names)

    # -- stages --------------------------------------------------------------------------------

    def transform(self, job_id: int, feature_name: str, *, try_number: int | None = None) -> int:
        """Run the feature's SQL into staging; returns the rows staged."""
        ctx = self._context(job_id)
        feature = ctx.feature(feature_name)
        self._progress(f"transform {ctx.job.tenant_id}/{ctx.group.id}/{feature_name}")
        with self._stage(ctx, feature_name, TransformError, try_number):
            create_staging(self._conn, job_id)  # gone if the job was finished and is being rerun
            schemas, declared = self._registry.source_declarations()
            sources.verify(self._conn, schemas, declared)
            staged = transform.run(
                self._conn,
                settings=self._settings,
                job_id=job_id,
                tenant_id=ctx.job.tenant_id,
                feature=feature,
                windows=ctx.windows,
                source_schemas=schemas,
            )
            rows = staged.rows
            self._conn.execute(
                "DELETE FROM feature_store.quarantined_rows WHERE job_id = %s AND feature_name = %s AND rule = %s",
                (job_id, feature_name, sources.EXPECTATION_RULE),
            )
            excluded = sources.quarantine_source_rows(
                self._conn,
                job_id=job_id,
                tenant_id=ctx.job.tenant_id,
                group_id=ctx.group.id,
                feature_name=feature_name,
                declared=declared,
                relations=staged.relations,
                start=ctx.window.start,
                end=ctx.window.end,
            )
        jobs.record_feature(
            self._conn,
            job_id,
            feature_name,
            FeatureStatus.TRANSFORMED,
            rows_processed=rows,
            rows_failed=excluded,
            try_number=try_number,
        )
        return rows

    def validate(self, job_id: int, feature_name: str, *, try_number: int | None = None) -> validate.ValidationOutcome:
        """Quarantine rows that break the feature's rules; fails the feature above the group's failure rate."""
        ctx = self._context(job_id)
        feature = ctx.feature(feature_name)
        self._progress(f"validate {ctx.job.tenant_id}/{ctx.group.id}/{feature_name}")
        with self._stage(ctx, feature_name, ValidationError, try_number):
            self._require_staging(ctx, feature_name)
            outcome = validate.run(
                self._conn,
                job_id=job_id,
                tenant_id=ctx.job.tenant_id,
                group_id=ctx.group.id,
                feature=feature,
                window=ctx.window,
                max_entity_id_length=self._settings.max_entity_id_length,
                max_value_bytes=self._settings.max_value_bytes,
            )
            if outcome.failure_rate > ctx.group.max_failure_rate:
                by_rule = ", ".join(f"{rule}: {n}" for rule, n in sorted(outcome.failures_by_rule.items()))
                raise ValidationError(
                    tenant_id=ctx.job.tenant_id,
                    group_id=ctx.group.id,
                    feature=feature_name,
                    message=(
                        f"{outcome.rows_failed} of {outcome.rows_total} rows ({outcome.failure_rate:.1%}) broke"
                        f" validation rules ({by_rule}), above the group's max_failure_rate of"
                        f" {ctx.group.max_failure_rate:.1%}; e.g. {outcome.example}."
                        " The rows are in feature_store.quarantined_rows"
                    ),
                )
        jobs.record_feature(
            self._conn,
            job_id,
            feature_name,
            FeatureStatus.VALIDATED,
            rows_processed=outcome.rows_total,
            rows_failed=outcome.rows_failed + self._excluded_source_rows(job_id, feature_name),
            try_number=try_number,
        )
        return outcome

    def write(self, job_id: int, feature_name: str, *, try_number: int | None = None) -> int:
        """Replace the window's offline rows with the valid staged rows; returns the rows written.

        Online values are published per group by `finish`, one pass per entity for all features.
        """
        ctx = self._context(job_id)
        ctx.feature(feature_name)
        self._progress(f"write {ctx.job.tenant_id}/{ctx.group.id}/{feature_name}")
        status = self._feature_status(job_id, feature_name)
        if status not in (FeatureStatus.VALIDATED, FeatureStatus.WRITTEN):
            raise JobStateError(
                f"feature {feature_name!r} of job {job_id} is {status.value}, not validated; run validate first"
            )
        with self._stage(ctx, feature_name, WriteError, try_number):
            self._require_staging(ctx, feature_name)
            if ctx.job.write_offline and ctx.group.offline_enabled:
                rows = offline_store.write_window(
                    self._conn,
                    job_id=job_id,
                    tenant_id=ctx.job.tenant_id,
                    group_id=ctx.group.id,
                    feature_name=feature_name,
                    window=ctx.window,
                )
            else:
                rows = self._count_valid(job_id, feature_name)
        jobs.record_feature(self._conn, job_id, feature_name, FeatureStatus.WRITTEN, try_number=try_number)
        return rows

    def finish(self, job_id: int) -> PipelineResult:
        """Publish the written features online (one pass per entity), end the job and drop its staging.

        Raises on an online-store failure and leaves the job running, so an orchestrator can retry.
        """
        ctx = self._context(job_id)
        if ctx.job.status.is_final and not staging_exists(self._conn, job_id):
            return self._result(ctx.job, 0)  # already finished: a retried finish changes nothing
        results = jobs.feature_results(self._conn, job_id)
        written = [r.feature for r in results if r.status is FeatureStatus.WRITTEN]
        rows_online = 0
        if ctx.job.write_online and ctx.group.online_enabled and written:
            if self._online is None:
                raise JobStateError(f"job {job_id} writes online but the pipeline has no online store")
            self._progress(f"publish {ctx.job.tenant_id}/{ctx.group.id} online")
            rows_online = self._publish_online(ctx, written)
        job = jobs.finish_job(self._conn, job_id)
        drop_staging(self._conn, job_id)
        return self._result(job, rows_online)

    def fail(self, job_id: int, reason: str) -> PipelineResult:
        """End a job as failed (e.g. its online publish could not be done) and drop its staging."""
        job = jobs.finish_job(self._conn, job_id, extra_errors=[reason])
        drop_staging(self._conn, job_id)
        return self._result(job, 0)

    # -- without an orchestrator ---------------------------------------------------------------

    def run(self, config: PipelineConfig, *, run: RunInfo | None = None, parallelism: int = 1) -> PipelineResult:
        """Run one job end to end; a failing feature is recorded and its siblings still run.

        With `parallelism` > 1 (and a `connect` factory), that many features run at once, each on its
        own connection: the work happens inside PostgreSQL, which then uses as many cores.
        """
        planned = self.start(config, run=run)
        try:
            if parallelism > 1 and self._connect is not None and len(planned.features) > 1:
                with ThreadPoolExecutor(max_workers=parallelism, thread_name_prefix="feature") as pool:
                    list(pool.map(lambda name: self._run_feature_apart(planned.job_id, name), planned.features))
            else:
                for name in planned.features:
                    self._run_feature(planned.job_id, name)
        except Exception as exc:
            # Not a feature's own failure (those are recorded and skipped): the job cannot go on.
            self.fail(planned.job_id, f"materialization stopped: {exc}")
            raise
        try:
            return self.finish(planned.job_id)
        except Exception as exc:
            log.exception("finishing job %s failed", planned.job_id)
            return self.fail(planned.job_id, f"finish failed: {exc}")

    def _run_feature(self, job_id: int, name: str) -> None:
        try:
            self.transform(job_id, name)
            self.validate(job_id, name)
            self.write(job_id, name)
        except PipelineError as exc:
            log.warning("%s", exc)

    def _run_feature_apart(self, job_id: int, name: str) -> None:
        assert self._connect is not None
        with self._connect() as conn:
            FeaturePipeline(conn, online=None, settings=self._settings, progress=self._progress)._run_feature(
                job_id, name
            )

    # -- helpers -------------------------------------------------------------------------------

    def _check_window(self, window: TimeWindow, mode: JobType) -> None:
        """Windows never end in the future (their values would be stamped there), nor span too much in full mode."""
        now = datetime.now(timezone.utc)
        skew = self._settings.max_clock_skew_s
        if window.end > now + timedelta(seconds=skew):
            raise WindowError(
                f"window ({window.start.isoformat()}, {window.end.isoformat()}] ends in the future (now is"
                f" {now.isoformat(timespec='seconds')}, allowed clock skew {skew:g}s, FEATURE_STORE_MAX_CLOCK_SKEW):"
                " its values would be stamped after now; choose a window that has ended"
            )
        if mode is JobType.FULL:
            count = window.schedule_window_count()
            if count > self._settings.max_full_windows:
                raise WindowError(
                    f"full mode would recompute {count} hourly windows from {window.start.isoformat()} to"
                    f" {window.end.isoformat()}, more than FEATURE_STORE_MAX_FULL_WINDOWS"
                    f" ({self._settings.max_full_windows}); split the range or raise the limit"
                )

    def _context(self, job_id: int) -> _JobContext:
        job = jobs.get_job(self._conn, job_id)
        return _JobContext(job=job, group=self._registry.get_group(job.feature_group_id))

    @contextmanager
    def _stage(
        self, ctx: _JobContext, feature_name: str, error: type[PipelineError], try_number: int | None
    ) -> Iterator[None]:
        """Turn any failure inside a stage into a recorded feature failure naming tenant/group/feature."""
        names = {"tenant_id": ctx.job.tenant_id, "group_id": ctx.group.id, "feature": feature_name}
        try:
            yield
        except PipelineError as exc:
            self._record_failure(ctx.job.id, feature_name, exc, try_number)
            raise
        except (transform.SqlShapeError, psycopg.Error, FeatureStoreError) as exc:
            message = _describe(exc, self._settings.statement_timeout_s)
            failure = error(message=message, retryable=_is_transient(exc), **names)
            self._record_failure(ctx.job.id, feature_name, failure, try_number)
            raise failure from exc

    def _record_failure(self, job_id: int, feature_name: str, exc: PipelineError, try_number: int | None) -> None:
        if self._conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            self._conn.rollback()
        jobs.record_feature(
            self._conn,
            job_id,
            feature_name,
            FeatureStatus.FAILED,
            error_message=str(exc),
            try_number=try_number,
        )

    def _require_staging(self, ctx: _JobContext, feature_name: str) -> None:
        if not staging_exists(self._conn, ctx.job.id):
            raise JobStateError(
                f"the staged rows of job {ctx.job.id} are gone (the job was finished); rerun transform for"
                f" {ctx.job.tenant_id}/{ctx.group.id}/{feature_name}"
            )

    def _excluded_source_rows(self, job_id: int, feature_name: str) -> int:
        """Source rows the transform quarantined for breaking an expectation (they count as failed rows)."""
        row = self._conn.execute(
            "SELECT count(*) FROM feature_store.quarantined_rows WHERE job_id = %s AND feature_name = %s AND rule = %s",
            (job_id, feature_name, sources.EXPECTATION_RULE),
        ).fetchone()
        return int(row[0]) if row else 0

    def _feature_status(self, job_id: int, feature_name: str) -> FeatureStatus:
        row = self._conn.execute(
            "SELECT status FROM feature_store.materialization_job_features WHERE job_id = %s AND feature_name = %s",
            (job_id, feature_name),
        ).fetchone()
        return FeatureStatus(row[0]) if row else FeatureStatus.PENDING

    def _count_valid(self, job_id: int, feature_name: str) -> int:
        row = self._conn.execute(
            sql.SQL("SELECT count(*) FROM {} WHERE feature_name = %s AND rejected_rule IS NULL").format(
                staging_table(job_id)
            ),
            (feature_name,),
        ).fetchone()
        return int(row[0]) if row else 0

    def _publish_online(self, ctx: _JobContext, features: Sequence[str]) -> int:
        online = self._online
        assert online is not None
        return publish_job(
            self._conn,
            online,
            job_id=ctx.job.id,
            tenant_id=ctx.job.tenant_id,
            group=ctx.group,
            features=features,
            window=ctx.window,
            offline_written=ctx.job.write_offline and ctx.group.offline_enabled,
            force=ctx.job.online_overwrite,
            batch_size=self._settings.online_batch_size,
        ).values

    def _result(self, job: MaterializationJob, rows_online: int) -> PipelineResult:
        results = jobs.feature_results(self._conn, job.id)
        return PipelineResult(
            job_id=job.id,
            tenant_id=job.tenant_id,
            feature_group_id=job.feature_group_id,
            status=job.status,
            rows_processed=job.rows_processed,
            rows_failed=job.rows_failed,
            rows_online=rows_online,
            duration_ms=job.duration_ms or 0,
            errors=[e for e in (job.error_message or "").splitlines() if e],
            features=results,
        )


# SQLSTATE classes worth a retry: connection, transaction rollback (deadlock, serialization),
# insufficient resources, operator intervention (includes statement timeout), system error.
_TRANSIENT_SQLSTATE_CLASSES = ("08", "40", "53", "57", "58")


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, FeatureStoreError):
        return bool(getattr(exc, "retryable", False))
    if isinstance(exc, psycopg.Error):
        if exc.sqlstate:
            return exc.sqlstate[:2] in _TRANSIENT_SQLSTATE_CLASSES
        return isinstance(exc, psycopg.OperationalError)
    return False


def _describe(exc: BaseException, timeout_s: float) -> str:
    if isinstance(exc, psycopg.errors.QueryCanceled):
        return f"exceeded the statement timeout of {timeout_s:g}s (FEATURE_STORE_STATEMENT_TIMEOUT)"
    if isinstance(exc, psycopg.Error):
        diag = exc.diag
        return diag.message_primary or str(exc).splitlines()[0]
    return str(exc)
