"""On-demand features: Python functions over stored features of the same entity and request data, at read time.

A read naming on-demand features also reads their inputs (in the same round trip as the rest), then
calls each function once per entity with `(features, request)`: `features` maps each input's feature
name (and its `group:feature` ref) to the entity's value (None when missing or expired), `request` is
the read's request data. The result is checked by the feature's value type and rules; a refused value
comes back with status `invalid`; a function that raises fails the read with OnDemandError naming
tenant, feature and entity.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from feature_store.definitions.models import FeatureDefinition, FeatureGroup, SourceType
from feature_store.errors import OnDemandError
from feature_store.serving.features import FeatureResolver
from feature_store.serving.models import OnlineFeatures, OnlineValueStatus
from feature_store.stores.online.base import FeatureSpec
from feature_store.types import FeatureRef, FeatureValue

OnDemandFunction = Callable[[Mapping[str, FeatureValue], Mapping[str, Any]], FeatureValue]

_FUNCTIONS: dict[str, OnDemandFunction] = {}


def load_function(path: str) -> OnDemandFunction:
    """Import `module:function` (cached); ImportError/AttributeError/TypeError say what is missing."""
    found = _FUNCTIONS.get(path)
    if found is None:
        module, _, name = path.partition(":")
        candidate = getattr(importlib.import_module(module), name)
        if not callable(candidate):
            raise TypeError(f"{path} is not callable")
        found = _FUNCTIONS[path] = candidate
    return found


@dataclass
class ReadPlan:
    """What one read needs: the stored features to fetch and the on-demand ones to compute from them."""

    stored: list[FeatureSpec] = field(default_factory=list)
    on_demand: list[tuple[FeatureRef, FeatureGroup, FeatureDefinition]] = field(default_factory=list)


def plan_read(resolver: FeatureResolver, tenant_id: str, refs: Sequence[FeatureRef], *, entity_type: str) -> ReadPlan:
    """The stored features to fetch and the on-demand ones to compute, as the tenant sees them."""
    plan = ReadPlan()
    wanted: dict[str, FeatureSpec] = {}
    for ref in refs:
        group, feature = resolver.definition(tenant_id, ref, entity_type=entity_type)
        if feature.source_type is SourceType.ON_DEMAND and feature.on_demand is not None:
            plan.on_demand.append((ref, group, feature))
            for spec in resolver.specs(tenant_id, feature.on_demand.inputs, entity_type=entity_type):
                wanted.setdefault(spec.ref, spec)
        else:
            for spec in resolver.specs(tenant_id, [ref], entity_type=entity_type):
                wanted.setdefault(spec.ref, spec)
    plan.stored = list(wanted.values())
    return plan


def complete(
    stored: OnlineFeatures,
    plan: ReadPlan,
    *,
    tenant_id: str,
    requested: Sequence[FeatureRef],
    request_data: Mapping[str, Any] | None,
) -> OnlineFeatures:
    """The read as requested: stored columns as read, on-demand columns computed per entity."""
    request = dict(request_data or {})
    result = OnlineFeatures(stored.entity_ids, list(requested))
    computed = {ref: (group, feature) for ref, group, feature in plan.on_demand}
    for ref in requested:
        if ref not in computed:
            result.set_column(ref, *stored.column(ref))
            continue
        group, feature = computed[ref]
        spec = feature.on_demand
        assert spec is not None
        missing = [name for name in spec.request_data if name not in request]
        if missing:
            raise OnDemandError(
                f"tenant {tenant_id!r}: on-demand feature {group.id}:{feature.name} needs request data"
                f" {', '.join(missing)}; send them as request_data"
            )
        function = load_function(spec.function)
        columns = [(i, stored.column(i)) for i in spec.inputs]
        values: list[FeatureValue] = []
        events: list[int | None] = []
        statuses: list[OnlineValueStatus] = []
        for e, entity_id in enumerate(stored.entity_ids):
            inputs: dict[str, FeatureValue] = {}
            latest: int | None = None
            for ref_in, (vals, times, _) in columns:
                inputs[ref_in] = inputs[ref_in.partition(":")[2]] = vals[e]
                if times[e] is not None and vals[e] is not None:
                    latest = times[e] if latest is None else max(latest, times[e])  # type: ignore[type-var]
            try:
                value = function(inputs, request)
            except Exception as exc:  # the repo's code: whatever it raises is reported, never swallowed
                raise OnDemandError(
                    f"tenant {tenant_id!r}: on-demand feature {group.id}:{feature.name} ({spec.function}) raised"
                    f" for entity {entity_id!r}: {type(exc).__name__}: {exc}"
                ) from exc
            problem = violation(value, feature)
            if problem is None:
                values.append(value)
                statuses.append(OnlineValueStatus.PRESENT if value is not None else OnlineValueStatus.MISSING)
            else:
                values.append(None)
                statuses.append(OnlineValueStatus.INVALID)
            events.append(latest)
        result.set_column(ref, values, events, statuses)
    return result


def violation(value: FeatureValue, feature: FeatureDefinition) -> str | None:
    """The first of the feature's rules (and its value type) the value breaks, or None."""
    rules = feature.validation
    if value is None:
        return "not_null" if rules.not_null else None
    if not feature.value_type.accepts(value):
        return "value_type"
    if isinstance(value, float) and not math.isfinite(value):
        return "value_type"
    if rules.min is not None and value < rules.min:  # type: ignore[operator]
        return "min"
    if rules.max is not None and value > rules.max:  # type: ignore[operator]
        return "max"
    if rules.allowed_values is not None and value not in rules.allowed_values:
        return "allowed_values"
    return None
