"""The event -> feature mapping declared in the repo, resolved against the registry for one tenant.

Only active `stream` features of active groups with an event mapping are ever touched; an event type
no feature maps is accepted and has no effect. The mapping is checked at `apply` against the event
models (known event type, an id field of that event, a payload field it has).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from feature_store.definitions.models import FeatureDefinition, FeatureGroup, StreamOp, ValueType
from feature_store.definitions.registry import Registry
from feature_store.stream.events import EVENT_TYPES, id_fields, payload_fields

CACHE_SECONDS = 10.0
"""How long a consumer works from its copy of the registry before reloading it (an `apply` shows up after that)."""


@dataclass(frozen=True)
class StreamTarget:
    """One stream feature an event type updates."""

    group_id: str
    feature: str
    value_type: ValueType
    op: StreamOp
    entity_field: str
    payload_field: str | None
    alpha: float
    default: object
    ttl_seconds: int | None
    offline: bool


def check_mapping(feature: FeatureDefinition) -> list[str]:
    """Problems of a stream feature's mapping against the event models (empty when fine)."""
    mapping = feature.stream
    if mapping is None:
        return []
    if mapping.event not in EVENT_TYPES:
        return [f"stream.event: unknown event type {mapping.event!r}; known: {', '.join(EVENT_TYPES)}"]
    problems = []
    ids = id_fields(mapping.event)
    if mapping.entity not in ids:
        problems.append(f"stream.entity: {mapping.event} has no id {mapping.entity!r}; choose one of {', '.join(ids)}")
    fields = payload_fields(mapping.event)
    if mapping.field is not None and mapping.field not in fields:
        problems.append(
            f"stream.field: {mapping.event} payload has no field {mapping.field!r}; choose one of {', '.join(fields)}"
        )
    return problems


def targets_of(groups: list[FeatureGroup]) -> dict[str, list[StreamTarget]]:
    """Event type -> the stream features it updates, over the given (active) groups."""
    found: dict[str, list[StreamTarget]] = {}
    for group in groups:
        for feature in group.stream_features:
            mapping = feature.stream
            assert mapping is not None
            found.setdefault(mapping.event, []).append(
                StreamTarget(
                    group_id=group.id,
                    feature=feature.name,
                    value_type=feature.value_type,
                    op=mapping.op,
                    entity_field=mapping.entity,
                    payload_field=mapping.field,
                    alpha=mapping.alpha,
                    default=mapping.default,
                    ttl_seconds=group.ttl_seconds,
                    offline=group.offline_enabled,
                )
            )
    return found


class MappingCache:
    """The mapping and the active tenants, reloaded from the registry every CACHE_SECONDS."""

    def __init__(self, registry: Callable[[], Registry]) -> None:
        self._registry = registry
        self._loaded_at = float("-inf")
        self._targets: dict[str, dict[str, list[StreamTarget]]] = {}
        """tenant id -> event type -> targets, over what the tenant sees (its own and enabled shared groups)."""

    def invalidate(self) -> None:
        self._loaded_at = float("-inf")

    def tenant_active(self, tenant_id: str) -> bool:
        self._refresh()
        return tenant_id in self._targets

    def targets(self, tenant_id: str, event_type: str) -> list[StreamTarget]:
        """The stream features of the tenant that events of this type update.

        Another tenant's groups and shared groups this tenant switched off are not among them; the
        tenant's overrides (TTL, offline switch) apply.
        """
        self._refresh()
        return self._targets.get(tenant_id, {}).get(event_type, [])

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._loaded_at > CACHE_SECONDS:
            registry = self._registry()
            self._targets = {
                t.id: targets_of(registry.tenant_groups(t.id, active_only=True, enabled_only=True))
                for t in registry.list_tenants(active_only=True)
            }
            self._loaded_at = now
