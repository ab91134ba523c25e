"""Feature monitoring statistics against real PostgreSQL: equal to an independent computation over
the offline store and the quarantine, including the drift score."""

from __future__ import annotations

import bisect
import math
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from feature_store import FeatureStore, JobStatus, PipelineConfig
from feature_store.monitoring.statistics import BASELINE_WINDOWS, PERCENTILES, PSI_FLOOR, TOP_VALUES
from support import HOURS, Sql

pytestmark = pytest.mark.usefixtures("store")


def materialize(store: FeatureStore, tenant: str, group: str, window_index: int) -> int:
    window = HOURS[window_index]
    result = store.materialize(
        PipelineConfig(tenant_id=tenant, feature_group_id=group, start_time=window.start, end_time=window.end)
    )
    assert result.status is JobStatus.COMPLETED, result.errors
    return result.job_id


def percentile(sorted_values: list[float], p: float) -> float:
    """Linear interpolation between closest ranks (what percentile_cont does), computed here in Python."""
    rank = p * (len(sorted_values) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low)


def offline_values(db: Sql, tenant: str, group: str, feature: str, index: int) -> list[Any]:
    window = HOURS[index]
    return [
        v
        for (v,) in db.rows(
            "SELECT value FROM feature_store.feature_values WHERE tenant_id = %s AND feature_group_id = %s"
            " AND feature_name = %s AND event_time > %s AND event_time <= %s AND value <> 'null'::jsonb",
            (tenant, group, feature, window.start, window.end),
        )
    ]


def psi(actual: list[int], expected: list[int]) -> float:
    a_total, e_total = sum(actual), sum(expected)
    total = 0.0
    for a, e in zip(actual, expected, strict=True):
        sa, se = max(a / a_total, PSI_FLOOR), max(e / e_total, PSI_FLOOR)
        total += (sa - se) * math.log(sa / se)
    return total


@pytest.mark.parametrize(
    ("group", "feature"),
    [("message_features", "length"), ("conversation_stats", "avg_tokens")],
    ids=["int64", "float64"],
)
def test_numeric_statistics_equal_an_independent_computation(
    store: FeatureStore, db: Sql, group: str, feature: str
) -> None:
    jobs = [materialize(store, "acme", group, i) for i in range(3)]

    stats = {s.window_end: s for s in store.feature_statistics(tenant_id="acme", group_id=group, feature_name=feature)}
    per_window = [stats[HOURS[i].end] for i in range(3)]
    # No stats rows leak across tenants or features.
    assert {s.feature_name for s in store.feature_statistics(tenant_id="acme", group_id=group)} == {
        f.name for f in store.registry.get_group(group).batch_features
    }
    edges: list[float] = []
    bins_by_window = []
    for i, s in enumerate(per_window):
        values = sorted(float(v) for v in offline_values(db, "acme", group, feature, i))
        assert values
        quarantined = db.value(
            "SELECT count(*) FROM feature_store.quarantined_rows WHERE job_id = %s AND feature_name = %s"
            " AND rule <> 'expectation'",
            (jobs[i], feature),
        )
        assert s.job_id == jobs[i]
        assert s.rows_valid == len(values)
        assert s.rows_total == len(values) + quarantined
        assert s.rows_quarantined == quarantined
        assert s.min_value == values[0] and s.max_value == values[-1]
        assert s.mean_value == pytest.approx(sum(values) / len(values))
        assert s.distinct_count == len(set(values))
        assert s.percentiles == {f"p{round(p * 100)}": pytest.approx(percentile(values, p)) for p in PERCENTILES}
        if i == 0:
            edges = sorted({percentile(values, d / 10) for d in range(1, 10)})
        counts = Counter(bisect.bisect_right(edges, x) for x in values)
        bins_by_window.append([counts.get(b, 0) for b in range(len(edges) + 1)])

    assert per_window[0].drift_psi is None and per_window[0].baseline_windows == 0
    assert per_window[1].baseline_windows == 1
    assert per_window[1].drift_psi == pytest.approx(psi(bins_by_window[1], bins_by_window[0]))
    baseline = [a + b for a, b in zip(bins_by_window[0], bins_by_window[1], strict=True)]
    assert per_window[2].baseline_windows == 2 <= BASELINE_WINDOWS
    assert per_window[2].drift_psi == pytest.approx(psi(bins_by_window[2], baseline))


def test_quarantine_and_null_rates_and_top_values_of_a_string_feature(store: FeatureStore, db: Sql) -> None:
    window = HOURS[-1]
    # Three user messages of the last hour get an intent the rule does not allow, one gets none.
    ids = [
        r[0]
        for r in db.rows(
            "SELECT id FROM app.messages WHERE tenant_id = 'acme' AND role = 'user' AND created_at > %s"
            " AND created_at <= %s ORDER BY id LIMIT 4",
            (window.start, window.end),
        )
    ]
    assert len(ids) == 4
    db.execute("UPDATE app.messages SET intent = 'spam' WHERE id = ANY(%s)", (ids[:3],))
    db.execute("UPDATE app.messages SET intent = NULL WHERE id = %s", (ids[3],))
    materialize(store, "acme", "message_features", 0)
    job = materialize(store, "acme", "message_features", -1)

    s = store.feature_statistics(tenant_id="acme", group_id="message_features", feature_name="intent")[0]
    assert s.window_end == window.end and s.job_id == job
    staged = db.value(
        "SELECT count(*) FROM app.messages WHERE tenant_id = 'acme' AND role = 'user'"
        " AND created_at > %s AND created_at <= %s",
        (window.start, window.end),
    )
    quarantined = db.value(
        "SELECT count(*) FROM feature_store.quarantined_rows WHERE job_id = %s AND feature_name = 'intent'"
        " AND rule <> 'expectation'",
        (job,),
    )
    nulls = db.value(
        "SELECT count(*) FROM app.messages WHERE tenant_id = 'acme' AND role = 'user' AND intent IS NULL"
        " AND created_at > %s AND created_at <= %s",
        (window.start, window.end),
    )
    assert quarantined >= 3 and nulls >= 1
    assert s.rows_total == staged
    assert s.rows_quarantined == quarantined and s.quarantine_rate == pytest.approx(quarantined / staged)
    assert s.rows_null == nulls and s.null_rate == pytest.approx(nulls / staged)
    assert s.min_value is None and s.percentiles is None

    values = offline_values(db, "acme", "message_features", "intent", -1)
    counts = Counter(values)
    expected_top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_VALUES]
    assert s.top_values == [{"value": v, "count": n} for v, n in expected_top]
    assert s.distinct_count == len(counts)
    assert s.rows_valid == len(values)
    assert s.drift_psi is not None and s.baseline_windows == 1


def test_a_rerun_replaces_the_windows_statistics(store: FeatureStore, db: Sql) -> None:
    materialize(store, "globex", "user_engagement", -1)
    second = materialize(store, "globex", "user_engagement", -1)
    rows = db.rows(
        "SELECT feature_name, job_id FROM feature_store.feature_statistics WHERE tenant_id = 'globex'"
        " AND feature_group_id = 'user_engagement'"
    )
    assert sorted(name for name, _ in rows) == sorted(
        f.name for f in store.registry.get_group("user_engagement").batch_features
    )
    assert {job for _, job in rows} == {second}


def test_a_window_that_drifts_scores_high_and_a_stable_one_low(store: FeatureStore, db: Sql) -> None:
    materialize(store, "acme", "message_features", 0)
    materialize(store, "acme", "message_features", 1)
    # The last hour's messages become ten times longer.
    window = HOURS[-1]
    db.execute(
        "UPDATE app.messages SET content = repeat(content, 10) WHERE tenant_id = 'acme'"
        " AND created_at > %s AND created_at <= %s",
        (window.start, window.end),
    )
    materialize(store, "acme", "message_features", -1)
    stats = store.feature_statistics(tenant_id="acme", group_id="message_features", feature_name="length")
    by_end = {s.window_end: s for s in stats}
    assert by_end[window.end].drifted and by_end[window.end].drift_psi > 1
    assert not by_end[HOURS[1].end].drifted


def test_an_empty_window_has_counts_and_no_value_statistics(store: FeatureStore, db: Sql) -> None:
    db.execute("DELETE FROM app.feedback WHERE tenant_id = 'initech'")
    materialize(store, "initech", "user_engagement", -1)
    [s] = store.feature_statistics(tenant_id="initech", group_id="user_engagement", feature_name="avg_rating")
    assert (s.rows_total, s.rows_valid, s.null_rate, s.quarantine_rate) == (0, 0, 0.0, 0.0)
    assert s.min_value is s.mean_value is s.percentiles is s.drift_psi is None
    assert s.distinct_count == 0


def test_mean_and_spread_of_values_too_large_for_a_doubles_sum_of_squares(
    store: FeatureStore, db: Sql, tmp_path: Path
) -> None:
    rows = "('a', 1e200::float8), ('b', -1e200::float8), ('c', 3e200::float8), ('d', NULL::float8)"
    feature = {
        "name": "x",
        "value_type": "float64",
        "transformation_sql": f"SELECT entity_id, value FROM (VALUES {rows}) AS v(entity_id, value)"
        " WHERE %(tenant_id)s = 'acme'",
    }
    repo = {
        "source_schemas": ["app"],
        "tenants": [{"id": "acme", "name": "Acme Corp"}],
        "feature_groups": [{"id": "huge", "entity_type": "thing", "features": [feature]}],
    }
    (tmp_path / "features.yaml").write_text(yaml.safe_dump(repo, sort_keys=False))
    store.apply(tmp_path)
    materialize(store, "acme", "huge", -1)
    [s] = store.feature_statistics(tenant_id="acme", group_id="huge", feature_name="x")
    assert (s.rows_total, s.rows_null, s.rows_valid) == (4, 1, 3)
    assert (s.min_value, s.max_value) == (-1e200, 3e200)
    assert s.mean_value == pytest.approx(1e200)
    assert s.stddev_value == pytest.approx(math.sqrt(8 / 3) * 1e200)
