"""Resolve `group:feature` references for reads, with a short-lived cache of the registry.

Online reads are latency-critical: looking the groups and tenants up in PostgreSQL on every call
would cost more than the Redis round trip, so they are cached for `CACHE_SECONDS`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from feature_store.definitions.models import FeatureDefinition, FeatureGroup
from feature_store.definitions.registry import Registry
from feature_store.errors import FeatureNotFoundError, FeatureStoreError
from feature_store.stores.online.base import FeatureSpec
from feature_store.types import FeatureRef

CACHE_SECONDS = 30.0


class FeatureResolver:
    """What a read needs to know of the features it names, from a cached copy of the registry."""

    def __init__(self, registry: Callable[[], Registry]) -> None:
        self._registry = registry
        self._groups: dict[str, FeatureGroup] = {}
        self._tenants: set[str] = set()
        self._loaded_at = float("-inf")

    def invalidate(self) -> None:
        """Forget the cached registry (after an apply)."""
        self._loaded_at = float("-inf")

    def specs(self, refs: Sequence[FeatureRef], *, entity_type: str | None) -> list[FeatureSpec]:
        """One spec per ref, in order; `entity_type` (when given) must be every feature's group's."""
        return [self._spec(ref, entity_type) for ref in refs]

    def require_tenant(self, tenant_id: str) -> None:
        """Raise TenantNotFoundError unless the tenant is registered."""
        self._refresh()
        if tenant_id not in self._tenants:
            self._registry().get_tenant(tenant_id)  # raises TenantNotFoundError
            self._tenants.add(tenant_id)

    def definition(self, ref: FeatureRef, *, entity_type: str | None) -> tuple[FeatureGroup, FeatureDefinition]:
        """The group and definition a ref names (checked like `specs`)."""
        spec = self._spec(ref, entity_type)
        group = self._group(spec.group_id)
        feature = group.feature(spec.name)
        assert feature is not None
        return group, feature

    def _spec(self, ref: FeatureRef, entity_type: str | None) -> FeatureSpec:
        group_id, sep, name = ref.partition(":")
        if not sep or not group_id or not name:
            raise FeatureStoreError(f"feature reference {ref!r} must look like 'group:feature'")
        group = self._group(group_id)
        if entity_type is not None and group.entity_type != entity_type:
            raise FeatureStoreError(
                f"feature {ref!r} belongs to entity type {group.entity_type!r}, not {entity_type!r}"
            )
        feature = group.feature(name)
        if feature is None:
            raise FeatureNotFoundError(group_id, name)
        return FeatureSpec(group_id=group.id, name=name, value_type=feature.value_type, ttl_seconds=group.ttl_seconds)

    def _group(self, group_id: str) -> FeatureGroup:
        self._refresh()
        group = self._groups.get(group_id)
        if group is None:
            group = self._registry().get_group(group_id)  # raises FeatureGroupNotFoundError
            self._groups[group_id] = group
        return group

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._loaded_at > CACHE_SECONDS:
            registry = self._registry()
            self._groups = {g.id: g for g in registry.list_groups()}
            self._tenants = {t.id for t in registry.list_tenants()}
            self._loaded_at = now
