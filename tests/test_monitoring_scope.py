"""Alert routing and API sources on the tenant scope: the platform's (shared) repo declares them; a
tenant's repo can neither declare nor, by being applied alone, remove them. Alerts follow each
tenant's own and kept shared groups."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from feature_store import DefinitionError, FeatureStore, JobStatus, PipelineConfig
from featurepipe_demo import demo_repo_path
from support import HOURS

PLATFORM_EXTRA = """
alerts:
  channels:
    hook: {type: webhook, url_env: FP_TEST_HOOK}
  routes:
    - {kinds: [not_fresh], channels: [hook]}
api_sources:
  - name: crm
    table: app.crm_scope
    url: "http://127.0.0.1:9/{tenant_id}"
    fields:
      id: {path: id, type: string}
"""


def folder(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.mkdir()
    (path / "features.yaml").write_text(text)
    return path


@pytest.fixture
def platform(store: FeatureStore, tmp_path: Path) -> FeatureStore:
    repo = tmp_path / "platform"
    shutil.copytree(demo_repo_path(), repo)
    (repo / "monitoring.yaml").write_text(PLATFORM_EXTRA)
    store.apply(repo)
    return store


def test_a_tenants_repo_leaves_the_platforms_routing_and_api_sources(platform: FeatureStore, tmp_path: Path) -> None:
    routing, sources = platform.alert_routing(), platform.api_sources()
    assert list(routing.channels) == ["hook"] and [s.name for s in sources] == ["crm"]
    platform.apply(folder(tmp_path, "acme", "tenant: acme\nfeature_groups: []\n"))
    assert platform.alert_routing() == routing
    assert platform.api_sources() == sources


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tenant: acme\nalerts: {channels: {}}\n", "a tenant's file (tenant 'acme') cannot declare alerts"),
        (
            "tenant: acme\napi_sources:\n  - {name: x, table: app.x, url: 'http://h/',"
            " fields: {a: {path: a, type: string}}}\n",
            "a tenant's file (tenant 'acme') cannot declare api_sources",
        ),
    ],
)
def test_a_tenants_file_cannot_declare_routing_or_api_sources(
    platform: FeatureStore, tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(DefinitionError, match=re.escape(message)):
        platform.apply(folder(tmp_path, "bad", text))


def test_a_shared_group_a_tenant_switched_off_does_not_alert_for_it(platform: FeatureStore, tmp_path: Path) -> None:
    window = HOURS[-1]
    for tenant in ("acme", "globex"):
        result = platform.materialize(
            PipelineConfig(
                tenant_id=tenant, feature_group_id="conversation_stats", start_time=window.start, end_time=window.end
            )
        )
        assert result.status is JobStatus.COMPLETED
    keys = {n.alert_key for n in platform.evaluate_alerts()}
    assert {"not_fresh:acme/conversation_stats", "not_fresh:globex/conversation_stats"} <= keys

    platform.apply(
        folder(tmp_path, "globex", "tenant: globex\ngroup_settings:\n  conversation_stats: {enabled: false}\n")
    )
    resolved = {n.alert_key for n in platform.evaluate_alerts() if n.state.value == "resolved"}
    assert resolved == {"not_fresh:globex/conversation_stats"}
