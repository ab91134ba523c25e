"""`FeatureStore`: the facade applications use; thin delegations to the registry, pipeline and stores."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import psycopg
import redis
from pydantic import BaseModel

from feature_store import schema
from feature_store.config import Settings
from feature_store.db import connect, ensure_database, fetch_models
from feature_store.definitions.apply import ApplyReport, apply_repo
from feature_store.definitions.models import TenantGroup
from feature_store.definitions.registry import Registry
from feature_store.definitions.repo import load_repo
from feature_store.errors import (
    ApiSourceError,
    AuthenticationError,
    EventError,
    EventPublishError,
    FeatureStoreError,
    NotFoundError,
    SchemaNotInitializedError,
)
from feature_store.monitoring import alerts, deadlines, freshness, routing, statistics
from feature_store.monitoring.alerts import Notification, OpenAlert
from feature_store.monitoring.deadlines import DeadlineMiss
from feature_store.monitoring.freshness import GroupFreshness
from feature_store.monitoring.routing import AlertRouting
from feature_store.monitoring.statistics import FeatureStatistics
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
from feature_store.pipeline.runner import FEATURES_AT_ONCE, run_job
from feature_store.pipeline.runs import RunLedger
from feature_store.pipeline.sandbox import set_password as set_sandbox_password
from feature_store.pipeline.stages import FeaturePipeline
from feature_store.serving import api_keys, on_demand
from feature_store.serving.api_keys import ApiKey
from feature_store.serving.features import FeatureResolver
from feature_store.serving.models import HistoricalRow, OnlineFeatures
from feature_store.sources import api
from feature_store.sources.api import ApiSource, LandingResult
from feature_store.stores.offline import postgres as offline_store
from feature_store.stores.online import open_online_store
from feature_store.stores.online.base import OnlineStore
from feature_store.stores.online.redis import RedisOnlineStore
from feature_store.stream import streams
from feature_store.stream.consumer import EventConsumer
from feature_store.stream.effects import ApplyResult, EventApplier
from feature_store.stream.events import AnyEvent, parse_event
from feature_store.stream.mapping import MappingCache
from feature_store.types import FeatureRef, ProgressCallback
from feature_store.windows import TimeWindow


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
        self._mapping = MappingCache(lambda: self.registry)
        self._applier: EventApplier | None = None
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
            self._applier = None

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
        self._mapping.invalidate()
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

        `parallelism` features run at once, on their own connections, and the flush uses as many.
        By default, every feature of the job at once (up to FEATURES_AT_ONCE), so that features
        finishing unevenly never leave a core idle while the last one runs alone (at a million rows,
        5 features' validation on 2 cores: 4.9 s instead of 5.4 s), and the flush on the machine's cores.
        """
        pipeline = self.pipeline(online=config.write_online, progress=progress)
        if parallelism is not None:
            return run_job(pipeline, config, parallelism=parallelism)
        cores = min(4, os.cpu_count() or 1)
        return run_job(pipeline, config, parallelism=cores, features_at_once=FEATURES_AT_ONCE)

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

    # -- API sources ---------------------------------------------------------------------------

    def api_sources(self) -> list[ApiSource]:
        """The API sources of the applied repo."""
        self._require_schema()
        return api.load_sources(self.conn)

    def land_api_sources(
        self,
        *,
        window: TimeWindow,
        tenant_ids: Sequence[str] | None = None,
        tokens: Mapping[str, str] | None = None,
    ) -> list[LandingResult]:
        """Land every API source for each active tenant (optionally only `tenant_ids`) and the window.

        `tokens` maps a source name to its token (an orchestrator resolves connections); a source
        whose auth names `token_env` and has no entry reads that environment variable. One failure
        lands nothing for its (source, tenant) and is reported in its result; the others go on.
        """
        self._require_schema()
        tenants = [t.id for t in self.registry.list_tenants(active_only=True)]
        if tenant_ids:
            tenants = [t for t in tenants if t in set(tenant_ids)]
        results = []
        for source in api.load_sources(self.conn):
            token = (tokens or {}).get(source.name)
            if token is None and source.auth is not None and source.auth.token_env:
                token = os.environ.get(source.auth.token_env)
            for tenant_id in tenants:
                try:
                    rows = api.land(self.conn, source, tenant_id=tenant_id, window=window, token=token)
                except ApiSourceError as exc:
                    results.append(LandingResult(source=source.name, tenant_id=tenant_id, rows=0, error=str(exc)))
                else:
                    results.append(LandingResult(source=source.name, tenant_id=tenant_id, rows=rows, error=None))
        return results

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

    def feature_statistics(
        self,
        *,
        tenant_id: str,
        group_id: str,
        feature_name: str | None = None,
        since: datetime | None = None,
        limit: int = 500,
    ) -> list[FeatureStatistics]:
        """Per-window statistics and drift of a (tenant, group)'s features, newest window first."""
        self._require_schema()
        return statistics.feature_statistics(
            self.conn, tenant_id=tenant_id, group_id=group_id, feature_name=feature_name, since=since, limit=limit
        )

    def alert_routing(self) -> AlertRouting:
        """The alert channels and routes of the applied repo."""
        self._require_schema()
        return routing.load_routing(self.conn)

    def evaluate_alerts(self) -> list[Notification]:
        """Open alerts for new breaches, resolve cleared ones; returns the notifications queued for delivery."""
        self._require_schema()
        return alerts.evaluate(self.conn)

    def open_alerts(self) -> list[OpenAlert]:
        self._require_schema()
        return alerts.open_alerts(self.conn)

    def pending_alert_notifications(self, *, limit: int = 200) -> list[Notification]:
        """Queued notifications not delivered yet (new ones and earlier failed deliveries), oldest first."""
        self._require_schema()
        return alerts.pending_notifications(self.conn, limit=limit)

    def mark_alert_delivered(self, notification_id: int) -> None:
        alerts.mark_delivered(self.conn, notification_id)

    def mark_alert_failed(self, notification_id: int, error: str) -> None:
        """Record a failed delivery (it stays pending); `error` must not hold a secret."""
        alerts.mark_failed(self.conn, notification_id, error)

    # -- reads ---------------------------------------------------------------------------------

    def get_online_features(
        self,
        tenant_id: str,
        entity_type: str,
        entity_ids: Sequence[str],
        features: Sequence[FeatureRef],
        *,
        request_data: Mapping[str, Any] | None = None,
    ) -> OnlineFeatures:
        """Latest values of `features` (as `group:feature`: batch, stream or on-demand) for each entity.

        Stored values (and the inputs of on-demand features) come in one round trip; on-demand
        features are then computed per entity from them and `request_data`.

        Returns:
            Columns of one value per entity id, in order, for every requested feature, each with
            status `present`, `missing`, `expired` (or `invalid`: an on-demand value its rules refuse)
            and its event time; `result[i]` is entity i's row.

        Raises:
            TenantNotFoundError: the tenant is not registered.
            FeatureGroupNotFoundError, FeatureNotFoundError: not there for this tenant (another
                tenant's group reads the same as one that does not exist).
            OnDemandError: an on-demand function raised, or its request data is missing.
        """
        plan = self._features.planned(
            tenant_id,
            (entity_type, tuple(features)),
            lambda: on_demand.plan_read(self._features, tenant_id, features, entity_type=entity_type),
        )
        stored = self.online.read(tenant_id=tenant_id, entity_ids=entity_ids, features=plan.stored)
        if not plan.on_demand:
            return stored
        return on_demand.complete(stored, plan, tenant_id=tenant_id, requested=features, request_data=request_data)

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

    # -- events --------------------------------------------------------------------------------

    def publish_events(self, events: Sequence[AnyEvent | dict[str, object] | str]) -> list[str]:
        """Validate events and append them to their (tenant, user) partitions, in order; returns entry ids.

        Raises:
            EventPublishError: some event is invalid (each named by its index and reason); none is published.
        """
        parsed: list[AnyEvent] = []
        problems: list[tuple[int, str]] = []
        for i, event in enumerate(events):
            try:
                parsed.append(event if isinstance(event, BaseModel) else parse_event(event))
            except EventError as exc:
                problems.append((i, str(exc)))
        if problems:
            raise EventPublishError(problems)
        return streams.publish(
            self._online_client(),
            prefix=self.settings.redis_prefix,
            partitions=self.settings.event_partitions,
            events=parsed,
        )

    def publish_raw_events(self, events: Sequence[str]) -> list[str]:
        """Append events as given (JSON text), unvalidated, as a producer outside this library might:
        consumers dead-letter what is malformed. For tests and replays of recorded streams."""
        return streams.publish(
            self._online_client(),
            prefix=self.settings.redis_prefix,
            partitions=self.settings.event_partitions,
            events=list(events),
        )

    def handle_event(self, event: AnyEvent | dict[str, object] | str) -> ApplyResult:
        """Apply one event now, without the stream (exactly once: a second call with its id changes nothing).

        Raises:
            EventError: the event is malformed, of an unknown type or of a tenant that is not active.
        """
        parsed = event if isinstance(event, BaseModel) else parse_event(event)
        self._require_schema()
        if not self._mapping.tenant_active(parsed.tenant_id):
            raise EventError(f"tenant {parsed.tenant_id!r} is not a registered, active tenant")
        return self._event_applier().apply([parsed], conn=self.conn)

    def event_consumer(self, *, consumer_id: str | None = None, batch_size: int = 2000) -> EventConsumer:
        """A consumer sharing this store's event partitions with any others (call `.run()` on it)."""
        self._require_schema()
        return EventConsumer(
            client=self._online_client(),
            applier=self._event_applier(),
            mapping=self._mapping,
            connect=lambda: connect(self.settings.database_url),
            prefix=self.settings.redis_prefix,
            partitions=self.settings.event_partitions,
            lease_s=self.settings.event_lease_s,
            consumer_id=consumer_id,
            batch_size=batch_size,
        )

    def dead_letters(self, *, limit: int = 100) -> list[streams.DeadLetter]:
        """Events consumers could not apply, oldest first, each with its reason."""
        return streams.dead_letters(self._online_client(), prefix=self.settings.redis_prefix, count=limit)

    def event_backlog(self) -> int:
        """Events published and not yet acknowledged by a consumer (0 when consumers have caught up)."""
        return streams.backlog(
            self._online_client(), prefix=self.settings.redis_prefix, partitions=self.settings.event_partitions
        )

    def _online_client(self) -> Any:
        online = self.online
        if not isinstance(online, RedisOnlineStore):
            raise FeatureStoreError(
                f"stream features need a Redis online store, not {type(online).__name__};"
                " set FEATURE_STORE_ONLINE_BACKEND to redis or redis-cluster"
            )
        return online.client

    def _event_applier(self) -> EventApplier:
        if self._applier is None:
            online = self.online
            assert isinstance(online, RedisOnlineStore)
            self._online_client()
            self._applier = EventApplier(online, self._mapping, prefix=self.settings.redis_prefix)
        return self._applier

    # -- API keys (HTTP feature server) ---------------------------------------------------------

    def create_api_key(self, tenant_id: str, *, name: str = "") -> tuple[ApiKey, str]:
        """A new API key of the tenant: (its record, the key). Only a hash is stored; show the key once."""
        self.registry.get_tenant(tenant_id)  # raises TenantNotFoundError
        return api_keys.create_key(self.conn, tenant_id=tenant_id, name=name)

    def list_api_keys(self, *, tenant_id: str | None = None) -> list[ApiKey]:
        self._require_schema()
        return api_keys.list_keys(self.conn, tenant_id=tenant_id)

    def revoke_api_key(self, key_id: int) -> None:
        """Revoke a key (servers stop accepting it within their cache time, API_KEY_CACHE_SECONDS)."""
        self._require_schema()
        if not api_keys.revoke_key(self.conn, key_id):
            raise NotFoundError(f"API key {key_id} does not exist or is already revoked")

    def tenant_for_api_key(self, key: str) -> str:
        """The tenant an API key belongs to.

        Raises:
            AuthenticationError: the key is unknown or revoked, or its tenant is not active.
        """
        self._require_schema()
        tenant = api_keys.tenant_of(self.conn, key)
        if tenant is None:
            raise AuthenticationError("the API key is not valid (unknown or revoked, or its tenant is inactive)")
        return tenant

    # -- helpers -------------------------------------------------------------------------------

    def _require_schema(self) -> None:
        if self._schema_checked:
            return
        if schema.pending_versions(self.conn):
            raise SchemaNotInitializedError()
        self._schema_checked = True
