"""Point-in-time-correct reads from the offline store."""

from __future__ import annotations

from datetime import timedelta

import pytest

from feature_store import FeatureStore, PipelineConfig
from support import HOURS, Sql


def materialize_all_hours(store: FeatureStore, group: str) -> None:
    for window in HOURS:
        store.materialize(
            PipelineConfig(tenant_id="acme", feature_group_id=group, start_time=window.start, end_time=window.end)
        )


def test_point_in_time_reads_never_leak_future_values(store: FeatureStore, db: Sql) -> None:
    materialize_all_hours(store, "user_engagement")
    stamps = db.rows(
        "SELECT entity_id, event_time, value FROM feature_store.feature_values"
        " WHERE feature_name = 'message_count' ORDER BY entity_id, event_time"
    )
    assert len(stamps) > 10
    rows = []
    for entity, ts, _ in stamps:
        rows += [(entity, ts - timedelta(microseconds=1)), (entity, ts), (entity, ts + timedelta(minutes=30))]
    rows.append(("acme-u001", HOURS[0].start))  # before any value
    result = store.get_historical_features("acme", rows, ["user_engagement:message_count"])
    assert [(r.entity_id, r.timestamp) for r in result] == rows
    history: dict[str, list[tuple[object, object]]] = {}
    for entity, ts, value in stamps:
        history.setdefault(entity, []).append((ts, value))
    for row in result:
        got_time = row.event_times["user_engagement:message_count"]
        if got_time is not None:
            assert got_time <= row.timestamp, "a value from the future leaked into a training row"
        # The expected value: latest at or before the row's timestamp, computed independently.
        earlier = [(ts, v) for ts, v in history.get(row.entity_id, []) if ts <= row.timestamp]
        expected = earlier[-1] if earlier else (None, None)
        assert (got_time, row.values["user_engagement:message_count"]) == expected


def test_historical_reads_join_several_groups_and_type_values(store: FeatureStore) -> None:
    materialize_all_hours(store, "user_engagement")
    materialize_all_hours(store, "message_features")
    [row] = store.get_historical_features(
        "acme",
        [("acme-u001", HOURS[-1].end)],
        ["user_engagement:avg_message_length", "user_engagement:message_count"],
    )
    assert isinstance(row.values["user_engagement:avg_message_length"], float | type(None))
    assert isinstance(row.values["user_engagement:message_count"], int | type(None))


def test_timestamps_without_a_time_zone_are_rejected(store: FeatureStore) -> None:
    with pytest.raises(ValueError, match="has no time zone"):
        store.get_historical_features(
            "acme", [("acme-u001", HOURS[0].end.replace(tzinfo=None))], ["user_engagement:message_count"]
        )
