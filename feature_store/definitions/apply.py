"""Apply: register a loaded feature repo in one go, after checking its sources and SQL in the sandbox."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from pydantic import BaseModel

from feature_store.config import Settings
from feature_store.definitions.models import SourceType, Status
from feature_store.definitions.registry import Registry
from feature_store.definitions.repo import FeatureRepo
from feature_store.errors import DefinitionError, FeatureStoreError
from feature_store.monitoring import routing
from feature_store.pipeline import transform
from feature_store.pipeline.sandbox import sandbox_session
from feature_store.sources import api
from feature_store.sources import isolation as sources


@dataclass
class ApplyReport:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    deactivated: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    """Tables of the source schemas that transforms may not read, each with the reason."""

    @property
    def changed(self) -> bool:
        return bool(self.created or self.updated or self.deactivated)


# -- applying ----------------------------------------------------------------------------------


def apply_repo(conn: psycopg.Connection, repo: FeatureRepo, settings: Settings) -> ApplyReport:
    """Register the repo; on any problem the registry is unchanged and DefinitionError is raised.

    What transforms may read (grants, expectation policies) is set first and committed, since the
    SQL is checked in the sandbox on a connection of its own; if the repo turns out invalid, the
    stored declarations are put back.
    """
    registry = Registry(conn)
    report = ApplyReport()
    problems = _check_sources(conn, repo)
    if problems:
        raise DefinitionError(problems)
    stored_schemas, stored_sources = registry.source_declarations()
    with conn.transaction():  # API sources' tables exist before grants are synced, so transforms may read them
        for api_source in repo.api_sources:
            api.create_table(conn, api_source)
    relations = sources.sync(conn, repo.source_schemas, repo.sources)
    try:
        problems = list(_check_sql(conn, repo, settings, relations))
        if problems:
            raise DefinitionError(problems)
        with conn.transaction():
            existing_tenants = {t.id: t for t in registry.list_tenants()}
            existing_groups = {g.id: g for g in registry.list_groups()}
            registry.replace_sources(repo.source_schemas, repo.sources)
            for tenant in repo.tenants:
                _classify(report, f"tenant {tenant.id}", existing_tenants.get(tenant.id), tenant)
                registry.upsert_tenant(tenant)
            for group in repo.groups:
                old = existing_groups.get(group.id)
                _classify(report, f"feature group {group.id}", old, group)
                if old is not None:
                    declared = {f.name for f in group.features}
                    report.deactivated.extend(
                        f"feature {group.id}:{f.name}"
                        for f in old.features
                        if f.name not in declared and f.status is Status.ACTIVE
                    )
                registry.upsert_group(group)
            gone = [
                g
                for g in existing_groups.values()
                if g.id not in {x.id for x in repo.groups} and g.status is Status.ACTIVE
            ]
            registry.deactivate_groups(g.id for g in gone)
            routing.store_routing(conn, repo.alerts or routing.AlertRouting())
            api.store_sources(conn, repo.api_sources)
            report.deactivated.extend(f"feature group {g.id}" for g in gone)
    except BaseException:
        sources.sync(conn, stored_schemas, stored_sources)
        raise
    report.unreadable = [f"{r.kind} {r.name}: {r.problem}" for r in relations if not r.readable]
    return report


def _classify(report: ApplyReport, label: str, old: BaseModel | None, new: BaseModel) -> None:
    if old is None:
        report.created.append(label)
    elif _comparable(old) != _comparable(new):
        report.updated.append(label)
    else:
        report.unchanged.append(label)


def _comparable(model: BaseModel) -> dict[str, Any]:
    """A model as data, with a group's active features keyed by name (their order carries no meaning)."""
    data = model.model_dump(mode="json")
    if "features" in data:
        data["features"] = {f["name"]: f for f in data["features"] if f["status"] == Status.ACTIVE.value}
    return data


def _check_sources(conn: psycopg.Connection, repo: FeatureRepo) -> list[str]:
    """Schemas that exist, declared tables and columns that exist, and no privileged function in reach."""
    problems = []
    for schema in repo.source_schemas:
        if conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone() is None:
            problems.append(f"source_schemas: schema {schema!r} does not exist in the database")
    for decl, problem in sources.check_declarations(conn, repo.source_schemas, repo.sources):
        problems.append(f"{repo.where('source', decl.table)}: source {decl.table!r}: {problem}")
    for function in sources.unsafe_functions(conn):
        problems.append(
            f"function {function} is SECURITY DEFINER and executable by transforms: feature SQL could run"
            " with its owner's rights; `REVOKE EXECUTE ON FUNCTION ... FROM PUBLIC` (or drop SECURITY DEFINER)"
        )
    return problems


def _check_sql(
    conn: psycopg.Connection, repo: FeatureRepo, settings: Settings, relations: list[sources.SourceRelation]
) -> Iterable[str]:
    """Plan every batch feature's SQL in the sandbox, as the transform will run it."""
    features = [(g, f) for g in repo.groups for f in g.features if f.source_type is SourceType.BATCH]
    if not features:
        return
    refused = {r.name.split(".", 1)[1]: r for r in relations if not r.readable}
    with sandbox_session(
        conn, database_url=settings.database_url, password=settings.sandbox_password, tenant_id="", timeout_s=10.0
    ) as session:
        for group, feature in features:
            try:
                transform.describe(session, feature, source_schemas=repo.source_schemas)
            except (transform.SqlShapeError, FeatureStoreError) as exc:
                where = repo.where("feature", group.id, feature.name, "transformation_sql")
                yield (
                    f"{where}: feature group {group.id!r}: feature {feature.name!r}:"
                    f" transformation_sql {_explain_refusal(str(exc), refused)}"
                )


def _explain_refusal(message: str, refused: dict[str, sources.SourceRelation]) -> str:
    """Say why a table is not readable when PostgreSQL only says "permission denied for table x"."""
    found = _PERMISSION_DENIED.search(message)
    relation = refused.get(found.group(1)) if found else None
    if relation is None:
        return message
    return f"reads {relation.name}, which transforms may not read: {relation.problem}"


_PERMISSION_DENIED = re.compile(r"permission denied for (?:table|view|materialized view|foreign table) \"?([^\s\"]+)")
