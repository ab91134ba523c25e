"""The monitoring endpoints of the Feature Store view: the same statistics as the facade, as JSON."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from feature_store import FeatureStore, JobStatus, PipelineConfig
from support import HOURS

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
    assert len(body) == len(expected) == 8
    assert body == [s.model_dump(mode="json") for s in expected]
    one = client.get(
        "/api/statistics", params={"tenant_id": "acme", "group_id": "message_features", "feature": "length"}
    ).json()
    assert [s["feature_name"] for s in one] == ["length", "length"]
    assert one[0]["drift_psi"] is not None and one[1]["drift_psi"] is None
    assert client.get("/api/statistics", params={"tenant_id": "acme"}).status_code == 422
