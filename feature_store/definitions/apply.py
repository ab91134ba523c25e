"""Apply: register a loaded feature repo in one go, after checking its sources and SQL in the sandbox."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from pydantic import BaseModel

from feature_store.config import Settings
from feature_store.definitions.models import FeatureGroup, SourceType, Status
from feature_store.definitions.registry import Registry
from feature_store.definitions.repo import SHARED, FeatureRepo
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

    scopes: list[str] = field(default_factory=list)
    """What this apply could change ("shared", "tenant X"): only groups of these scopes missing from
    the repo were deactivated; every other scope was left as it was."""

    changes: dict[str, list[str]] = field(default_factory=dict)
    """Per scope, its changes as "created ...", "updated ...", "deactivated ..." (the report per tenant)."""

    @property
    def changed(self) -> bool:
        return bool(self.created or self.updated or self.deactivated)

    def record(self, scope: str, verb: str, label: str) -> None:
        getattr(self, verb).append(label)
        if verb != "unchanged":
            self.changes.setdefault(_scope_label(scope), []).append(f"{verb} {label}")


# -- applying ----------------------------------------------------------------------------------


def apply_repo(conn: psycopg.Connection, repo: FeatureRepo, settings: Settings) -> ApplyReport:
    """Register the repo; on any problem the registry is unchanged and DefinitionError is raised.

    What transforms may read (grants, expectation policies) is set first and committed, since the
    SQL is checked in the sandbox on a connection of its own; if the repo turns out invalid, the
    stored declarations are put back.
    """
    registry = Registry(conn)
    report = ApplyReport(scopes=[_scope_label(s) for s in sorted(repo.scopes, key=lambda s: (s != SHARED, s))])
    owns_shared = SHARED in repo.scopes
    problems = (
        _check_sources(conn, repo)
        + _check_scopes(registry, repo)
        + _check_stream_mappings(repo)
        + _check_on_demand(repo)
    )
    if problems:
        raise DefinitionError(problems)
    stored_schemas, stored_sources = registry.source_declarations()
    if owns_shared:  # API sources' tables exist before grants are synced, so transforms may read them
        with conn.transaction():
            for api_source in repo.api_sources:
                api.create_table(conn, api_source)
    # A tenant's repo declares no sources: its SQL is checked against what the platform declared.
    schemas = repo.source_schemas if owns_shared else stored_schemas
    relations = sources.sync(conn, schemas, repo.sources if owns_shared else stored_sources)
    try:
        problems = list(_check_sql(conn, repo, settings, relations, schemas))
        if problems:
            raise DefinitionError(problems)
        with conn.transaction():
            existing_tenants = {t.id: t for t in registry.list_tenants()}
            existing_groups = {g.id: g for g in registry.list_groups()}
            if owns_shared:
                registry.replace_sources(repo.source_schemas, repo.sources)
            for tenant in repo.tenants:
                _classify(report, SHARED, f"tenant {tenant.id}", existing_tenants.get(tenant.id), tenant)
                registry.upsert_tenant(tenant)
            for group in repo.groups:
                old = existing_groups.get(group.id)
                scope = group.tenant or SHARED
                _classify(report, scope, _group_label(group), old, group)
                if old is not None:
                    declared = {f.name for f in group.features}
                    for f in old.features:
                        if f.name not in declared and f.status is Status.ACTIVE:
                            report.record(scope, "deactivated", f"feature {group.id}:{f.name}")
                registry.upsert_group(group)
            # Only groups of the scopes this repo owns can be missing from it; others are not its to touch.
            gone = [
                g
                for g in existing_groups.values()
                if (g.tenant or SHARED) in repo.scopes
                and g.id not in {x.id for x in repo.groups}
                and g.status is Status.ACTIVE
            ]
            registry.deactivate_groups(g.id for g in gone)
            for g in gone:
                report.record(g.tenant or SHARED, "deactivated", _group_label(g))
            for tenant_id in (s for s in repo.scopes if s != SHARED):
                _apply_settings(registry, report, tenant_id, repo.group_settings.get(tenant_id, {}))
            if owns_shared:  # alert routing and API sources are the platform's, like source tables
                routing.store_routing(conn, repo.alerts or routing.AlertRouting())
                api.store_sources(conn, repo.api_sources)
    except BaseException:
        sources.sync(conn, stored_schemas, stored_sources)
        raise
    report.unreadable = [f"{r.kind} {r.name}: {r.problem}" for r in relations if not r.readable]
    return report


def _scope_label(scope: str) -> str:
    return SHARED if scope == SHARED else f"tenant {scope}"


def _group_label(group: FeatureGroup) -> str:
    return f"feature group {group.id}" + (f" (tenant {group.tenant})" if group.tenant else "")


def _apply_settings(registry: Registry, report: ApplyReport, tenant_id: str, declared: dict[str, Any]) -> None:
    """Replace the tenant's settings of shared groups with the declared ones, reporting each difference."""
    stored = registry.group_settings(tenant_id)
    for group_id in sorted(set(stored) | set(declared)):
        label = f"settings of shared feature group {group_id} for tenant {tenant_id}"
        new = declared.get(group_id)
        if new is None:
            report.record(tenant_id, "deactivated", f"{label}: back to the group's own")
        else:
            _classify(report, tenant_id, f"{label}: {_describe_settings(new)}", stored.get(group_id), new)
    registry.replace_group_settings(tenant_id, declared)


def _describe_settings(settings: Any) -> str:
    overrides = ", ".join(f"{k}={v}" for k, v in settings.overrides().items())
    state = "enabled" if settings.enabled else "disabled"
    return f"{state}{'; ' + overrides if overrides else ''}"


def _check_scopes(registry: Registry, repo: FeatureRepo) -> list[str]:
    """Owners that exist, ids not taken by a scope this repo does not own, settings only of shared groups."""
    problems = []
    tenants = {t.id for t in registry.list_tenants()} | {t.id for t in repo.tenants}
    existing = {g.id: g for g in registry.list_groups()}
    declared = {g.id: g for g in repo.groups}
    for scope in repo.scopes:
        if scope != SHARED and scope not in tenants:
            problems.append(f"tenant {scope!r}: a file declares `tenant: {scope}` but no such tenant is registered")
    for group in repo.groups:
        old = existing.get(group.id)
        old_scope = None if old is None else old.tenant or SHARED
        if old_scope is not None and old_scope != (group.tenant or SHARED) and old_scope not in repo.scopes:
            problems.append(
                f"{repo.where('group', group.id)}: feature group {group.id!r}: the id is taken by a group of"
                " another scope; choose another id"
            )
    for tenant_id, settings in repo.group_settings.items():
        for group_id in settings:
            target = declared.get(group_id) or existing.get(group_id)
            where = repo.where("settings", tenant_id, group_id)
            if target is None or (target.tenant is not None and target.tenant != tenant_id):
                problems.append(f"{where}: tenant {tenant_id!r}: group_settings: no shared feature group {group_id!r}")
            elif target.tenant is not None:
                problems.append(
                    f"{where}: tenant {tenant_id!r}: group_settings: feature group {group_id!r} is the tenant's own;"
                    " set its values on the group itself"
                )
    return problems


def _classify(report: ApplyReport, scope: str, label: str, old: BaseModel | None, new: BaseModel) -> None:
    if old is None:
        verb = "created"
    elif _comparable(old) != _comparable(new):
        verb = "updated"
    else:
        verb = "unchanged"
    report.record(scope, verb, label)


def _comparable(model: BaseModel) -> dict[str, Any]:
    """A model as data, with a group's active features keyed by name (their order carries no meaning)."""
    data = model.model_dump(mode="json")
    if "features" in data:
        data["features"] = {f["name"]: f for f in data["features"] if f["status"] == Status.ACTIVE.value}
    return data


def _check_stream_mappings(repo: FeatureRepo) -> list[str]:
    """Each stream feature's event mapping names a known event, one of its ids and a payload field."""
    from feature_store.stream.mapping import check_mapping

    return [
        f"{repo.where('feature', group.id, feature.name, 'stream')}: feature group {group.id!r}:"
        f" feature {feature.name!r}: {problem}"
        for group in repo.groups
        for feature in group.features
        for problem in check_mapping(feature)
    ]


def _check_on_demand(repo: FeatureRepo) -> list[str]:
    """Each on-demand function imports and its inputs are stored features of the group's entity type."""
    from feature_store.serving.on_demand import load_function

    groups = {g.id: g for g in repo.groups}
    problems = []
    for group in repo.groups:
        for feature in group.features:
            spec = feature.on_demand
            if spec is None:
                continue
            where = f"{repo.where('feature', group.id, feature.name, 'on_demand')}: feature group {group.id!r}:"
            where += f" feature {feature.name!r}: on_demand"
            try:
                load_function(spec.function)
            except (ImportError, AttributeError, TypeError) as exc:
                problems.append(f"{where}.function: cannot load {spec.function}: {exc}")
            for ref in spec.inputs:
                group_id, _, name = ref.partition(":")
                source = groups.get(group_id)
                found = source.feature(name) if source else None
                if source is None or found is None:
                    problems.append(f"{where}.inputs: {ref!r} is not a feature of this repo")
                elif source.entity_type != group.entity_type:
                    problems.append(
                        f"{where}.inputs: {ref!r} is a {source.entity_type} feature, not {group.entity_type}"
                    )
                elif found.source_type is SourceType.ON_DEMAND:
                    problems.append(f"{where}.inputs: {ref!r} is on-demand itself; inputs must be stored features")
    return problems


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
    conn: psycopg.Connection,
    repo: FeatureRepo,
    settings: Settings,
    relations: list[sources.SourceRelation],
    source_schemas: list[str],
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
                transform.describe(session, feature, source_schemas=source_schemas, group_sql=group.transformation_sql)
            except (transform.SqlShapeError, FeatureStoreError) as exc:
                where = (
                    repo.where("feature", group.id, feature.name, "transformation_sql")
                    if feature.transformation_sql is not None
                    else repo.where("group", group.id, "transformation_sql")
                )
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
