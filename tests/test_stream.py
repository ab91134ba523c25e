"""Stream features: events applied server-side exactly once, newer-only sets, dead letters, offline logging."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from feature_store import FeatureStore, Settings
from feature_store.errors import DefinitionError, EventError, EventPublishError
from feature_store.stream import streams
from featurepipe_demo import demo_repo_path

T0 = datetime(2026, 11, 2, 12, tzinfo=timezone.utc)
USER = ["user_realtime:conversation_count", "user_realtime:feedback_tendency"]
MESSAGE = ["message_realtime:length", "message_realtime:token_count", "message_realtime:detected_intent"]


def message(
    event_id: str, *, user: str = "u1", conv: str = "c1", msg: str = "m1", at: int = 0, **payload: Any
) -> dict[str, Any]:
    return {
        "event_type": "message.created",
        "event_id": event_id,
        "tenant_id": "acme",
        "user_id": user,
        "conversation_id": conv,
        "message_id": msg,
        "timestamp": (T0 + timedelta(seconds=at)).isoformat(),
        "payload": payload,
    }


def feedback(event_id: str, rating: float, *, user: str = "u1", at: int = 0, tenant: str = "acme") -> dict[str, Any]:
    return {
        "event_type": "feedback.received",
        "event_id": event_id,
        "tenant_id": tenant,
        "user_id": user,
        "timestamp": (T0 + timedelta(seconds=at)).isoformat(),
        "payload": {"rating": rating},
    }


def conversation(event_id: str, *, user: str = "u1", conv: str = "c1", at: int = 0) -> dict[str, Any]:
    return {
        "event_type": "conversation.created",
        "event_id": event_id,
        "tenant_id": "acme",
        "user_id": user,
        "conversation_id": conv,
        "timestamp": (T0 + timedelta(seconds=at)).isoformat(),
    }


def ewma(ratings: list[float], alpha: float = 0.3) -> float:
    value = 0.0
    for r in ratings:
        value = alpha * r + (1 - alpha) * value
    return value


def test_events_update_counters_ewma_and_message_fields(store: FeatureStore) -> None:
    store.handle_event(conversation("e1"))
    store.handle_event(conversation("e2", conv="c2"))
    for i, rating in enumerate([4, 5, 1]):
        store.handle_event(feedback(f"f{i}", rating, at=i))
    store.handle_event(message("m1", length=12, token_count=3, detected_intent="billing"))
    store.handle_event(message("m2", msg="m2", at=1))  # payload defaults: 0, 0, unknown

    user = store.get_online_features("acme", "user", ["u1"], USER)
    assert user.values("user_realtime:conversation_count") == [2]
    assert user.values("user_realtime:feedback_tendency") == [ewma([4, 5, 1])]
    assert store.get_online_features("acme", "conversation", ["c1"], ["conversation_realtime:message_count"]).values(
        "conversation_realtime:message_count"
    ) == [2]
    msgs = store.get_online_features("acme", "message", ["m1", "m2"], MESSAGE)
    assert [msgs.values(f) for f in MESSAGE] == [[12, 0], [3, 0], ["billing", "unknown"]]
    assert msgs.event_times("message_realtime:length") == [T0, T0 + timedelta(seconds=1)]


def test_first_ewma_value_is_alpha_times_rating(store: FeatureStore) -> None:
    store.handle_event(feedback("f1", 4))
    assert store.get_online_features("acme", "user", ["u1"], USER[1:]).values(USER[1]) == [0.3 * 4]


def test_an_event_id_is_applied_once(store: FeatureStore) -> None:
    first = store.handle_event(feedback("f1", 4))
    again = store.handle_event(feedback("f1", 4))
    store.handle_event(conversation("c1"))
    store.handle_event(conversation("c1"))
    assert (first.applied, again.applied, again.duplicates) == (1, 0, 1)
    user = store.get_online_features("acme", "user", ["u1"], USER)
    assert user.values(USER[0]) == [1]
    assert user.values(USER[1]) == [0.3 * 4]


def test_an_older_event_never_overwrites_a_newer_value(store: FeatureStore) -> None:
    store.handle_event(message("new", at=60, length=50, detected_intent="sales"))
    store.handle_event(message("old", at=0, length=5, detected_intent="billing"))
    msgs = store.get_online_features("acme", "message", ["m1"], MESSAGE)
    assert msgs.values("message_realtime:length") == [50]
    assert msgs.values("message_realtime:detected_intent") == ["sales"]
    assert msgs.event_times("message_realtime:length") == [T0 + timedelta(seconds=60)]
    # The older value is still history: a training row at its time sees it.
    rows = store.get_historical_features(
        "acme", [("m1", T0 + timedelta(seconds=30)), ("m1", T0 + timedelta(seconds=90))], ["message_realtime:length"]
    )
    assert [r.values["message_realtime:length"] for r in rows] == [5, 50]


def test_stream_values_are_logged_offline_for_point_in_time_reads(store: FeatureStore) -> None:
    for i, rating in enumerate([2, 4, 5]):
        store.handle_event(feedback(f"f{i}", rating, at=10 * i))
    rows = store.get_historical_features(
        "acme", [("u1", T0 + timedelta(seconds=s)) for s in (-1, 5, 15, 25)], [USER[1]]
    )
    assert [r.values[USER[1]] for r in rows] == [None, ewma([2]), ewma([2, 4]), ewma([2, 4, 5])]


def test_only_the_tenants_own_values_change(store: FeatureStore) -> None:
    store.handle_event(feedback("f1", 5, tenant="globex"))
    assert store.get_online_features("acme", "user", ["u1"], USER[1:]).values(USER[1]) == [None]
    assert store.get_online_features("globex", "user", ["u1"], USER[1:]).values(USER[1]) == [0.3 * 5]


def test_ids_with_copy_special_characters_reach_the_offline_store(store: FeatureStore) -> None:
    odd = "m\t1\\x\n"
    store.handle_event(message("m1", msg=odd, length=3, detected_intent="tab\there"))
    rows = store.get_historical_features("acme", [(odd, T0)], ["message_realtime:length", MESSAGE[2]])
    assert rows[0].values == {"message_realtime:length": 3, MESSAGE[2]: "tab\there"}


def test_handle_event_rejects_bad_events_with_the_reason(store: FeatureStore) -> None:
    with pytest.raises(EventError, match=r"payload.detected_intent: String should match pattern"):
        store.handle_event(message("x", detected_intent="nul\x00"))
    with pytest.raises(EventError, match=r"unknown event_type 'message\.deleted'"):
        store.handle_event({**message("x"), "event_type": "message.deleted"})
    with pytest.raises(EventError, match=r"payload.rating: Input should be less than or equal to 5"):
        store.handle_event(feedback("x", 9))
    with pytest.raises(EventError, match="timestamp needs a time zone"):
        store.handle_event({**feedback("x", 3), "timestamp": "2026-11-02T12:00:00"})
    with pytest.raises(EventError, match=r"tenant 'nobody' is not a registered, active tenant"):
        store.handle_event(feedback("x", 3, tenant="nobody"))


def test_publish_validates_everything_first(store: FeatureStore) -> None:
    with pytest.raises(EventPublishError, match=r"event 1: invalid feedback.received event: payload: Field required"):
        store.publish_events([feedback("ok", 3), {k: v for k, v in feedback("bad", 3).items() if k != "payload"}])
    assert store.event_backlog() == 0


def test_consumer_applies_published_events_and_dead_letters_the_rest(store: FeatureStore) -> None:
    store.publish_events([conversation("c1"), feedback("f1", 3), feedback("f2", 5, at=1)])
    client = store.online.client  # type: ignore[attr-defined]
    prefix, partitions = store.settings.redis_prefix, store.settings.event_partitions
    # What a producer outside the library could append: not JSON, an unknown tenant, an unknown type.
    raw = [
        "{not json",
        json.dumps(feedback("g1", 3, tenant="nobody")),
        json.dumps({**conversation("u"), "event_type": "user.deleted"}),
    ]
    streams.publish(client, prefix=prefix, partitions=partitions, events=raw)
    consumer = store.event_consumer()
    stats = consumer.run(max_idle_s=0.2)
    assert (stats.read, stats.applied, stats.dead_lettered) == (6, 3, 3)
    assert store.event_backlog() == 0
    user = store.get_online_features("acme", "user", ["u1"], USER)
    assert user.values(USER[0]) == [1]
    assert user.values(USER[1]) == [ewma([3, 5])]
    reasons = sorted(d.reason for d in store.dead_letters())
    assert reasons[0].startswith("not JSON: ")
    assert reasons[1] == "tenant 'nobody' is not a registered, active tenant"
    assert reasons[2].startswith("unknown event_type 'user.deleted'")


def test_apply_checks_each_mapping_against_the_event_models(store: FeatureStore, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(demo_repo_path(), repo)
    text = (repo / "realtime.yaml").read_text()
    text = text.replace(
        "{event: conversation.created, entity: user_id, op: count}",
        "{event: conversation.closed, entity: user_id, op: count}",
    )
    text = text.replace("entity: conversation_id, op: count", "entity: tenant_id, op: count")
    text = text.replace("field: detected_intent}", "field: intent}")
    (repo / "realtime.yaml").write_text(text)
    with pytest.raises(DefinitionError) as failed:
        store.apply(repo)
    message = str(failed.value)
    assert "realtime.yaml:" in message
    assert "feature 'conversation_count': stream.event: unknown event type 'conversation.closed'" in message
    assert "feature 'message_count': stream.entity: message.created has no id 'tenant_id'" in message
    assert "feature 'detected_intent': stream.field: message.created payload has no field 'intent'" in message


def test_a_mapping_must_fit_the_feature(store: FeatureStore, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(demo_repo_path(), repo)
    text = (repo / "realtime.yaml").read_text().replace("value_type: float64", "value_type: string", 1)
    (repo / "realtime.yaml").write_text(text)
    with pytest.raises(DefinitionError, match="op ewma needs value_type float64, not string"):
        store.apply(repo)


def test_events_on_a_redis_cluster(settings: Settings, redis_cluster_url: str) -> None:
    """One user's events touch hashes in several slots: each slot's part applies atomically with its marker."""
    cluster = replace(settings, online_backend="redis-cluster", redis_url=redis_cluster_url)
    with FeatureStore(settings=cluster) as store:
        events = [conversation("c1"), message("m1", length=7, detected_intent="sales"), feedback("f1", 4)]
        events += [feedback("f2", 2, at=1), message("m1", length=7, detected_intent="sales")]  # a duplicate
        store.publish_events(events)
        stats = store.event_consumer().run(max_idle_s=0.2)
        assert (stats.read, stats.applied, stats.duplicates) == (5, 4, 1)
        assert store.event_backlog() == 0
        user = store.get_online_features("acme", "user", ["u1"], USER)
        assert [user.values(f) for f in USER] == [[1], [ewma([4, 2])]]
        msgs = store.get_online_features("acme", "message", ["m1"], MESSAGE)
        assert [msgs.values(f) for f in MESSAGE] == [[7], [0], ["sales"]]
        counts = store.get_online_features("acme", "conversation", ["c1"], ["conversation_realtime:message_count"])
        assert counts.values("conversation_realtime:message_count") == [1]
        store.online.teardown()


def test_events_touch_only_the_stream_groups_the_tenant_has(store: FeatureStore, tmp_path: Path) -> None:
    # Globex switches the shared user_realtime group off: its events no longer move those features,
    # while acme's still do.
    (tmp_path / "globex.yaml").write_text("tenant: globex\ngroup_settings:\n  user_realtime: {enabled: false}\n")
    store.apply(tmp_path)
    store.handle_event(feedback("g1", 5, tenant="globex"))
    store.handle_event(feedback("a1", 5, tenant="acme"))
    assert store.get_online_features("globex", "user", ["u1"], USER[1:]).values(USER[1]) == [None]
    assert store.get_online_features("acme", "user", ["u1"], USER[1:]).values(USER[1]) == [0.3 * 5]
