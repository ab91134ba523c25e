"""The `FeatureStore` facade: the settings it keeps and the registry checks of its reads."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from feature_store import FeatureNotFoundError, FeatureStore, Settings, TenantNotFoundError
from feature_store.definitions.registry import Registry
from feature_store.serving import on_demand
from featurepipe_demo import demo_repo_path
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


def test_a_reads_plan_is_resolved_once_per_tenant_and_again_after_an_apply(
    store: FeatureStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reads repeat the same refs: their plan (each ref resolved and checked) is kept with the tenant's
    cached groups, per tenant, and an apply drops it, so a changed group serves as applied at once."""
    refs = ["user_engagement:message_count", "user_engagement:avg_message_length"]
    built: list[str] = []
    plan_read = on_demand.plan_read
    monkeypatch.setattr(on_demand, "plan_read", lambda *a, **k: built.append(a[1]) or plan_read(*a, **k))
    ttls: list[list[int | None]] = []
    read = store.online.read
    monkeypatch.setattr(
        store.online, "read", lambda **k: ttls.append([s.ttl_seconds for s in k["features"]]) or read(**k)
    )

    for tenant in ("acme", "acme", "globex", "acme"):
        store.get_online_features(tenant, "user", [f"{tenant}-u001"], refs)
    assert built == ["acme", "globex"]
    assert ttls == [[604800, 604800]] * 4
    with pytest.raises(FeatureNotFoundError):
        store.get_online_features("acme", "user", ["acme-u001"], ["user_engagement:nothing"])  # never kept

    repo = tmp_path / "repo"
    shutil.copytree(demo_repo_path(), repo)
    features = repo / "features.yaml"
    features.write_text(features.read_text().replace("ttl_seconds: 604800", "ttl_seconds: 60", 1))
    store.apply(repo)
    store.get_online_features("acme", "user", ["acme-u001"], refs)
    assert built == ["acme", "globex", "acme", "acme"]  # the failed read's try, then the applied group
    assert ttls[-1] == [60, 60]
