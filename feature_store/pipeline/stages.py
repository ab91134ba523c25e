"""The batch data path, Sources -> Transform -> Validate -> Write, as stages callable one by one.

Airflow runs each stage as its own task; `FeaturePipeline.run` chains them for use without Airflow.
Every stage is idempotent, so any of them can be retried, and a failing feature fails alone: its
error is recorded on the job and its siblings carry on.

A failure a retry can fix (lost connection, cancel, deadlock, timeout, Redis down) is only noted
while more tries are to come (`final=False`): the feature keeps its status, so the retry picks up
where it stopped, and the job stays running. It fails the feature (or job) on the last try, or at
once when retrying cannot help (bad SQL, bad data)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import psycopg
import redis
from psycopg import sql

from feature_store.config import Settings
from feature_store.definitions.models import FeatureDefinition, FeatureGroup, SourceType
from feature_store.definitions.registry import Registry
from feature_store.errors import (
    FeatureNotFoundError,
    FeatureStoreError,
    FinishError,
    JobStateError,
    PipelineError,
    TransformError,
    ValidationFailedError,
    WindowError,
    WriteError,
)
from feature_store.monitoring import statistics
from feature_store.pipeline import jobs, transform, validate
from feature_store.pipeline.failures import describe_failure, is_transient, retry_note
from feature_store.pipeline.jobs import RunInfo
from feature_store.pipeline.models import (
    FeatureStatus,
    JobType,
    MaterializationJob,
    PipelineConfig,
    PipelineResult,
    TimeWindow,
)
from feature_store.pipeline.publish import Part, Published, publish_job, restore_wide_rows
from feature_store.pipeline.staging import (
    build_wide,
    drop_staging,
    group_rows_have_unique_keys,
    partitioned,
    replaced_table,
    staging_exists,
    staging_table,
    upgrade_staging,
    wide_table,
)
from feature_store.sources import expectations, isolation
from feature_store.stores.offline import postgres as offline_store
from feature_store.stores.online.base import OnlineStore
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
        if feature is None or feature.source_type is not SourceType.BATCH:
            raise FeatureNotFoundError(self.group.id, name)
        return feature


def _rows_in(wide: sql.Composed, window: TimeWindow, features: list[str] | None = None) -> sql.Composed:
    """The job's wide rows stamped inside `window` (with the values of `features` only, if given), as a subquery."""
    if features is None:
        return sql.SQL("(SELECT * FROM {} WHERE event_time > {} AND event_time <= {})").format(
            wide, sql.Literal(window.start), sql.Literal(window.end)
        )
    return sql.SQL(
        "(SELECT w.entity_id, w.event_time, (SELECT jsonb_object_agg(e.key, e.value) FROM jsonb_each(w.features) e"
        " WHERE e.key = ANY({names})) AS features FROM {wide} w"
        " WHERE w.event_time > {start} AND w.event_time <= {end} AND w.features ?| {names})"
    ).format(
        wide=wide,
        names=sql.SQL("{}::text[]").format(sql.Literal(features)),
        start=sql.Literal(window.start),
        end=sql.Literal(window.end),
    )


class FeaturePipeline:
    """Runs materialization jobs against one PostgreSQL connection and an online store."""

    def __init__(
        self,
        conn: psycopg.Connection,
        *,
        online: OnlineStore | Callable[[], OnlineStore] | None,
        settings: Settings,
        progress: ProgressCallback | None = None,
        connect: Callable[[], psycopg.Connection] | None = None,
    ) -> None:
        """`online` may be a factory: the online store is then opened when a job is first published, so
        stages that never publish do not need it reachable (a Redis outage only holds up publishing)."""
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
        """Create one pending job per active tenant x each of its active, enabled groups (optionally filtered).

        A tenant's groups are its own and the shared ones it did not switch off, with its overrides.
        """
        self._check_window(window, mode)
        tenants = self._registry.list_tenants(active_only=True)
        if tenant_ids:
            for tenant_id in tenant_ids:
                self._registry.get_tenant(tenant_id)  # an unknown id is an error, not an empty plan
            tenants = [t for t in tenants if t.id in set(tenant_ids)]
        if group_ids:
            for group_id in group_ids:
                self._registry.get_group(group_id)
        planned = []
        for tenant in tenants:
            groups = [
                g
                for g in self._registry.tenant_groups(tenant.id, active_only=True, enabled_only=True)
                # A group without batch features (stream or on-demand only) has nothing to materialize.
                if (g.online_enabled or g.offline_enabled)
                and g.batch_features
                and (not group_ids or g.id in set(group_ids))
            ]
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
        group = self._registry.tenant_group(config.tenant_id, config.feature_group_id, enabled_only=True)
        names = tuple(f.name for f in group.batch_features)
        if config.features is not None:
            for name in config.features:
                if name not in names:
                    raise FeatureNotFoundError(group.id, name, config.tenant_id)
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

    def transform(self, job_id: int, feature_name: str, *, try_number: int | None = None, final: bool = True) -> int:
        """Run the feature's SQL into staging; returns the rows staged.

        `try_number` is the orchestrator's try, recorded on the job; `final` says no further try
        will come, so a failure ends the feature even if a retry could have fixed it.
        """
        ctx = self._context(job_id)
        feature = ctx.feature(feature_name)
        self._progress(f"transform {ctx.job.tenant_id}/{ctx.group.id}/{feature_name}")
        with self._stage(
            ctx, feature_name, TransformError, try_number, final, timeout_s=self._settings.statement_timeout_s
        ):
            schemas, declared = self._registry.source_declarations()
            isolation.verify(self._conn, schemas, declared)
            staged = transform.stage_rows(
                self._conn,
                settings=self._settings,
                job_id=job_id,
                tenant_id=ctx.job.tenant_id,
                feature=feature,
                windows=ctx.windows,
                source_schemas=schemas,
                group=ctx.group,
            )
            rows = staged.rows
            self._conn.execute(
                "DELETE FROM feature_store.quarantined_rows WHERE job_id = %s AND feature_name = %s AND rule = %s",
                (job_id, feature_name, expectations.EXPECTATION_RULE),
            )
            excluded = expectations.quarantine_source_rows(
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
            own_event_time=staged.own_event_time,
        )
        return rows

    def validate(
        self, job_id: int, feature_name: str, *, try_number: int | None = None, final: bool = True
    ) -> validate.ValidationOutcome:
        """Quarantine rows that break the feature's rules; fails the feature above the group's failure rate."""
        ctx = self._context(job_id)
        feature = ctx.feature(feature_name)
        self._progress(f"validate {ctx.job.tenant_id}/{ctx.group.id}/{feature_name}")
        with self._stage(ctx, feature_name, ValidationFailedError, try_number, final):
            self._require_staging(ctx, feature_name)
            outcome = validate.check_rules(
                self._conn,
                job_id=job_id,
                tenant_id=ctx.job.tenant_id,
                group_id=ctx.group.id,
                feature=feature,
                window=ctx.window,
                max_entity_id_length=self._settings.max_entity_id_length,
                max_value_bytes=self._settings.max_value_bytes,
                unique_keys=ctx.group.reads_group_sql(feature) and group_rows_have_unique_keys(self._conn, job_id),
            )
            # Before the failure check: a window that failed validation is what monitoring must show.
            statistics.record_statistics(
                self._conn,
                job_id=job_id,
                tenant_id=ctx.job.tenant_id,
                group_id=ctx.group.id,
                feature=feature,
                window=ctx.window,
            )
            if outcome.failure_rate > ctx.group.max_failure_rate:
                by_rule = ", ".join(f"{rule}: {n}" for rule, n in sorted(outcome.failures_by_rule.items()))
                raise ValidationFailedError(
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

    def write(self, job_id: int, feature_name: str, *, try_number: int | None = None, final: bool = True) -> int:
        """Commit the feature's valid staged rows to the job's output; returns their number.

        They reach the stores with the job's other features, in one pass per job: `finish` replaces
        the window offline (one wide row per entity) and publishes online.
        """
        ctx = self._context(job_id)
        ctx.feature(feature_name)
        self._progress(f"write {ctx.job.tenant_id}/{ctx.group.id}/{feature_name}")
        status = self.feature_status(job_id, feature_name)
        if status not in (FeatureStatus.VALIDATED, FeatureStatus.WRITTEN):
            raise JobStateError(
                f"feature {feature_name!r} of job {job_id} is {status.value}, not validated; run validate first"
            )
        with self._stage(ctx, feature_name, WriteError, try_number, final):
            self._require_staging(ctx, feature_name)
            rows = validate.count_valid(self._conn, job_id, feature_name)
        jobs.record_feature(self._conn, job_id, feature_name, FeatureStatus.WRITTEN, try_number=try_number)
        return rows

    def finish(
        self, job_id: int, *, try_number: int | None = None, final: bool = True, parallelism: int = 1
    ) -> PipelineResult:
        """Publish the written features online (one pass per entity), end the job and drop its staging.

        `parallelism`: connections the job's wide rows may be built on at once (see `build_wide`).

        On a failure (FinishError) that a retry can fix and with tries to come (`final=False`), the
        job stays running with the cause noted; otherwise the job ends failed. Its staged rows are
        kept either way, so a retried or cleared finish can still publish them.
        """
        ctx: _JobContext | None = None
        try:
            ctx = self._context(job_id)
            if ctx.job.status.is_final and not staging_exists(self._conn, job_id):
                return self._result(ctx.job, 0)  # already finished: a retried finish changes nothing
            results = jobs.feature_results(self._conn, job_id)
            # A rerun of an ended job stages only the features run again (see create_staging).
            written = partitioned(self._conn, job_id, [r.feature for r in results if r.status is FeatureStatus.WRITTEN])
            rows_online = self._flush(ctx, written, parallelism) if written else 0
            job = jobs.finish_job(self._conn, job_id, try_number=try_number)
            drop_staging(self._conn, job_id)
            return self._result(job, rows_online)
        except (psycopg.Error, redis.RedisError, FeatureStoreError) as exc:
            failure = FinishError(
                job_id=job_id,
                tenant_id=ctx.job.tenant_id if ctx else None,
                group_id=ctx.group.id if ctx else None,
                message=describe_failure(exc),
                retryable=is_transient(exc),
            )
            self._record_finish_failure(job_id, failure, try_number, final)
            raise failure from exc

    def record_shards(self, shards: dict[int, int]) -> None:
        """Remember the orchestrator's tenant shard of each job (job id -> shard number)."""
        jobs.record_shards(self._conn, shards)

    def fail_jobs(self, job_ids: Sequence[int], reason: str) -> None:
        """End jobs that will never run (their run could not be planned) as failed, with the reason."""
        for job_id in job_ids:
            self.fail(job_id, reason)

    def close_failed(self, job_id: int) -> PipelineResult:
        """The result of a job that `finish` ended failed; its staging goes (nobody will finish it now)."""
        drop_staging(self._conn, job_id)
        return self._result(jobs.get_job(self._conn, job_id), 0)

    def fail(self, job_id: int, reason: str) -> PipelineResult:
        """End a job as failed (e.g. its online publish could not be done) and drop its staging."""
        job = jobs.finish_job(self._conn, job_id, extra_errors=[reason])
        drop_staging(self._conn, job_id)
        return self._result(job, 0)

    # -- connections -----------------------------------------------------------------------------

    def sibling(self) -> FeaturePipeline:
        """A pipeline like this one on a connection of its own (no online store), for parallel stages."""
        if self._connect is None:
            raise JobStateError("the pipeline has no connection factory to open a sibling with")
        return FeaturePipeline(
            self._connect(), online=None, settings=self._settings, progress=self._progress, connect=self._connect
        )

    @property
    def can_reconnect(self) -> bool:
        return self._connect is not None

    @contextmanager
    def reconnecting(self) -> Iterator[None]:
        """Let `reconnect_if_lost` replace a dead connection until the block ends, then close the
        replacement and hand the pipeline its own connection back."""
        own = self._conn
        try:
            yield
        finally:
            if self._conn is not own:
                self._conn.close()
                self._conn = own
                self._registry = Registry(own)

    def reconnect_if_lost(self) -> None:
        """Replace the connection if it died (a terminated backend), so the next attempt can run."""
        if not self._conn.closed or self._connect is None:
            return
        log.warning("the database connection was lost; retrying on a new one")
        fresh = self._connect()
        previous, self._conn, self._registry = self._conn, fresh, Registry(fresh)
        previous.close()

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
        # The group as the job's tenant sees it: its overrides (TTL, max_failure_rate, ...) apply.
        return _JobContext(job=job, group=self._registry.tenant_group(job.tenant_id, job.feature_group_id))

    @contextmanager
    def _stage(
        self,
        ctx: _JobContext,
        feature_name: str,
        error: type[PipelineError],
        try_number: int | None,
        final: bool,
        *,
        timeout_s: float | None = None,
    ) -> Iterator[None]:
        """Turn any failure inside a stage into a PipelineError naming tenant/group/feature, and record
        it: a feature failure, or only a note while a retry can still fix it.

        `timeout_s` is the statement timeout the stage set, if it set one (for the error text).
        """
        names = {"tenant_id": ctx.job.tenant_id, "group_id": ctx.group.id, "feature": feature_name}
        try:
            yield
        except PipelineError as exc:
            self._record_failure(ctx.job.id, feature_name, exc, try_number, final)
            raise
        except (transform.SqlShapeError, psycopg.Error, FeatureStoreError) as exc:
            message = describe_failure(exc, timeout_s)
            failure = error(message=message, retryable=is_transient(exc), **names)
            self._record_failure(ctx.job.id, feature_name, failure, try_number, final)
            raise failure from exc

    def _record_failure(
        self, job_id: int, feature_name: str, exc: PipelineError, try_number: int | None, final: bool
    ) -> None:
        """Fail the feature, or, if a retry can fix this and one will come, note the cause and keep its
        status. Never raises: the stage's own error is what the caller must see."""
        try:
            with self._usable_conn() as conn:
                if exc.retryable and not final:
                    jobs.note_feature_retry(conn, job_id, feature_name, retry_note(exc, try_number))
                else:
                    jobs.record_feature(
                        conn, job_id, feature_name, FeatureStatus.FAILED, error_message=str(exc), try_number=try_number
                    )
        except Exception:
            log.exception("could not record the failure of %s of job %s (%s)", feature_name, job_id, exc)

    def _record_finish_failure(self, job_id: int, exc: FinishError, try_number: int | None, final: bool) -> None:
        """End the job failed, or, if a retry can fix this and one will come, note the cause on the still
        running job. Never raises, as `_record_failure`."""
        try:
            with self._usable_conn() as conn:
                if exc.retryable and not final:
                    jobs.note_job_retry(conn, job_id, retry_note(exc, try_number))
                else:
                    jobs.finish_job(conn, job_id, extra_errors=[str(exc)], try_number=try_number)
        except Exception:
            log.exception("could not record the failure to finish job %s (%s)", job_id, exc)

    @contextmanager
    def _usable_conn(self) -> Iterator[psycopg.Connection]:
        """The pipeline's connection, out of any failed transaction; a new one for the block if it died
        (a terminated backend, a lost network)."""
        if not self._conn.closed:
            if self._conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                self._conn.rollback()
            yield self._conn
            return
        if self._connect is None:
            raise JobStateError("the database connection was lost and the pipeline has no way to reconnect")
        with self._connect() as fresh:
            yield fresh

    def _require_staging(self, ctx: _JobContext, feature_name: str) -> None:
        if not staging_exists(self._conn, ctx.job.id):
            raise JobStateError(
                f"the staged rows of job {ctx.job.id} are gone (the job was finished); rerun transform for"
                f" {ctx.job.tenant_id}/{ctx.group.id}/{feature_name}"
            )
        upgrade_staging(self._conn, ctx.job.id)

    def _excluded_source_rows(self, job_id: int, feature_name: str) -> int:
        """Source rows the transform quarantined for breaking an expectation (they count as failed rows)."""
        row = self._conn.execute(
            "SELECT count(*) FROM feature_store.quarantined_rows WHERE job_id = %s AND feature_name = %s AND rule = %s",
            (job_id, feature_name, expectations.EXPECTATION_RULE),
        ).fetchone()
        return int(row[0]) if row else 0

    @property
    def conn(self) -> psycopg.Connection:
        return self._conn

    def feature_status(self, job_id: int, feature_name: str) -> FeatureStatus:
        """Where one feature of a job got to (pending before its first stage)."""
        row = self._conn.execute(
            "SELECT status FROM feature_store.materialization_job_features WHERE job_id = %s AND feature_name = %s",
            (job_id, feature_name),
        ).fetchone()
        return FeatureStatus(row[0]) if row else FeatureStatus.PENDING

    def _flush(self, ctx: _JobContext, written: list[str], parallelism: int) -> int:
        """Send the written features to the stores in one pass: the job's wide rows replace the window
        offline and go online. Returns the values published online. Safe to repeat.

        With both stores written and a way to connect, the wide rows' values go online on a connection
        of their own while the offline write runs (the two take about as long, on different servers);
        the fallbacks of quarantined and replaced values follow the offline commit. If the offline
        write fails, what went online is put back to the offline values (`restore_wide_rows`), so
        online never holds a value that offline does not."""
        job_id = ctx.job.id
        self._progress(f"write {ctx.job.tenant_id}/{ctx.group.id}")
        group_columns = all(ctx.group.reads_group_sql(ctx.feature(name)) for name in written)
        build_wide(self._conn, job_id, written, connect=self._connect, ways=parallelism, group_columns=group_columns)
        offline_written = ctx.job.write_offline and ctx.group.offline_enabled
        extended = self._extended_windows(job_id, ctx, written) if offline_written else []
        publishes = ctx.job.write_online and ctx.group.online_enabled
        online = self._online_store() if publishes else None
        if online is None or not offline_written or self._connect is None:
            if offline_written:
                self._write_offline(ctx, written, extended)
            if not publishes:
                return 0
            if online is None:
                raise JobStateError(f"job {job_id} writes online but the pipeline has no online store")
            self._progress(f"publish {ctx.job.tenant_id}/{ctx.group.id} online")
            return self._publish(online, ctx, written, offline_written, self._conn).values
        self._progress(f"publish {ctx.job.tenant_id}/{ctx.group.id} online")
        # What the offline write replaces: the job's window, and the later ones its window features recomputed.
        replaced = TimeWindow(start=ctx.window.start, end=max([ctx.window.end, *(w.end for w, _ in extended)]))
        with self._connect() as side, ThreadPoolExecutor(1, thread_name_prefix="publish-wide-rows") as ahead:
            early = ahead.submit(self._publish, online, ctx, written, True, side, [Part.WIDE_ROWS])
            try:
                self._write_offline(ctx, written, extended)
            except BaseException:
                self._restore_online(early, online, side, ctx, written, replaced)
                raise
            values = early.result().values
        return values + self._publish(online, ctx, written, True, self._conn, [Part.FALLBACKS]).values

    def _online_store(self) -> OnlineStore | None:
        """The online store, opened on first use (None: the pipeline has none)."""
        if self._online is not None and not isinstance(self._online, OnlineStore):
            self._online = self._online()
        return self._online

    def _publish(
        self,
        online: OnlineStore,
        ctx: _JobContext,
        written: list[str],
        offline_written: bool,
        conn: psycopg.Connection,
        parts: Sequence[Part] = (Part.WIDE_ROWS, Part.FALLBACKS),
    ) -> Published:
        return publish_job(
            conn,
            online,
            job_id=ctx.job.id,
            tenant_id=ctx.job.tenant_id,
            group=ctx.group,
            features=written,
            window=ctx.window,
            offline_written=offline_written,
            force=ctx.job.online_overwrite,
            batch_size=self._settings.online_batch_size,
            parts=parts,
        )

    def _write_offline(
        self, ctx: _JobContext, written: list[str], extended: list[tuple[TimeWindow, list[str]]]
    ) -> None:
        """Replace the window's values of `written` offline with the job's wide rows, and the `extended`
        later windows' values of the window features that recomputed them (see `_extended_windows`)."""
        wide = wide_table(ctx.job.id)
        # A rerun of a window feature's hour also replaces the later windows containing it.
        replacements = [(ctx.window, written, _rows_in(wide, ctx.window) if extended else wide)]
        replacements += [(later, features, _rows_in(wide, later, features)) for later, features in extended]
        for window, features, source in replacements:
            offline_store.replace_window(
                self._conn,
                tenant_id=ctx.job.tenant_id,
                group_id=ctx.group.id,
                job_id=ctx.job.id,
                features=features,
                window=window,
                source=source,
                replaced=replaced_table(ctx.job.id),
            )

    def _restore_online(
        self,
        early: Future[Published],
        online: OnlineStore,
        conn: psycopg.Connection,
        ctx: _JobContext,
        written: list[str],
        replaced: TimeWindow,
    ) -> None:
        """After a failed offline write: let the early publish end, then put back what it wrote, whose
        values lie in `replaced`. Never raises (the offline failure is what the caller must see); a
        restore that fails is logged, and the job's retry, or `reconcile`, repairs online."""
        try:
            early.exception()
            if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                conn.rollback()
            restore_wide_rows(
                conn,
                online,
                job_id=ctx.job.id,
                tenant_id=ctx.job.tenant_id,
                group=ctx.group,
                features=written,
                window=replaced,
                force=ctx.job.online_overwrite,
                batch_size=self._settings.online_batch_size,
            )
        except Exception:
            log.exception(
                "the offline write of job %s failed after its values went online, and restoring them failed too",
                ctx.job.id,
            )

    def _extended_windows(
        self, job_id: int, ctx: _JobContext, written: list[str]
    ) -> list[tuple[TimeWindow, list[str]]]:
        """The later hours whose window values the job's window features recomputed (see `tiles`): for
        each later end, the window after the job's and the features recomputed up to it."""
        windowed = [f for f in written if (d := ctx.group.feature(f)) is not None and d.aggregation is not None]
        if not windowed:
            return []
        rows = self._conn.execute(
            sql.SQL(
                "SELECT max(window_end) AS until, array_agg(feature_name ORDER BY feature_name) FROM ("
                " SELECT feature_name, max(window_end) AS window_end FROM {} WHERE feature_name = ANY(%s)"
                " GROUP BY feature_name) f WHERE window_end > %s GROUP BY window_end ORDER BY 1"
            ).format(staging_table(job_id)),
            (windowed, ctx.window.end),
        ).fetchall()
        return [(TimeWindow(start=ctx.window.end, end=until), list(features)) for until, features in rows]

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
