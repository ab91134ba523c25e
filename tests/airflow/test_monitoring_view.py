"""The monitoring endpoints of the Feature Store view: the same statistics as the facade, as JSON."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from feature_store import FeatureStore, JobStatus, PipelineConfig
from support import HOURS, Sql

pytestmark = pytest.mark.airflow


def test_statistics_endpoint_serves_the_stored_statistics(client: TestClient, store: FeatureStore) -> None:
    for window in HOURS[:2]:
        result = store.materialize(
            PipelineConfig(
                tenant_id="acme", feature_group_id="message_features", start_time=window.start, end_time=window.end
            )
        )
        assert result.status is JobStatus.COMPLETED
    response = client.get("/api/statistics", params={"tenant_id": "acme", "group_id": "message_features"})
    assert response.status_code == 200
    body = response.json()
    expected = store.feature_statistics(tenant_id="acme", group_id="message_features")
    # One row per batch feature and window.
    assert len(body) == len(expected) == 2 * len(store.registry.get_group("message_features").batch_features)
    assert body == [s.model_dump(mode="json") for s in expected]
    one = client.get(
        "/api/statistics", params={"tenant_id": "acme", "group_id": "message_features", "feature": "length"}
    ).json()
    assert [s["feature_name"] for s in one] == ["length", "length"]
    assert one[0]["drift_psi"] is not None and one[1]["drift_psi"] is None
    assert client.get("/api/statistics", params={"tenant_id": "acme"}).status_code == 422


def test_monitoring_page_escapes_values_from_the_data(client: TestClient, db: Sql) -> None:
    hostile = '<script>alert(1)</script>"><img src=x onerror=alert(1)>'
    db.execute(
        "INSERT INTO feature_store.feature_statistics (tenant_id, feature_group_id, feature_name, window_start,"
        " window_end, job_id, value_type, rows_total, rows_null, rows_quarantined, rows_valid, distinct_count,"
        " top_values, bin_counts) VALUES ('acme', 'message_features', 'intent', %s, %s, 1, 'string', 3, 0, 1, 2, 1,"
        " jsonb_build_array(jsonb_build_object('value', %s::text, 'count', 2)), '{0,2}')",
        (HOURS[0].start, HOURS[0].end, hostile),
    )
    html = client.get("/monitoring", params={"tenant_id": "acme", "group_id": "message_features"}).text
    assert "<script" not in html and "<img" not in html
    assert "most frequent &lt;script&gt;alert(1)&lt;/script&gt;&#34;&gt;&lt;img src=x onerror=alert(1)&gt; (2)" in html
    assert 'data-feature="intent"' in html and "1 of 3 rows quarantined" in html


def test_the_plugin_links_the_monitoring_page_in_the_navigation() -> None:
    import featurepipe_plugin

    views = {v["url_route"]: v for v in featurepipe_plugin.FeaturePipePlugin.external_views}
    assert views["featurepipe-monitoring"]["href"] == "featurepipe/monitoring"
