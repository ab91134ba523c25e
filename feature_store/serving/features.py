"""Resolve `group:feature` references for reads, as one tenant sees them, with a short-lived cache.

Online reads are latency-critical: looking the groups and tenants up in PostgreSQL on every call
would cost more than the Redis round trip, so each tenant's groups are cached for `CACHE_SECONDS`.
A tenant sees its own groups and the shared ones (with its overrides, e.g. its TTL); another
tenant's group does not exist for it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Sequence
from typing import Any, TypeVar

from feature_store.definitions.models import FeatureDefinition, FeatureGroup
from feature_store.definitions.registry import Registry
from feature_store.errors import FeatureNotFoundError, FeatureStoreError
from feature_store.stores.online.base import FeatureSpec
from feature_store.types import FeatureRef

CACHE_SECONDS = 30.0
PLANS_PER_TENANT = 256
"""Read plans kept per tenant (callers mostly repeat a few lists of refs; beyond this all are dropped)."""

T = TypeVar("T")


class FeatureResolver:
    """What a read needs to know of the features it names, from a cached copy of the registry."""

    def __init__(self, registry: Callable[[], Registry]) -> None:
        self._registry = registry
        self._groups: dict[str, tuple[float, dict[str, FeatureGroup]]] = {}
        """tenant id -> (loaded at, its visible groups by id)."""
        self._plans: dict[str, tuple[dict[str, FeatureGroup], dict[Hashable, Any]]] = {}
        """tenant id -> (the groups it was built from, what `planned` built by key): a reload starts anew."""

    def invalidate(self) -> None:
        """Forget the cached registry (after an apply)."""
        self._groups.clear()

    def planned(self, tenant_id: str, key: Hashable, build: Callable[[], T]) -> T:
        """`build()` (which resolves refs of this tenant), kept for as long as the tenant's cached groups.

        A read's plan depends on its refs and the registry only; building it for every call cost a
        single-entity read about a quarter of its time (it resolves every ref and on-demand input anew).
        """
        groups = self._tenant_groups(tenant_id)  # raises TenantNotFoundError; reloaded past CACHE_SECONDS
        cached = self._plans.get(tenant_id)
        if cached is None or cached[0] is not groups or len(cached[1]) >= PLANS_PER_TENANT:
            cached = self._plans[tenant_id] = (groups, {})
        plans = cached[1]
        if key not in plans:
            plans[key] = build()
        return plans[key]

    def specs(self, tenant_id: str, refs: Sequence[FeatureRef], *, entity_type: str | None) -> list[FeatureSpec]:
        """One spec per ref, in order; `entity_type` (when given) must be every feature's group's.

        Raises:
            TenantNotFoundError: the tenant is not registered.
            FeatureGroupNotFoundError, FeatureNotFoundError: not there for this tenant.
        """
        groups = self._tenant_groups(tenant_id)
        return [self._spec(tenant_id, groups, ref, entity_type) for ref in refs]

    def require_tenant(self, tenant_id: str) -> None:
        """Raise TenantNotFoundError unless the tenant is registered."""
        self._tenant_groups(tenant_id)

    def definition(
        self, tenant_id: str, ref: FeatureRef, *, entity_type: str | None
    ) -> tuple[FeatureGroup, FeatureDefinition]:
        """The group (as the tenant sees it) and definition a ref names (checked like `specs`)."""
        groups = self._tenant_groups(tenant_id)
        spec = self._spec(tenant_id, groups, ref, entity_type)
        group = groups[spec.group_id]
        feature = group.feature(spec.name)
        assert feature is not None
        return group, feature

    def _spec(
        self, tenant_id: str, groups: dict[str, FeatureGroup], ref: FeatureRef, entity_type: str | None
    ) -> FeatureSpec:
        group_id, sep, name = ref.partition(":")
        if not sep or not group_id or not name:
            raise FeatureStoreError(f"feature reference {ref!r} must look like 'group:feature'")
        group = groups.get(group_id)
        if group is None:
            # Not cached: maybe applied since; the registry says for sure (and raises for this tenant).
            group = self._registry().tenant_group(tenant_id, group_id)
            groups[group_id] = group
        if entity_type is not None and group.entity_type != entity_type:
            raise FeatureStoreError(
                f"feature {ref!r} belongs to entity type {group.entity_type!r}, not {entity_type!r}"
            )
        feature = group.feature(name)
        if feature is None:
            raise FeatureNotFoundError(group_id, name, tenant_id)
        return FeatureSpec(group_id=group.id, name=name, value_type=feature.value_type, ttl_seconds=group.ttl_seconds)

    def _tenant_groups(self, tenant_id: str) -> dict[str, FeatureGroup]:
        now = time.monotonic()
        cached = self._groups.get(tenant_id)
        if cached is not None and now - cached[0] <= CACHE_SECONDS:
            return cached[1]
        registry = self._registry()
        registry.get_tenant(tenant_id)  # raises TenantNotFoundError
        groups = {g.id: g for g in registry.tenant_groups(tenant_id)}
        self._groups[tenant_id] = (now, groups)
        return groups
