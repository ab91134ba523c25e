"""The registry: tenants, feature groups and feature definitions stored in PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import psycopg
from psycopg.types.json import Jsonb

from feature_store.db import fetch_models
from feature_store.definitions.models import FeatureDefinition, FeatureGroup, SourceTable, Status, Tenant
from feature_store.errors import FeatureGroupNotFoundError, TenantNotFoundError

_GROUP_COLUMNS = (
    "id, entity_type, description, online_enabled, offline_enabled, ttl_seconds, status,"
    " max_failure_rate, freshness_target_seconds"
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
        groups = self._load_groups("WHERE g.id = %s", (group_id,))
        if not groups:
            raise FeatureGroupNotFoundError(group_id)
        return groups[0]

    def list_groups(self, *, active_only: bool = False) -> list[FeatureGroup]:
        return self._load_groups("WHERE g.status = 'active'" if active_only else "", ())

    def _load_groups(self, where: str, params: Sequence[object]) -> list[FeatureGroup]:
        return fetch_models(
            self._conn,
            FeatureGroup,
            f"SELECT {_GROUP_COLUMNS}, coalesce(("
            "  SELECT jsonb_agg(jsonb_build_object("
            "     'name', f.name, 'description', f.description, 'source_type', f.source_type,"
            "     'value_type', f.value_type, 'transformation_sql', f.transformation_sql,"
            "     'validation', f.validation_rules, 'status', f.status, 'aggregation', f.aggregation,"
            "     'function', f.function, 'function_source', f.function_source) ORDER BY f.name)"
            "  FROM feature_store.feature_definitions f WHERE f.feature_group_id = g.id), '[]') AS features"
            f" FROM feature_store.feature_groups g {where} ORDER BY g.id",
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
            f"INSERT INTO feature_store.feature_groups ({_GROUP_COLUMNS}) VALUES ("
            " %(id)s, %(entity_type)s, %(description)s, %(online_enabled)s, %(offline_enabled)s,"
            " %(ttl_seconds)s, %(status)s, %(max_failure_rate)s, %(freshness_target_seconds)s)"
            " ON CONFLICT (id) DO UPDATE SET entity_type = excluded.entity_type,"
            " description = excluded.description, online_enabled = excluded.online_enabled,"
            " offline_enabled = excluded.offline_enabled, ttl_seconds = excluded.ttl_seconds,"
            " status = excluded.status, max_failure_rate = excluded.max_failure_rate,"
            " freshness_target_seconds = excluded.freshness_target_seconds, updated_at = now()",
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
            " value_type, transformation_sql, validation_rules, status, aggregation, function, function_source)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (feature_group_id, name) DO UPDATE SET description = excluded.description,"
            " source_type = excluded.source_type, value_type = excluded.value_type,"
            " transformation_sql = excluded.transformation_sql, validation_rules = excluded.validation_rules,"
            " status = excluded.status, aggregation = excluded.aggregation, function = excluded.function,"
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
