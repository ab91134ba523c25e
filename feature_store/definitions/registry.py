"""The registry: tenants, feature groups and feature definitions stored in PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import psycopg
from psycopg.types.json import Jsonb

from feature_store.db import fetch_models
from feature_store.definitions.models import (
    FeatureDefinition,
    FeatureGroup,
    SourceTable,
    Status,
    Tenant,
    TenantGroup,
    TenantGroupSettings,
)
from feature_store.errors import FeatureGroupDisabledError, FeatureGroupNotFoundError, TenantNotFoundError

_GROUP_COLUMNS = (
    "id, entity_type, description, online_enabled, offline_enabled, ttl_seconds, status,"
    " max_failure_rate, freshness_target_seconds, transformation_sql"
)

OVERRIDABLE = ("online_enabled", "offline_enabled", "ttl_seconds", "max_failure_rate", "freshness_target_seconds")
"""Group settings a tenant can override for a shared group (columns of tenant_group_settings)."""

# What a tenant sees: its own groups and the shared ones, a shared group's settings overridden by the
# tenant's (`s`, joined only for shared groups). Any other group column is the group's own.
_TENANT_FROM = (
    " FROM feature_store.feature_groups g"
    " JOIN feature_store.tenants t ON g.owner_tenant_id IS NULL OR g.owner_tenant_id = t.id"
    " LEFT JOIN feature_store.tenant_group_settings s"
    "   ON s.tenant_id = t.id AND s.feature_group_id = g.id AND g.owner_tenant_id IS NULL"
)
_PLAIN_FROM = " FROM feature_store.feature_groups g"
_TENANT_COLUMNS = ", ".join(
    f"coalesce(s.{c}, g.{c}) AS {c}" if c in OVERRIDABLE else f"g.{c}"
    for c in _GROUP_COLUMNS.replace(" ", "").split(",")
)


class Registry:
    """Reads and writes registry objects on one connection. Writes join the caller's transaction."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self._conn = conn

    # -- reads ---------------------------------------------------------------------------------

    def get_tenant(self, tenant_id: str) -> Tenant:
        found = fetch_models(
            self._conn, Tenant, "SELECT id, name, status FROM feature_store.tenants WHERE id = %s", (tenant_id,)
        )
        if not found:
            raise TenantNotFoundError(tenant_id)
        return found[0]

    def list_tenants(self, *, active_only: bool = False) -> list[Tenant]:
        query = "SELECT id, name, status FROM feature_store.tenants"
        if active_only:
            query += " WHERE status = 'active'"
        return fetch_models(self._conn, Tenant, query + " ORDER BY id")

    def get_group(self, group_id: str) -> FeatureGroup:
        """A group as declared, whatever its scope (for the platform: apply, admin commands)."""
        groups = self._load_groups("WHERE g.id = %s", (group_id,))
        if not groups:
            raise FeatureGroupNotFoundError(group_id)
        return groups[0]

    def list_groups(self, *, active_only: bool = False) -> list[FeatureGroup]:
        """Every group of every scope, as declared; tenant-addressed callers use `tenant_groups`."""
        return self._load_groups("WHERE g.status = 'active'" if active_only else "", ())

    def tenant_group(self, tenant_id: str, group_id: str, *, enabled_only: bool = False) -> FeatureGroup:
        """The group as `tenant_id` sees it (its overrides applied).

        Raises:
            FeatureGroupNotFoundError: no such group for this tenant (also when another tenant owns it).
            FeatureGroupDisabledError: `enabled_only` and the tenant switched the shared group off.
        """
        groups = self._load_groups("WHERE t.id = %s AND g.id = %s", (tenant_id, group_id), tenant_scoped=True)
        if not groups:
            raise FeatureGroupNotFoundError(group_id, tenant_id)
        if enabled_only and not self._enabled(tenant_id, group_id):
            raise FeatureGroupDisabledError(group_id, tenant_id)
        return groups[0]

    def tenant_groups(
        self, tenant_id: str, *, active_only: bool = False, enabled_only: bool = False
    ) -> list[FeatureGroup]:
        """The tenant's own groups and the shared ones, as it sees them (its overrides applied)."""
        where = "WHERE t.id = %s"
        if active_only:
            where += " AND g.status = 'active'"
        if enabled_only:
            where += " AND coalesce(s.enabled, true)"
        return self._load_groups(where, (tenant_id,), tenant_scoped=True)

    def tenant_scopes(self, tenant_id: str | None = None) -> list[TenantGroup]:
        """One row per (tenant, visible group): shared or owned, enabled, and the tenant's overrides."""
        return fetch_models(
            self._conn,
            TenantGroup,
            "SELECT t.id AS tenant_id, g.id AS feature_group_id,"
            " CASE WHEN g.owner_tenant_id IS NULL THEN 'shared' ELSE 'owned' END AS scope,"
            " coalesce(s.enabled, true) AS enabled, g.status,"
            " coalesce(jsonb_strip_nulls(jsonb_build_object('online_enabled', s.online_enabled,"
            "   'offline_enabled', s.offline_enabled, 'ttl_seconds', s.ttl_seconds,"
            "   'max_failure_rate', s.max_failure_rate, 'freshness_target_seconds', s.freshness_target_seconds)),"
            "   '{}') AS overrides"
            f"{_TENANT_FROM} WHERE %(tenant)s::text IS NULL OR t.id = %(tenant)s ORDER BY t.id, g.id",
            {"tenant": tenant_id},
        )

    def group_settings(self, tenant_id: str) -> dict[str, TenantGroupSettings]:
        """The tenant's settings of shared groups, by group id (groups without any are absent)."""
        rows = self._conn.execute(
            "SELECT feature_group_id, enabled, online_enabled, offline_enabled, ttl_seconds, max_failure_rate,"
            " freshness_target_seconds FROM feature_store.tenant_group_settings WHERE tenant_id = %s",
            (tenant_id,),
        ).fetchall()
        names = ("enabled", "online_enabled", "offline_enabled", "ttl_seconds", "max_failure_rate")
        return {
            str(r[0]): TenantGroupSettings.model_validate(
                {**dict(zip(names, r[1:6], strict=True)), "freshness_target_seconds": r[6]}
            )
            for r in rows
        }

    def _enabled(self, tenant_id: str, group_id: str) -> bool:
        row = self._conn.execute(
            f"SELECT coalesce(s.enabled, true){_TENANT_FROM} WHERE t.id = %s AND g.id = %s", (tenant_id, group_id)
        ).fetchone()
        return bool(row and row[0])

    def _load_groups(self, where: str, params: Sequence[object], *, tenant_scoped: bool = False) -> list[FeatureGroup]:
        """Groups with their features; `tenant_scoped`: as the tenant `t` of `where` sees them."""
        columns, source = (_TENANT_COLUMNS, _TENANT_FROM) if tenant_scoped else (_GROUP_COLUMNS, _PLAIN_FROM)
        return fetch_models(
            self._conn,
            FeatureGroup,
            f"SELECT {columns}, g.owner_tenant_id AS tenant, coalesce(("
            "  SELECT jsonb_agg(jsonb_build_object("
            "     'name', f.name, 'description', f.description, 'source_type', f.source_type,"
            "     'value_type', f.value_type, 'transformation_sql', f.transformation_sql,"
            "     'validation', f.validation_rules, 'status', f.status, 'stream', f.stream,"
            "     'on_demand', f.on_demand, 'aggregation', f.aggregation,"
            "     'function', f.function, 'function_source', f.function_source) ORDER BY f.name)"
            "  FROM feature_store.feature_definitions f WHERE f.feature_group_id = g.id), '[]') AS features"
            f"{source} {where} ORDER BY g.id",
            params,
        )

    # -- writes --------------------------------------------------------------------------------

    def upsert_tenant(self, tenant: Tenant) -> None:
        self._conn.execute(
            "INSERT INTO feature_store.tenants (id, name, status) VALUES (%(id)s, %(name)s, %(status)s)"
            " ON CONFLICT (id) DO UPDATE SET name = excluded.name, status = excluded.status, updated_at = now()",
            tenant.model_dump(mode="json"),
        )

    def upsert_group(self, group: FeatureGroup) -> None:
        """Create or update a group and its features; features no longer declared become inactive."""
        params = group.model_dump(mode="json", exclude={"features"})
        self._conn.execute(
            f"INSERT INTO feature_store.feature_groups ({_GROUP_COLUMNS}, owner_tenant_id) VALUES ("
            " %(id)s, %(entity_type)s, %(description)s, %(online_enabled)s, %(offline_enabled)s,"
            " %(ttl_seconds)s, %(status)s, %(max_failure_rate)s, %(freshness_target_seconds)s,"
            " %(transformation_sql)s, %(tenant)s)"
            " ON CONFLICT (id) DO UPDATE SET entity_type = excluded.entity_type,"
            " owner_tenant_id = excluded.owner_tenant_id,"
            " description = excluded.description, online_enabled = excluded.online_enabled,"
            " offline_enabled = excluded.offline_enabled, ttl_seconds = excluded.ttl_seconds,"
            " status = excluded.status, max_failure_rate = excluded.max_failure_rate,"
            " freshness_target_seconds = excluded.freshness_target_seconds,"
            " transformation_sql = excluded.transformation_sql, updated_at = now()",
            params,
        )
        for feature in group.features:
            self._upsert_feature(group.id, feature)
        self._conn.execute(
            "UPDATE feature_store.feature_definitions SET status = 'inactive', updated_at = now()"
            " WHERE feature_group_id = %s AND status = 'active' AND NOT (name = ANY(%s))",
            (group.id, [f.name for f in group.features]),
        )

    def _upsert_feature(self, group_id: str, feature: FeatureDefinition) -> None:
        self._conn.execute(
            "INSERT INTO feature_store.feature_definitions (feature_group_id, name, description, source_type,"
            " value_type, transformation_sql, validation_rules, status, stream, on_demand, aggregation, function,"
            " function_source)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (feature_group_id, name) DO UPDATE SET description = excluded.description,"
            " source_type = excluded.source_type, value_type = excluded.value_type,"
            " transformation_sql = excluded.transformation_sql, validation_rules = excluded.validation_rules,"
            " status = excluded.status, stream = excluded.stream, on_demand = excluded.on_demand,"
            " aggregation = excluded.aggregation, function = excluded.function,"
            " function_source = excluded.function_source, updated_at = now()",
            (
                group_id,
                feature.name,
                feature.description,
                feature.source_type.value,
                feature.value_type.value,
                feature.transformation_sql,
                Jsonb(feature.validation.model_dump(mode="json", exclude_defaults=True)),
                feature.status.value,
                Jsonb(feature.stream.model_dump(mode="json", exclude_defaults=True)) if feature.stream else None,
                Jsonb(feature.on_demand.model_dump(mode="json")) if feature.on_demand else None,
                Jsonb(feature.aggregation.model_dump(mode="json")) if feature.aggregation else None,
                feature.function,
                feature.function_source,
            ),
        )

    def deactivate_groups(self, group_ids: Iterable[str]) -> None:
        self._conn.execute(
            "UPDATE feature_store.feature_groups SET status = %s, updated_at = now() WHERE id = ANY(%s)",
            (Status.INACTIVE.value, list(group_ids)),
        )

    def replace_group_settings(self, tenant_id: str, settings: dict[str, TenantGroupSettings]) -> None:
        """Make `settings` the tenant's settings of shared groups; groups not in it get their defaults back."""
        self._conn.execute(
            "DELETE FROM feature_store.tenant_group_settings WHERE tenant_id = %s AND NOT (feature_group_id = ANY(%s))",
            (tenant_id, list(settings)),
        )
        for group_id, values in settings.items():
            self._conn.execute(
                "INSERT INTO feature_store.tenant_group_settings (tenant_id, feature_group_id, enabled,"
                " online_enabled, offline_enabled, ttl_seconds, max_failure_rate, freshness_target_seconds)"
                " VALUES (%(tenant)s, %(group)s, %(enabled)s, %(online_enabled)s, %(offline_enabled)s,"
                " %(ttl_seconds)s, %(max_failure_rate)s, %(freshness_target_seconds)s)"
                " ON CONFLICT (tenant_id, feature_group_id) DO UPDATE SET enabled = excluded.enabled,"
                " online_enabled = excluded.online_enabled, offline_enabled = excluded.offline_enabled,"
                " ttl_seconds = excluded.ttl_seconds, max_failure_rate = excluded.max_failure_rate,"
                " freshness_target_seconds = excluded.freshness_target_seconds, updated_at = now()",
                {"tenant": tenant_id, "group": group_id, **values.model_dump(mode="json")},
            )

    # -- source declarations -------------------------------------------------------------------

    def source_declarations(self) -> tuple[list[str], list[SourceTable]]:
        """The source schemas and declared source tables of the applied repo."""
        schemas = [
            str(r[0])
            for r in self._conn.execute("SELECT schema_name FROM feature_store.source_schemas ORDER BY 1").fetchall()
        ]
        tables = fetch_models(
            self._conn,
            SourceTable,
            "SELECT table_name AS table, shared, tenant_column, time_column, key_column, expectations"
            " FROM feature_store.source_tables ORDER BY table_name",
        )
        return schemas, tables

    def replace_sources(self, schemas: Iterable[str], tables: Iterable[SourceTable]) -> None:
        self._conn.execute("DELETE FROM feature_store.source_schemas")
        self._conn.execute("DELETE FROM feature_store.source_tables")
        for schema in schemas:
            self._conn.execute("INSERT INTO feature_store.source_schemas (schema_name) VALUES (%s)", (schema,))
        for table in tables:
            self._conn.execute(
                "INSERT INTO feature_store.source_tables"
                " (table_name, shared, tenant_column, time_column, key_column, expectations)"
                " VALUES (%s, %s, %s, %s, %s, %s)",
                (
                    table.table,
                    table.shared,
                    table.tenant_column,
                    table.time_column,
                    table.key_column,
                    Jsonb(table.expectations_data()),
                ),
            )
