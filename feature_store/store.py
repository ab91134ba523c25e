"""`FeatureStore`: the facade applications use; thin delegations to the registry, pipeline and stores."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from types import TracebackType

import psycopg
import redis

from feature_store import schema
from feature_store.config import Settings
from feature_store.db import connect, ensure_database, fetch_models
from feature_store.definitions.apply import ApplyReport, apply_repo
from feature_store.definitions.models import TenantGroup
from feature_store.definitions.registry import Registry
from feature_store.definitions.repo import load_repo
from feature_store.errors import SchemaNotInitializedError
from feature_store.monitoring import deadlines, freshness
from feature_store.monitoring.deadlines import DeadlineMiss
from feature_store.monitoring.freshness import GroupFreshness
from feature_store.pipeline import jobs
from feature_store.pipeline.models import (
    MaterializationJob,
    OnlineCheck,
    PipelineConfig,
    PipelineResult,
    QuarantineCount,
    QuarantinedRow,
    ReconcileResult,
)
from feature_store.pipeline.publish import reconcile_group
from feature_store.pipeline.runner import run_job
from feature_store.pipeline.runs import RunLedger
from feature_store.pipeline.sandbox import set_password as set_sandbox_password
from feature_store.pipeline.stages import FeaturePipeline
from feature_store.serving.features import FeatureResolver
from feature_store.serving.models import HistoricalRow, OnlineFeatures
from feature_store.stores.offline import postgres as offline_store
from feature_store.stores.online import open_online_store
from feature_store.stores.online.base import OnlineStore
from feature_store.types import FeatureRef, ProgressCallback


class FeatureStore:
    """Entry point: register definitions, materialize, and read features online and offline.

    Build it from the environment (`FeatureStore.from_env()`), from URLs, or from ready connections
    (what the Airflow tasks do with their hooks' connections).
    """

    def __init__(
        self,
        *,
        settings: Settings | None = None,
        database_url: str | None = None,
        redis_url: str | None = None,
        conn: psycopg.Connection | None = None,
        redis_client: redis.Redis | None = None,
    ) -> None:
        if conn is not None and database_url is not None:
            raise ValueError("You cannot specify both conn and database_url.")
        if redis_client is not None and redis_url is not None:
            raise ValueError("You cannot specify both redis_client and redis_url.")
        base = settings or Settings.from_env()
        # Every other setting (timeouts, batch size, validation limits) carries over as given.
        self.settings = replace(
            base, database_url=database_url or base.database_url, redis_url=redis_url or base.redis_url
        )
        self._conn = conn
        self._owns_conn = conn is None
        self._redis_client = redis_client
        self._online: OnlineStore | None = None
        self._features = FeatureResolver(lambda: self.registry)
        self._schema_checked = False

    @classmethod
    def from_env(cls) -> FeatureStore:
        return cls(settings=Settings.from_env())

    # -- connections ---------------------------------------------------------------------------

    @property
    def conn(self) -> psycopg.Connection:
        if self._conn is None:
            self._conn = connect(self.settings.database_url)
        return self._conn

    @property
    def online(self) -> OnlineStore:
        """The online store backend the settings choose (on the given Redis client, if one was given)."""
        if self._online is None:
            self._online = open_online_store(self.settings, self._redis_client)
        return self._online

    @property
    def runs(self) -> RunLedger:
        """What an orchestrator reports about its runs (tasks failed for good, runs that ended)."""
        self._require_schema()
        return RunLedger(self.conn)

    @property
    def registry(self) -> Registry:
        self._require_schema()
        return Registry(self.conn)

    def close(self) -> None:
        if self._owns_conn and self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._online is not None:
            self._online.close()  # closes its client only if it opened it
            self._online = None

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- definitions ---------------------------------------------------------------------------

    def init(self) -> list[str]:
        """Create the database if needed, then create or migrate the schema; returns the migrations applied."""
        if self._conn is None:
            ensure_database(self.settings.database_url)
        applied = schema.migrate(self.conn)
        if self.settings.sandbox_password:
            set_sandbox_password(self.conn, self.settings.sandbox_password)
        self._schema_checked = True
        return applied

    def apply(self, path: str | Path) -> ApplyReport:
        """Register a YAML feature repo: all of it, or nothing (DefinitionError lists every problem)."""
        repo = load_repo(path)
        self._require_schema()
        report = apply_repo(self.conn, repo, self.settings)
        self._features.invalidate()
        return report

    def tenant_groups(self, tenant_id: str | None = None) -> list[TenantGroup]:
        """Per tenant (or for one), each group it sees: shared or its own, enabled, its overrides."""
        if tenant_id is not None:
            self.registry.get_tenant(tenant_id)
        return self.registry.tenant_scopes(tenant_id)

    # -- materialization -----------------------------------------------------------------------

    def pipeline(self, *, online: bool = True, progress: ProgressCallback | None = None) -> FeaturePipeline:
        """The staged pipeline (what the Airflow tasks call one stage at a time)."""
        self._require_schema()
        return FeaturePipeline(
            self.conn,
            online=(lambda: self.online) if online else None,
            settings=self.settings,
            progress=progress,
            connect=lambda: connect(self.settings.database_url),
        )

    def materialize(
        self, config: PipelineConfig, *, progress: ProgressCallback | None = None, parallelism: int | None = None
    ) -> PipelineResult:
        """Run one job (tenant, group, window) through transform, validate and write.

        `parallelism` features run at once, on their own connections (default: the machine's cores).
        """
        workers = parallelism if parallelism is not None else min(4, os.cpu_count() or 1)
        return run_job(self.pipeline(online=config.write_online, progress=progress), config, parallelism=workers)

    def list_jobs(self, **filters: object) -> list[MaterializationJob]:
        self._require_schema()
        return jobs.list_jobs(self.conn, **filters)  # type: ignore[arg-type]

    def get_job(self, job_id: int) -> MaterializationJob:
        self._require_schema()
        return jobs.get_job(self.conn, job_id)

    def quarantined_rows(
        self,
        *,
        job_id: int | None = None,
        tenant_id: str | None = None,
        since: datetime | None = None,
        limit: int = 100,
    ) -> list[QuarantinedRow]:
        self._require_schema()
        return fetch_models(
            self.conn,
            QuarantinedRow,
            "SELECT job_id, tenant_id, feature_group_id, feature_name, entity_id, event_time, value, rule,"
            " reason, quarantined_at FROM feature_store.quarantined_rows"
            " WHERE (%(job)s::bigint IS NULL OR job_id = %(job)s)"
            " AND (%(tenant)s::text IS NULL OR tenant_id = %(tenant)s)"
            " AND (%(since)s::timestamptz IS NULL OR quarantined_at >= %(since)s)"
            " ORDER BY quarantined_at DESC, id DESC LIMIT %(limit)s",
            {"job": job_id, "tenant": tenant_id, "since": since, "limit": limit},
        )

    def quarantine_summary(
        self, *, since: datetime | None = None, tenant_id: str | None = None
    ) -> list[QuarantineCount]:
        """Quarantined rows counted per (group, feature, rule), most first: what broke, how often, why."""
        self._require_schema()
        return fetch_models(
            self.conn,
            QuarantineCount,
            "SELECT feature_group_id, feature_name, rule, count(*) AS rows, count(DISTINCT tenant_id) AS tenants,"
            " min(reason) AS example FROM feature_store.quarantined_rows"
            " WHERE (%(since)s::timestamptz IS NULL OR quarantined_at >= %(since)s)"
            " AND (%(tenant)s::text IS NULL OR tenant_id = %(tenant)s)"
            " GROUP BY 1, 2, 3 ORDER BY rows DESC, 1, 2, 3",
            {"since": since, "tenant": tenant_id},
        )

    # -- online consistency --------------------------------------------------------------------

    def reconcile_online(self, *, tenant_id: str | None = None, group_id: str | None = None) -> list[ReconcileResult]:
        """Restore online values from the offline store's latest valid values, set-wise (newer-only).

        For after the online store lost data (restarted without persistence, restored an older
        snapshot, was flushed). Groups without online or offline storage are skipped.
        """
        self._require_schema()
        tenants = [self.registry.get_tenant(tenant_id)] if tenant_id else self.registry.list_tenants(active_only=True)
        if group_id and not tenant_id:
            self.registry.get_group(group_id)  # an unknown id is an error
        results = []
        for tenant in tenants:
            # Each tenant's own groups and the shared ones it keeps, with its overrides (TTL).
            if group_id and tenant_id:
                groups = [self.registry.tenant_group(tenant.id, group_id, enabled_only=True)]
            else:
                groups = self.registry.tenant_groups(tenant.id, active_only=True, enabled_only=True)
                groups = [g for g in groups if not group_id or g.id == group_id]
            for group in groups:
                if not (group.online_enabled and group.offline_enabled):
                    continue
                published = reconcile_group(
                    self.conn,
                    self.online,
                    tenant_id=tenant.id,
                    group=group,
                    features=[f.name for f in group.batch_features],
                    batch_size=self.settings.online_batch_size,
                )
                results.append(
                    ReconcileResult(
                        tenant_id=tenant.id,
                        feature_group_id=group.id,
                        entities=published.entities,
                        values=published.values,
                    )
                )
        return results

    def check_online(self) -> OnlineCheck:
        """Reconcile everything when the online server changed since the last check (it may have lost data)."""
        self._require_schema()
        current = self.online.instance_id()
        row = self.conn.execute(
            "SELECT instance_id FROM feature_store.online_instances WHERE redis_prefix = %s",
            (self.settings.redis_prefix,),
        ).fetchone()
        previous = str(row[0]) if row else None
        reconciled = [] if previous == current else self.reconcile_online()
        self.conn.execute(
            "INSERT INTO feature_store.online_instances (redis_prefix, instance_id) VALUES (%s, %s)"
            " ON CONFLICT (redis_prefix) DO UPDATE SET instance_id = excluded.instance_id, checked_at = now()",
            (self.settings.redis_prefix, current),
        )
        return OnlineCheck(instance_id=current, previous_instance_id=previous, reconciled=reconciled)

    # -- monitoring ----------------------------------------------------------------------------

    def freshness(self, *, check_online: bool = True, tenant_id: str | None = None) -> list[GroupFreshness]:
        """Freshness of every active (tenant, group), or one tenant's; with `check_online`, sampled online."""
        self._require_schema()
        return freshness.freshness(self.conn, self.online if check_online else None, tenant_id=tenant_id)

    def deadline_misses(self, *, limit: int = 20) -> list[DeadlineMiss]:
        self._require_schema()
        return deadlines.deadline_misses(self.conn, limit=limit)

    def record_deadline_miss(self, *, dag_id: str, run_id: str, deadline_time: datetime | None, message: str) -> None:
        self._require_schema()
        deadlines.record_deadline_miss(
            self.conn, dag_id=dag_id, run_id=run_id, deadline_time=deadline_time, message=message
        )

    # -- reads ---------------------------------------------------------------------------------

    def get_online_features(
        self, tenant_id: str, entity_type: str, entity_ids: Sequence[str], features: Sequence[FeatureRef]
    ) -> OnlineFeatures:
        """Latest values of `features` (as `group:feature`) for each entity, in one round trip.

        Returns:
            Columns of one value per entity id, in order, for every requested feature, each with
            status `present`, `missing` or `expired` and its event time; `result[i]` is entity i's row.

        Raises:
            TenantNotFoundError: the tenant is not registered.
            FeatureGroupNotFoundError, FeatureNotFoundError: not there for this tenant (another
                tenant's group reads the same as one that does not exist).
        """
        specs = self._features.specs(tenant_id, features, entity_type=entity_type)
        return self.online.read(tenant_id=tenant_id, entity_ids=entity_ids, features=specs)

    def get_historical_features(
        self, tenant_id: str, entity_rows: Sequence[tuple[str, datetime]], features: Sequence[FeatureRef]
    ) -> list[HistoricalRow]:
        """Point-in-time-correct training rows: each gets the latest value at or before its timestamp.

        Raises:
            TenantNotFoundError: the tenant is not registered.
            FeatureGroupNotFoundError, FeatureNotFoundError: not there for this tenant.
        """
        specs = self._features.specs(tenant_id, features, entity_type=None)
        return offline_store.get_historical_features(
            self.conn,
            tenant_id=tenant_id,
            entity_rows=entity_rows,
            features=[(s.group_id, s.name, s.value_type) for s in specs],
        )

    # -- helpers -------------------------------------------------------------------------------

    def _require_schema(self) -> None:
        if self._schema_checked:
            return
        if schema.current_version(self.conn) < schema.latest_version():
            raise SchemaNotInitializedError()
        self._schema_checked = True
