"""Tenant scope: groups shared by every tenant or owned by one, per-tenant settings, repos that compose."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from feature_store import (
    DefinitionError,
    FeatureGroupDisabledError,
    FeatureGroupNotFoundError,
    FeatureNotFoundError,
    FeatureStore,
    JobStatus,
    PipelineConfig,
)
from feature_store.stores.online.redis import RedisOnlineStore
from featurepipe_demo import demo_repo_path, demo_tenant_repo_paths
from support import HOURS, Sql

ACME_GROUP = """
tenant: acme
feature_groups:
  - id: acme_satisfaction
    entity_type: user
    features:
      - name: low_rating_count
        value_type: int64
        transformation_sql: |
          SELECT f.user_id AS entity_id, count(*) FILTER (WHERE f.rating <= 2) AS value
          FROM app.feedback f
          WHERE f.tenant_id = %(tenant_id)s
            AND f.created_at > %(start_time)s AND f.created_at <= %(end_time)s
          GROUP BY f.user_id
"""

GLOBEX_GROUP = """
tenant: globex
feature_groups:
  - id: globex_activity
    entity_type: user
    features:
      - name: messages
        value_type: int64
        transformation_sql: |
          SELECT m.user_id AS entity_id, count(*) AS value FROM app.messages m
          WHERE m.tenant_id = %(tenant_id)s
            AND m.created_at > %(start_time)s AND m.created_at <= %(end_time)s
          GROUP BY m.user_id
group_settings:
  message_features: {enabled: false}
"""


def repo(tmp_path: Path, name: str, text: str) -> Path:
    folder = tmp_path / name
    folder.mkdir(exist_ok=True)
    (folder / "features.yaml").write_text(text)
    return folder


def run(store: FeatureStore, tenant: str, group: str, hour: int = -1) -> JobStatus:
    window = HOURS[hour]
    config = PipelineConfig(tenant_id=tenant, feature_group_id=group, start_time=window.start, end_time=window.end)
    return store.materialize(config).status


def planned(store: FeatureStore) -> set[tuple[str, str]]:
    return {(p.tenant_id, p.feature_group_id) for p in store.pipeline(online=False).plan(window=HOURS[-1])}


def test_a_tenant_owned_group_materializes_only_for_its_tenant(store: FeatureStore, tmp_path: Path, db: Sql) -> None:
    report = store.apply(repo(tmp_path, "acme", ACME_GROUP))
    assert report.created == ["feature group acme_satisfaction (tenant acme)"]

    plan = planned(store)
    assert {t for t, g in plan if g == "acme_satisfaction"} == {"acme"}
    assert ("globex", "user_engagement") in plan  # shared groups still run for everyone
    assert run(store, "acme", "acme_satisfaction") is JobStatus.COMPLETED
    with pytest.raises(FeatureGroupNotFoundError, match="'acme_satisfaction' does not exist for tenant 'globex'"):
        run(store, "globex", "acme_satisfaction")
    tenants = db.rows(
        "SELECT DISTINCT tenant_id FROM feature_store.feature_values WHERE feature_group_id = 'acme_satisfaction'"
    )
    assert tenants == [("acme",)]


def test_disabling_a_shared_group_for_one_tenant_stops_its_jobs_there_only(store: FeatureStore, tmp_path: Path) -> None:
    before = planned(store)
    store.apply(repo(tmp_path, "globex", GLOBEX_GROUP))

    after = planned(store)
    assert after == (before - {("globex", "message_features")}) | {("globex", "globex_activity")}
    assert {("acme", "message_features"), ("initech", "message_features")} <= after
    with pytest.raises(FeatureGroupDisabledError, match="'message_features' is disabled for tenant 'globex'"):
        run(store, "globex", "message_features")
    assert run(store, "initech", "message_features") is JobStatus.COMPLETED
    assert ("globex", "message_features") not in {(f.tenant_id, f.feature_group_id) for f in store.freshness()}
    scopes = {(s.tenant_id, s.feature_group_id): s for s in store.tenant_groups()}
    assert (scopes[("globex", "message_features")].enabled, scopes[("acme", "message_features")].enabled) == (
        False,
        True,
    )
    assert scopes[("globex", "globex_activity")].scope == "owned"
    assert ("acme", "globex_activity") not in scopes


def test_a_ttl_override_changes_only_that_tenants_online_ttl(store: FeatureStore, tmp_path: Path) -> None:
    # user_engagement keeps a week online; Globex keeps it an hour.
    store.apply(repo(tmp_path, "globex", "tenant: globex\ngroup_settings:\n  user_engagement: {ttl_seconds: 3600}\n"))
    assert run(store, "acme", "user_engagement") is JobStatus.COMPLETED
    assert run(store, "globex", "user_engagement") is JobStatus.COMPLETED

    online = store.online
    assert isinstance(online, RedisOnlineStore)
    ttls = {}
    for tenant in ("acme", "globex"):
        keys = list(online.client.scan_iter(match=f"{store.settings.redis_prefix}:{{{tenant}:user_engagement:*"))
        assert keys
        ttls[tenant] = {online.client.ttl(k) for k in keys}
    assert all(3500 < t <= 3600 for t in ttls["globex"])
    assert all(604_000 < t <= 604_800 for t in ttls["acme"])
    # Reads apply the tenant's TTL too.
    [spec] = store._features.specs("globex", ["user_engagement:message_count"], entity_type="user")
    assert spec.ttl_seconds == 3600


def test_a_failure_threshold_override_applies_to_that_tenant_only(store: FeatureStore, tmp_path: Path) -> None:
    # In the second hour Globex and Initech each have one message of an unknown intent (1 of ~50 rows,
    # under the group's 10%); Globex tolerates none.
    store.apply(
        repo(tmp_path, "globex", "tenant: globex\ngroup_settings:\n  message_features: {max_failure_rate: 0.0}\n")
    )
    window = HOURS[1]
    results = {
        tenant: store.materialize(
            PipelineConfig(
                tenant_id=tenant, feature_group_id="message_features", start_time=window.start, end_time=window.end
            )
        )
        for tenant in ("initech", "globex")
    }
    intent = {t: next(f for f in r.features if f.feature == "intent") for t, r in results.items()}
    assert results["initech"].status is JobStatus.COMPLETED
    assert intent["initech"].rows_failed == 1
    assert results["globex"].status is JobStatus.FAILED
    assert intent["globex"].status.value == "failed"
    [error] = results["globex"].errors
    assert "'intent': 1 of 48 rows (2.1%) broke validation rules" in error
    assert "above the group's max_failure_rate of 0.0%" in error


def test_applying_one_tenants_repo_leaves_other_tenants_and_shared_groups_untouched(
    store: FeatureStore, tmp_path: Path
) -> None:
    store.apply(repo(tmp_path, "acme", ACME_GROUP))
    store.apply(repo(tmp_path, "globex", GLOBEX_GROUP))
    registry = store.registry
    shared_before = [g for g in registry.list_groups() if g.tenant is None]

    # Acme's repo without its group: only Acme's group is deactivated, and the report says in which scope.
    report = store.apply(repo(tmp_path, "acme", "tenant: acme\nfeature_groups: []\n"))
    assert report.scopes == ["tenant acme"]
    assert report.deactivated == ["feature group acme_satisfaction (tenant acme)"]
    assert report.changes == {"tenant acme": ["deactivated feature group acme_satisfaction (tenant acme)"]}
    assert registry.get_group("acme_satisfaction").status.value == "inactive"
    assert registry.get_group("globex_activity").status.value == "active"
    assert [g for g in registry.list_groups() if g.tenant is None] == shared_before
    assert registry.group_settings("globex")["message_features"].enabled is False

    # The platform's repo does not own tenants' groups either: re-applying it deactivates none of them.
    report = store.apply(demo_repo_path())
    assert report.scopes == ["shared"]
    assert report.deactivated == []
    assert registry.get_group("globex_activity").status.value == "active"
    assert registry.group_settings("globex")["message_features"].enabled is False


def test_a_repo_with_folders_per_tenant_reports_per_tenant(store: FeatureStore, tmp_path: Path) -> None:
    root = tmp_path / "platform"
    root.mkdir()
    for module in [*demo_repo_path().glob("*.yaml"), *demo_repo_path().glob("*.py")]:  # the whole platform repo
        (root / module.name).write_text(module.read_text())
    repo(root, "acme", ACME_GROUP)
    repo(root, "globex", GLOBEX_GROUP)
    report = store.apply(root)
    assert report.scopes == ["shared", "tenant acme", "tenant globex"]
    assert report.changes == {
        "tenant acme": ["created feature group acme_satisfaction (tenant acme)"],
        "tenant globex": [
            "created feature group globex_activity (tenant globex)",
            "created settings of shared feature group message_features for tenant globex: disabled",
        ],
    }


def test_reads_of_what_does_not_exist_for_the_tenant_fail_clearly(store: FeatureStore, tmp_path: Path) -> None:
    store.apply(repo(tmp_path, "acme", ACME_GROUP))
    assert run(store, "acme", "acme_satisfaction") is JobStatus.COMPLETED
    ref = ["acme_satisfaction:low_rating_count"]
    [row] = store.get_online_features("acme", "user", ["acme-u001"], ref)
    assert row.features[ref[0]].status.value in ("present", "missing")
    message = "feature group 'acme_satisfaction' does not exist for tenant 'globex'"
    with pytest.raises(FeatureGroupNotFoundError, match=message):
        store.get_online_features("globex", "user", ["acme-u001"], ref)
    with pytest.raises(FeatureGroupNotFoundError, match=message):
        store.get_historical_features("globex", [("acme-u001", HOURS[-1].end)], ref)
    with pytest.raises(FeatureGroupNotFoundError, match="'no_such_group' does not exist for tenant 'acme'"):
        store.get_online_features("acme", "user", ["acme-u001"], ["no_such_group:x"])
    with pytest.raises(FeatureNotFoundError, match="'nope' does not exist in feature group 'user_engagement' for"):
        store.get_historical_features("acme", [("acme-u001", HOURS[-1].end)], ["user_engagement:nope"])
    with pytest.raises(FeatureGroupNotFoundError, match="for tenant 'globex'"):
        store.reconcile_online(tenant_id="globex", group_id="acme_satisfaction")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tenant: acme\ntenants: [{id: x, name: X}]\n", "a tenant's file (tenant 'acme') cannot declare tenants"),
        ("tenant: acme\nsource_schemas: [app]\n", "cannot declare source_schemas"),
        ("tenant: acme\ngroup_settings:\n  nope: {enabled: false}\n", "no shared feature group 'nope'"),
        ("tenant: nobody\nfeature_groups: []\n", "tenant 'nobody': a file declares `tenant: nobody` but no such"),
        ("group_settings:\n  user_engagement: {enabled: false}\n", "group_settings belong in a tenant's file"),
        ("tenant: acme\ngroup_settings:\n  user_engagement: {ttl_seconds: 0}\n", "ttl_seconds: Input should be"),
    ],
)
def test_bad_scope_declarations_are_refused(store: FeatureStore, tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(DefinitionError, match=re.escape(message)):
        store.apply(repo(tmp_path, "bad", text))


def test_a_tenant_cannot_take_a_group_id_of_another_scope(store: FeatureStore, tmp_path: Path) -> None:
    store.apply(repo(tmp_path, "acme", ACME_GROUP))
    taken = GLOBEX_GROUP.replace("globex_activity", "acme_satisfaction")
    with pytest.raises(DefinitionError, match="'acme_satisfaction': the id is taken by a group of another scope"):
        store.apply(repo(tmp_path, "globex", taken))
    shared = GLOBEX_GROUP.replace("globex_activity", "user_engagement")
    with pytest.raises(DefinitionError, match="'user_engagement': the id is taken by a group of another scope"):
        store.apply(repo(tmp_path, "globex", shared))
    assert store.registry.get_group("acme_satisfaction").tenant == "acme"


def test_the_demo_tenant_repos_apply_on_top_of_the_platform_repo(store: FeatureStore) -> None:
    for path in demo_tenant_repo_paths():
        store.apply(path)
    plan = planned(store)
    assert ("acme", "acme_satisfaction") in plan
    assert ("globex", "message_features") not in plan
    assert store.registry.tenant_group("globex", "user_engagement").ttl_seconds == 86400
    assert store.registry.tenant_group("acme", "user_engagement").ttl_seconds == 604800


def test_a_tenant_owned_features_sql_reads_only_its_tenants_rows(store: FeatureStore, tmp_path: Path, db: Sql) -> None:
    # A filter that names the tenant but keeps every tenant's rows: the sandbox's row-level security
    # still shows Acme's rows only.
    greedy = """
tenant: acme
feature_groups:
  - id: acme_greedy
    entity_type: user
    features:
      - name: messages
        value_type: int64
        transformation_sql: |
          SELECT m.user_id AS entity_id, count(*) AS value FROM app.messages m
          WHERE (m.tenant_id = %(tenant_id)s OR m.tenant_id <> %(tenant_id)s)
            AND m.created_at > %(start_time)s AND m.created_at <= %(end_time)s GROUP BY m.user_id
"""
    store.apply(repo(tmp_path, "acme", greedy))
    assert run(store, "acme", "acme_greedy") is JobStatus.COMPLETED
    entities = [r[0] for r in db.rows("SELECT entity_id FROM feature_store.feature_values")]
    assert entities
    assert all(e.startswith("acme-") for e in entities)
    everyone = db.value(
        "SELECT count(DISTINCT user_id) FROM app.messages WHERE created_at > %s AND created_at <= %s",
        (HOURS[-1].start, HOURS[-1].end),
    )
    assert len(set(entities)) < everyone


def test_plan_filters_still_work_across_scopes(store: FeatureStore, tmp_path: Path) -> None:
    store.apply(repo(tmp_path, "acme", ACME_GROUP))
    store.apply(repo(tmp_path, "globex", GLOBEX_GROUP))
    pipeline = store.pipeline(online=False)
    jobs = pipeline.plan(window=HOURS[-1], group_ids=["acme_satisfaction", "message_features"])
    assert {(p.tenant_id, p.feature_group_id) for p in jobs} == {
        ("acme", "acme_satisfaction"),
        ("acme", "message_features"),
        ("initech", "message_features"),
    }
    jobs = pipeline.plan(window=HOURS[-1], tenant_ids=["globex"], group_ids=["acme_satisfaction"])
    assert jobs == []  # Acme's group is not Globex's: nothing to run, not an error
    with pytest.raises(FeatureGroupNotFoundError, match="'nope' does not exist"):
        pipeline.plan(window=HOURS[-1], group_ids=["nope"])
