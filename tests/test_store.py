"""The `FeatureStore` facade: the settings it keeps and the registry checks of its reads."""

from __future__ import annotations

import dataclasses

import pytest

from feature_store import FeatureStore, Settings, TenantNotFoundError
from feature_store.definitions.registry import Registry
from support import HOURS, REDIS_URL, Sql


@dataclasses.dataclass(frozen=True, kw_only=True)
class TunedSettings(Settings):
    """Settings with a field the facade does not know about, as a future setting would be."""

    extra: int = 0


def test_the_store_keeps_every_setting_it_is_given() -> None:
    tuned = TunedSettings(
        database_url="postgresql://postgres@127.0.0.1:5432/tuned",
        redis_url="redis://127.0.0.1:1/0",
        redis_prefix="tuned",
        statement_timeout_s=12.5,
        online_batch_size=7,
        extra=42,
    )
    with FeatureStore(settings=tuned, redis_url=REDIS_URL) as store:
        assert store.settings == dataclasses.replace(tuned, redis_url=REDIS_URL)


def test_reads_of_an_unknown_tenant_raise(store: FeatureStore) -> None:
    with pytest.raises(TenantNotFoundError, match="tenant 'nobody' does not exist; register it"):
        store.get_online_features("nobody", "user", ["nobody-u001"], ["user_engagement:message_count"])
    with pytest.raises(TenantNotFoundError, match="tenant 'nobody' does not exist; register it"):
        store.get_historical_features("nobody", [("nobody-u001", HOURS[-1].end)], ["user_engagement:message_count"])


def test_known_tenants_are_checked_without_a_query_and_new_ones_are_found(
    store: FeatureStore, db: Sql, monkeypatch: pytest.MonkeyPatch
) -> None:
    feature = ["user_engagement:message_count"]
    store.get_online_features("acme", "user", ["acme-u001"], feature)  # loads the registry cache
    lookups: list[str] = []
    for method in ("get_tenant", "list_tenants"):
        original = getattr(Registry, method)
        monkeypatch.setattr(
            Registry, method, lambda self, *a, _m=method, _o=original, **k: lookups.append(_m) or _o(self, *a, **k)
        )
    store.get_online_features("acme", "user", ["acme-u001"], feature)
    store.get_historical_features("acme", [("acme-u001", HOURS[-1].end)], feature)
    assert lookups == []
    # A tenant registered after the cache was loaded is found in the registry, not refused.
    db.execute("INSERT INTO feature_store.tenants (id, name) VALUES ('newco', 'New Co')")
    [row] = store.get_online_features("newco", "user", ["newco-u001"], feature)
    assert row.features["user_engagement:message_count"].status.value == "missing"
    assert lookups == ["get_tenant"]
