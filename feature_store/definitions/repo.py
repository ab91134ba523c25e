"""Feature repo as code: YAML files declaring tenants, feature groups and features, applied in one go.

`apply` validates everything first (schema, types, rules, and each batch feature's SQL against the
live database), then writes all of it in one transaction: a repo is applied whole or not at all.
Every problem is reported with file:line, the object and the field."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as PydanticValidationError

from feature_store.definitions.models import (
    FUNCTION_NAME_PATTERN,
    WINDOW_LENGTH_PATTERN,
    FeatureGroup,
    Identifier,
    SourceTable,
    Tenant,
    TenantGroupSettings,
)
from feature_store.errors import DefinitionError
from feature_store.monitoring.routing import AlertRouting
from feature_store.sources.api import ApiSource

M = TypeVar("M", bound=BaseModel)

Path_ = tuple[str | int, ...]


class RepoFile(BaseModel):
    """Top level of one YAML file of a feature repo."""

    model_config = ConfigDict(extra="forbid")

    source_schemas: list[Identifier] = Field(default_factory=list)
    """Schemas that transformation SQL may read: their tenant-isolated tables, and those declared shared."""

    sources: list[dict[str, Any]] = Field(default_factory=list)
    """Source tables declared shared across tenants, or with expectations on their rows."""

    tenants: list[dict[str, Any]] = Field(default_factory=list)
    feature_groups: list[dict[str, Any]] = Field(default_factory=list)

    alerts: dict[str, Any] | None = None
    """Alert channels and routes (feature_store.monitoring.routing); in one file of the repo at most."""

    api_sources: list[dict[str, Any]] = Field(default_factory=list)
    """HTTP APIs landed into source tables before the transforms run (feature_store.sources.api)."""

    tenant: Identifier | None = None
    """The tenant this file belongs to (e.g. one folder per tenant): its groups are that tenant's own."""

    group_settings: dict[Identifier, dict[str, Any]] = Field(default_factory=dict)
    """The file's tenant's settings of shared groups, by group id (`enabled: false`, overrides)."""


SHARED = "shared"
"""The scope of shared groups (and of tenants and sources) in `FeatureRepo.scopes`."""


@dataclass
class FeatureRepo:
    """A parsed, validated repo, with where each object was declared."""

    source_schemas: list[str] = field(default_factory=list)
    sources: list[SourceTable] = field(default_factory=list)
    tenants: list[Tenant] = field(default_factory=list)
    groups: list[FeatureGroup] = field(default_factory=list)
    alerts: AlertRouting | None = None
    api_sources: list[ApiSource] = field(default_factory=list)
    group_settings: dict[str, dict[str, TenantGroupSettings]] = field(default_factory=dict)
    """tenant id -> shared group id -> that tenant's settings of it."""

    scopes: list[str] = field(default_factory=list)
    """What the repo owns, so what `apply` may change: SHARED (a file without `tenant:`) and tenant ids."""

    locations: dict[tuple[str, ...], str] = field(default_factory=dict)
    """('group', id) / ('feature', group, name, key) -> "file:line" for messages."""

    def where(self, *key: str) -> str:
        for n in range(len(key), 0, -1):
            if key[:n] in self.locations:
                return self.locations[key[:n]]
        return "<repo>"


# -- loading -----------------------------------------------------------------------------------


def load_repo(path: str | Path) -> FeatureRepo:
    """Parse and validate every `*.yaml`/`*.yml` file under `path` (or the single file `path`)."""
    root = Path(path)
    if root.is_dir():
        files = sorted(p for p in root.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())
        if not files:
            raise DefinitionError([f"{root}: no *.yaml files found in the feature repo"])
    elif root.is_file():
        files = [root]
    else:
        raise DefinitionError([f"{root}: no such file or directory"])

    folder = root if root.is_dir() else root.parent
    repo = FeatureRepo()
    problems: list[str] = []
    seen: dict[tuple[str, str], str] = {}
    for file in files:
        display = str(file)
        try:
            data, lines = _compose(file.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f":{mark.line + 1}" if mark else ""
            problems.append(f"{display}{line}: not valid YAML: {getattr(exc, 'problem', None) or exc}")
            continue
        if data is None:
            continue

        def at(path: Path_, _lines: dict[Path_, int] = lines, _file: str = display) -> str:
            return f"{_file}:{_nearest_line(_lines, path)}"

        try:
            top = RepoFile.model_validate(data)
        except PydanticValidationError as exc:
            problems.extend(_format_errors(exc, (), at, "repo"))
            continue
        scope = top.tenant or SHARED
        if scope not in repo.scopes:
            repo.scopes.append(scope)
        if top.tenant is not None:
            problems.extend(_platform_only(top, at))
            _load_settings(repo, top.tenant, top.group_settings, at, problems)
        elif top.group_settings:
            problems.append(f"{at(('group_settings',))}: group_settings belong in a tenant's file (`tenant: <id>`)")
        for schema in top.source_schemas:
            if schema not in repo.source_schemas:
                repo.source_schemas.append(schema)
        for i, source in _load_items(SourceTable, top.sources, "sources", "source", "table", at, seen, problems):
            repo.sources.append(source)
            repo.locations[("source", source.table)] = at(("sources", i))
        for _, tenant in _load_items(Tenant, top.tenants, "tenants", "tenant", "id", at, seen, problems):
            repo.tenants.append(tenant)
        for i, raw in enumerate(top.feature_groups):
            label = f"feature group {raw.get('id', f'#{i + 1}')!r}"
            if isinstance(raw, dict) and "tenant" in raw and raw["tenant"] != top.tenant:
                problems.append(
                    f"{at(('feature_groups', i, 'tenant'))}: {label}: tenant: declare a tenant's own groups in a"
                    " file of that tenant (top-level `tenant: <id>`), not per group"
                )
                continue
            if top.tenant is not None and isinstance(raw, dict):
                raw = {**raw, "tenant": top.tenant}
            raw = _with_function_sources(raw, folder, lambda p, _i=i: at(("feature_groups", _i, *p)), label, problems)
            try:
                group = FeatureGroup.model_validate(raw)
            except PydanticValidationError as exc:
                problems.extend(_format_errors(exc, ("feature_groups", i), at, label, raw))
                continue
            if _duplicate(seen, ("group", group.id), at(("feature_groups", i)), label, problems):
                continue
            repo.groups.append(group)
            repo.locations[("group", group.id)] = at(("feature_groups", i))
            repo.locations[("group", group.id, "transformation_sql")] = at(("feature_groups", i, "transformation_sql"))
            for j, feature in enumerate(group.features):
                base: Path_ = ("feature_groups", i, "features", j)
                repo.locations[("feature", group.id, feature.name)] = at(base)
                repo.locations[("feature", group.id, feature.name, "transformation_sql")] = at(
                    (*base, "transformation_sql")
                )
        if top.alerts is not None:
            _load_alerts(repo, top.alerts, at, problems)
        api_sources = _load_items(ApiSource, top.api_sources, "api_sources", "API source", "name", at, seen, problems)
        for i, api_source in api_sources:
            repo.api_sources.append(api_source)
            repo.locations[("api source", api_source.name)] = at(("api_sources", i))
    _check_routes(repo, problems)
    if problems:
        raise DefinitionError(problems)
    return repo


def _load_items(
    model: type[M],
    items: list[Any],
    section: str,
    kind: str,
    key: str,
    at: Any,
    seen: dict[tuple[str, str], str],
    problems: list[str],
) -> Iterator[tuple[int, M]]:
    """Each item of a list section (with its index) as a `model`; an invalid item or a second one with
    the same `key` is a problem instead, named by its `kind` and key."""
    for i, raw in enumerate(items):
        label = f"{kind} {raw.get(key, f'#{i + 1}')!r}"
        try:
            item = model.model_validate(raw)
        except PydanticValidationError as exc:
            problems.extend(_format_errors(exc, (section, i), at, label))
            continue
        if not _duplicate(seen, (kind.lower(), getattr(item, key)), at((section, i)), label, problems):
            yield i, item


def _load_alerts(repo: FeatureRepo, raw: dict[str, Any], at: Any, problems: list[str]) -> None:
    if repo.alerts is not None:
        problems.append(f"{at(('alerts',))}: alerts are declared in {repo.where('alerts')} already; keep one")
        return
    try:
        repo.alerts = AlertRouting.model_validate(raw)
    except PydanticValidationError as exc:
        problems.extend(_format_errors(exc, ("alerts",), at, "alerts"))
        return
    repo.locations[("alerts",)] = at(("alerts",))


def _check_routes(repo: FeatureRepo, problems: list[str]) -> None:
    """A route naming a group the repo does not declare is a typo: it would route nothing."""
    if repo.alerts is None:
        return
    declared = {g.id for g in repo.groups}
    for i, route in enumerate(repo.alerts.routes):
        unknown = [g for g in route.groups if g != "*" and g not in declared]
        if unknown:
            problems.append(
                f"{repo.where('alerts')}: alerts route {i + 1} names unknown feature group(s) {', '.join(unknown)};"
                f" declared groups: {', '.join(sorted(declared))}"
            )


def _with_function_sources(
    raw: dict[str, Any], folder: Path, at: Any, label: str, problems: list[str]
) -> dict[str, Any]:
    """The group with each function feature's module source read from the repo's folder.

    The source travels with the definition into the registry, so every worker runs the code that was
    applied, whatever its checkout holds.
    """
    features = raw.get("features")
    if not isinstance(features, list):
        return raw
    out = []
    for j, feature in enumerate(features):
        name = feature.get("function") if isinstance(feature, dict) else None
        if isinstance(name, str) and ":" in name:
            module = name.split(":", 1)[0]
            file = folder.joinpath(*module.split(".")).with_suffix(".py")
            try:
                feature = {**feature, "function_source": file.read_text(encoding="utf-8")}
            except OSError as exc:
                problems.append(
                    f"{at(('features', j, 'function'))}: {label}: feature {feature.get('name')!r}: function"
                    f" {name}: cannot read {file} ({exc.strerror}); put the module in the repo's folder"
                )
        out.append(feature)
    return {**raw, "features": out}


def _platform_only(top: RepoFile, at: Any) -> list[str]:
    """Tenants, sources, API sources and alert routing belong to the platform: a tenant's file cannot
    declare or replace them."""
    return [
        f"{at((key,))}: {key}: a tenant's file (tenant {top.tenant!r}) cannot declare {key}; they belong in a"
        " shared file of the platform's repo"
        for key in ("source_schemas", "sources", "tenants", "api_sources", "alerts")
        if getattr(top, key)
    ]


def _load_settings(
    repo: FeatureRepo, tenant: str, raw: dict[str, dict[str, Any]], at: Any, problems: list[str]
) -> None:
    settings = repo.group_settings.setdefault(tenant, {})
    for group_id, values in raw.items():
        label = f"tenant {tenant!r}: settings of feature group {group_id!r}"
        try:
            parsed = TenantGroupSettings.model_validate(values)
        except PydanticValidationError as exc:
            problems.extend(_format_errors(exc, ("group_settings", group_id), at, label))
            continue
        if group_id in settings:
            problems.append(f"{at(('group_settings', group_id))}: {label}: declared twice")
            continue
        settings[group_id] = parsed
        repo.locations[("settings", tenant, group_id)] = at(("group_settings", group_id))


def _duplicate(
    seen: dict[tuple[str, str], str], key: tuple[str, str], where: str, label: str, problems: list[str]
) -> bool:
    if key in seen:
        problems.append(f"{where}: {label}: already declared at {seen[key]}")
        return True
    seen[key] = where
    return False


def _compose(text: str) -> tuple[Any, dict[Path_, int]]:
    """Load YAML keeping the line of every mapping key and sequence item, for error messages."""
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    lines: dict[Path_, int] = {}
    if node is None:
        return None, lines
    constructor = yaml.SafeLoader("")

    def walk(n: yaml.Node, path: Path_) -> Any:
        lines.setdefault(path, n.start_mark.line + 1)
        if isinstance(n, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for key_node, value_node in n.value:
                key = constructor.construct_object(key_node, deep=True)
                lines[(*path, key)] = key_node.start_mark.line + 1
                out[key] = walk(value_node, (*path, key))
            return out
        if isinstance(n, yaml.SequenceNode):
            return [walk(item, (*path, i)) for i, item in enumerate(n.value)]
        return constructor.construct_object(n, deep=True)

    return walk(node, ()), lines


def _nearest_line(lines: dict[Path_, int], path: Path_) -> int:
    for n in range(len(path), -1, -1):
        if path[:n] in lines:
            return lines[path[:n]]
    return 1


def _format_errors(
    exc: PydanticValidationError, prefix: Path_, at: Any, label: str, raw: dict[str, Any] | None = None
) -> list[str]:
    messages = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        if isinstance(feature := (error.get("ctx") or {}).get("feature"), int):  # a group's error about a feature
            loc = (*loc, "features", feature)
        where = at((*prefix, *loc))
        field_path = _field_path(loc, raw)
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        elif error["type"] == "string_pattern_mismatch":
            message = _PATTERN_MESSAGES.get(
                str((error.get("ctx") or {}).get("pattern")),
                "must be 1-63 letters, digits, '_', '.' or '-', starting with a letter or digit",
            )
        messages.append(f"{where}: {label}{': ' + field_path if field_path else ''}: {message}")
    return messages


_PATTERN_MESSAGES = {
    WINDOW_LENGTH_PATTERN: "must be a number of hours or days, e.g. 1h, 24h, 7d",
    FUNCTION_NAME_PATTERN: "must be module:function, e.g. text_features:question_score",
}


def _field_path(loc: tuple[Any, ...], raw: dict[str, Any] | None) -> str:
    """Readable field path; features are named by their `name` rather than their index."""
    parts: list[str] = []
    i = 0
    while i < len(loc):
        part = loc[i]
        if part == "features" and raw is not None and i + 1 < len(loc) and isinstance(loc[i + 1], int):
            features = raw.get("features") or []
            index = loc[i + 1]
            name = features[index].get("name") if index < len(features) and isinstance(features[index], dict) else None
            parts.append(f"feature {name!r}" if name else f"features[{index}]")
            i += 2
            continue
        parts.append(f"[{part}]" if isinstance(part, int) else str(part))
        i += 1
    return ".".join(parts).replace(".[", "[")
