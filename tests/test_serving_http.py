"""The HTTP feature server: per-tenant API keys, online reads of every kind, event push, clear 4xx errors."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from test_stream import conversation, feedback

from feature_store import FeatureStore
from feature_store.errors import NotFoundError, TenantNotFoundError
from feature_store.serving.http import create_app

USER_FEATURES = ["user_realtime:feedback_tendency", "user_realtime:conversation_count"]


@pytest.fixture
def client(store: FeatureStore) -> Iterator[TestClient]:
    with TestClient(create_app(store)) as http:
        yield http


@pytest.fixture
def acme_key(store: FeatureStore) -> str:
    return store.create_api_key("acme", name="tests")[1]


def read(http: TestClient, key: str | None, **body: object) -> object:
    headers = {"X-API-Key": key} if key is not None else {}
    payload = {"entity_type": "user", "entity_ids": ["u1"], "features": USER_FEATURES} | body
    return http.post("/features/online", json=payload, headers=headers)


def test_online_read_of_the_keys_tenant(store: FeatureStore, client: TestClient, acme_key: str) -> None:
    store.handle_event(feedback("f1", 5))
    store.handle_event(feedback("g1", 2, tenant="globex"))
    response = read(client, acme_key, entity_ids=["u1", "nobody"])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["tenant_id"] == "acme"
    assert body["features"]["user_realtime:feedback_tendency"]["values"] == [0.3 * 5, None]
    assert body["features"]["user_realtime:feedback_tendency"]["statuses"] == ["present", "missing"]
    assert body["features"]["user_realtime:conversation_count"]["statuses"] == ["missing", "missing"]
    bearer = client.post(
        "/features/online",
        json={"entity_type": "user", "entity_ids": ["u1"], "features": USER_FEATURES[:1]},
        headers={"Authorization": f"Bearer {acme_key}"},
    )
    assert bearer.json()["features"]["user_realtime:feedback_tendency"]["values"] == [0.3 * 5]


def test_on_demand_features_over_http(store: FeatureStore, client: TestClient, acme_key: str) -> None:
    store.handle_event(feedback("f1", 0.5 + 0.5))
    response = read(
        client, acme_key, features=["user_live_scores:reply_token_budget"], request_data={"max_tokens": 600}
    )
    assert response.json()["features"]["user_live_scores:reply_token_budget"]["values"] == [300]
    failing = read(client, acme_key, features=["user_live_scores:reply_token_budget"])
    assert failing.status_code == 422
    assert "needs request data max_tokens" in failing.json()["detail"]


def test_missing_wrong_and_foreign_keys(store: FeatureStore, client: TestClient, acme_key: str) -> None:
    missing = read(client, None)
    assert missing.status_code == 401
    assert "missing API key" in missing.json()["detail"]
    wrong = read(client, "fpk_not-a-key")
    assert wrong.status_code == 401
    assert "not valid" in wrong.json()["detail"]
    foreign = read(client, acme_key, tenant_id="globex")
    assert foreign.status_code == 403
    assert foreign.json()["detail"] == "this API key belongs to tenant 'acme', not 'globex'"
    events = client.post(
        "/events", json={"events": [feedback("x", 3, tenant="globex")]}, headers={"X-API-Key": acme_key}
    )
    assert events.status_code == 403


def test_a_revoked_key_stops_working(store: FeatureStore, acme_key: str) -> None:
    key_id = store.list_api_keys(tenant_id="acme")[0].id
    assert store.tenant_for_api_key(acme_key) == "acme"
    store.revoke_api_key(key_id)
    with TestClient(create_app(store)) as fresh:  # a server that has not cached the key
        assert read(fresh, acme_key).status_code == 401
    with pytest.raises(NotFoundError, match="already revoked"):
        store.revoke_api_key(key_id)
    with pytest.raises(TenantNotFoundError):
        store.create_api_key("nobody")


def test_only_a_hash_of_the_key_is_stored(store: FeatureStore, acme_key: str) -> None:
    stored = store.conn.execute("SELECT key_hash, key_prefix FROM feature_store.api_keys").fetchall()
    assert len(stored) == 1
    assert acme_key not in stored[0][0]
    assert acme_key.startswith(stored[0][1])


def test_bad_requests_get_clear_4xx(client: TestClient, acme_key: str) -> None:
    assert read(client, acme_key, entity_ids=[]).status_code == 422
    unknown = read(client, acme_key, features=["user_realtime:nope"])
    assert unknown.status_code == 404
    assert (
        unknown.json()["detail"] == "feature 'nope' does not exist in feature group 'user_realtime' for tenant 'acme'"
    )
    other_type = read(client, acme_key, features=["conversation_realtime:message_count"])
    assert other_type.status_code == 400
    assert "belongs to entity type 'conversation', not 'user'" in other_type.json()["detail"]
    bad_ref = read(client, acme_key, features=["no-colon"])
    assert bad_ref.status_code == 400
    extra = read(client, acme_key, surprise=1)
    assert extra.status_code == 422
    bad_event = client.post("/events", json={"events": [{**feedback("x", 9)}]}, headers={"X-API-Key": acme_key})
    assert bad_event.status_code == 422
    assert "event 0: invalid feedback.received event: payload.rating" in bad_event.json()["detail"]


def test_pushed_events_reach_the_stream(store: FeatureStore, client: TestClient, acme_key: str) -> None:
    response = client.post(
        "/events", json={"events": [conversation("c1"), feedback("f1", 4)]}, headers={"X-API-Key": acme_key}
    )
    assert response.status_code == 202, response.text
    assert response.json()["published"] == 2
    store.event_consumer().run(max_idle_s=0.2)
    assert read(client, acme_key).json()["features"]["user_realtime:conversation_count"]["values"] == [1]


def test_health_and_docs(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/features/online", "/events", "/health"} <= set(paths)
