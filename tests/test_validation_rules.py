"""One test per validation rule: rows breaking exactly that rule are quarantined with the rule and a
readable reason, never written; the valid rows of the same feature land offline and online as they are.

Each feature here is a literal VALUES list (scoped by the bound tenant), in a one-feature group
registered from a YAML repo written to tmp_path.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from feature_store import FeatureStore, JobStatus, PipelineConfig, PipelineResult
from feature_store.pipeline.validate import RULES
from feature_store.serving.models import OnlineValueStatus
from support import HOURS, Sql

WINDOW = HOURS[-1]
INSIDE = WINDOW.start + timedelta(minutes=30)
GROUP = "rules"
FEATURE = "f"


@dataclass
class Run:
    result: PipelineResult
    quarantined: set[tuple[Any, ...]]
    """(entity_id, event_time, value, rule, reason) of each quarantined row."""
    offline: dict[tuple[str, datetime], Any]
    """(entity_id, event_time) -> value of each row written offline."""
    online: dict[str, Any]
    """entity_id -> value of each entity asked for that has a value online."""


def values_feature(rows: str, *, columns: str = "entity_id, value") -> str:
    """Transformation SQL returning literal rows; it filters by the bound tenant, as every feature must."""
    return f"SELECT {columns} FROM (VALUES {rows}) AS v({columns}) WHERE %(tenant_id)s = 'acme'"


def run_feature(
    store: FeatureStore,
    db: Sql,
    tmp_path: Path,
    *,
    value_type: str,
    transformation_sql: str,
    validation: dict[str, Any] | None = None,
) -> Run:
    """Register a one-feature group, materialize WINDOW for acme, and collect what landed where.

    Online values are read for every entity id seen offline or in quarantine.
    """
    feature: dict[str, Any] = {"name": FEATURE, "value_type": value_type, "transformation_sql": transformation_sql}
    if validation:
        feature["validation"] = validation
    repo = {
        "source_schemas": ["app"],
        "tenants": [{"id": "acme", "name": "Acme Corp"}],
        "feature_groups": [
            {"id": GROUP, "entity_type": "thing", "max_failure_rate": 0.9, "features": [feature]},
        ],
    }
    (tmp_path / "features.yaml").write_text(yaml.safe_dump(repo, sort_keys=False))
    store.apply(tmp_path)
    result = store.materialize(
        PipelineConfig(tenant_id="acme", feature_group_id=GROUP, start_time=WINDOW.start, end_time=WINDOW.end)
    )
    quarantined = {
        tuple(r)
        for r in db.rows(
            "SELECT entity_id, event_time, value, rule, reason FROM feature_store.quarantined_rows WHERE job_id = %s",
            (result.job_id,),
        )
    }
    offline = {
        (entity, ts): value
        for entity, ts, value in db.rows(
            "SELECT entity_id, event_time, value FROM feature_store.feature_values"
            " WHERE tenant_id = 'acme' AND feature_group_id = %s AND feature_name = %s",
            (GROUP, FEATURE),
        )
    }
    entities = sorted({e for e, _ in offline} | {q[0] for q in quarantined if q[0] is not None})
    ref = f"{GROUP}:{FEATURE}"
    online = {}
    for row in store.get_online_features("acme", "thing", entities, [ref]):
        value = row.features[ref]
        if value.status is OnlineValueStatus.PRESENT:
            online[row.entity_id] = value.value
    return Run(result=result, quarantined=quarantined, offline=offline, online=online)


def assert_landed(run: Run, good: dict[tuple[str, datetime], Any]) -> None:
    """The job completed, exactly the good rows are offline, and each good entity's value is online."""
    assert run.result.status is JobStatus.COMPLETED, run.result.errors
    assert run.offline == good
    assert run.result.rows_failed == len(run.quarantined)
    assert run.online == {entity: value for (entity, _), value in good.items()}


def test_the_rules_are_the_ones_tested_here() -> None:
    assert RULES == (
        "entity_id",
        "event_time",
        "not_null",
        "value_type",
        "value_size",
        "min",
        "max",
        "allowed_values",
        "unique",
    )


def test_entity_id_rule_quarantines_null_empty_and_too_long_ids(store: FeatureStore, db: Sql, tmp_path: Path) -> None:
    assert store.settings.max_entity_id_length == 256
    at_limit, wide_at_limit, too_long = "y" * 256, "é" * 256, "x" * 257  # the limit counts characters
    run = run_feature(
        store,
        db,
        tmp_path,
        value_type="int64",
        transformation_sql=values_feature(
            f"('a', 1), (NULL, 2), ('b', 3), (NULL, 4), ('', 5), ('{too_long}', 6), ('{at_limit}', 7),"
            f" ('{wide_at_limit}', 8)"
        ),
    )
    shown = "'" + "x" * 64 + "…'"
    assert run.quarantined == {
        (None, WINDOW.end, 2, "entity_id", "entity_id is null (value 2)"),
        (None, WINDOW.end, 4, "entity_id", "entity_id is null (value 4)"),
        ("", WINDOW.end, 5, "entity_id", "entity_id is empty (value 5)"),
        (
            too_long,
            WINDOW.end,
            6,
            "entity_id",
            f"entity_id {shown} has 257 characters, more than the limit of 256 (FEATURE_STORE_MAX_ENTITY_ID_LENGTH)",
        ),
    }
    assert_landed(
        run, {("a", WINDOW.end): 1, ("b", WINDOW.end): 3, (at_limit, WINDOW.end): 7, (wide_at_limit, WINDOW.end): 8}
    )


def test_event_time_rule_quarantines_rows_outside_the_window(store: FeatureStore, db: Sql, tmp_path: Path) -> None:
    before = WINDOW.start - timedelta(hours=5)
    after = WINDOW.end + timedelta(seconds=1)
    run = run_feature(
        store,
        db,
        tmp_path,
        value_type="int64",
        transformation_sql=values_feature(
            f"('in', 1, '{INSIDE.isoformat()}'::timestamptz), ('at_end', 2, '{WINDOW.end.isoformat()}'),"
            f" ('before', 3, '{before.isoformat()}'), ('at_start', 4, '{WINDOW.start.isoformat()}'),"
            f" ('after', 5, '{after.isoformat()}'), ('no_time', 6, NULL)",
            columns="entity_id, value, event_time",
        ),
    )
    outside = f"is outside the window ({WINDOW.start.isoformat()}, {WINDOW.end.isoformat()}]"
    assert run.quarantined == {
        ("before", before, 3, "event_time", f"event_time 2026-11-02 06:00:00+00 {outside}"),
        ("at_start", WINDOW.start, 4, "event_time", f"event_time 2026-11-02 11:00:00+00 {outside}"),
        ("after", after, 5, "event_time", f"event_time 2026-11-02 12:00:01+00 {outside}"),
        ("no_time", None, 6, "event_time", "event_time is null"),
    }
    assert_landed(run, {("in", INSIDE): 1, ("at_end", WINDOW.end): 2})


def test_not_null_rule_quarantines_null_values(store: FeatureStore, db: Sql, tmp_path: Path) -> None:
    run = run_feature(
        store,
        db,
        tmp_path,
        value_type="int64",
        transformation_sql=values_feature("('a', 7), ('nothing', NULL), ('b', 0)"),
        validation={"not_null": True},
    )
    assert run.quarantined == {("nothing", WINDOW.end, None, "not_null", "value is null")}
    assert_landed(run, {("a", WINDOW.end): 7, ("b", WINDOW.end): 0})


def test_without_not_null_a_null_value_is_written(store: FeatureStore, db: Sql, tmp_path: Path) -> None:
    run = run_feature(
        store,
        db,
        tmp_path,
        value_type="int64",
        transformation_sql=values_feature("('a', 7), ('nothing', NULL)"),
    )
    assert run.quarantined == set()
    assert run.result.status is JobStatus.COMPLETED
    assert run.offline == {("a", WINDOW.end): 7, ("nothing", WINDOW.end): None}


def test_value_type_rule_quarantines_values_that_are_not_int64(store: FeatureStore, db: Sql, tmp_path: Path) -> None:
    run = run_feature(
        store,
        db,
        tmp_path,
        value_type="int64",
        transformation_sql=values_feature(
            "('a', 42::numeric), ('fraction', 1.5), ('too_big', 9223372036854775808), ('max', 9223372036854775807),"
            " ('too_small', -9223372036854775809), ('min', -9223372036854775808), ('whole', 3.0),"
            " ('huge', 1e400), ('nan', 'NaN')"
        ),
    )
    int64_range = "[-9223372036854775808, 9223372036854775807]"
    assert run.quarantined == {
        ("fraction", WINDOW.end, 1.5, "value_type", "value 1.5 is not a whole number (int64)"),
        (
            "too_big",
            WINDOW.end,
            9223372036854775808,
            "value_type",
            f"value 9223372036854775808 is out of int64 range {int64_range}",
        ),
        (
            "too_small",
            WINDOW.end,
            -9223372036854775809,
            "value_type",
            f"value -9223372036854775809 is out of int64 range {int64_range}",
        ),
        ("huge", WINDOW.end, 10**400, "value_type", f"value 1e400 is out of int64 range {int64_range}"),
        ("nan", WINDOW.end, "NaN", "value_type", 'value "NaN" is not an int64'),
    }
    assert_landed(
        run,
        {
            ("a", WINDOW.end): 42,
            ("max", WINDOW.end): 9223372036854775807,
            ("min", WINDOW.end): -9223372036854775808,
            ("whole", WINDOW.end): 3.0,
        },
    )


def test_value_type_rule_quarantines_numerics_out_of_float64_range(
    store: FeatureStore, db: Sql, tmp_path: Path
) -> None:
    # A numeric a double cannot hold used to fail the whole feature (the float8 cast overflowed).
    run = run_feature(
        store,
        db,
        tmp_path,
        value_type="float64",
        transformation_sql=values_feature(
            "('ok', 1.5::numeric), ('huge', 1e400), ('negative_huge', -1.5e400), ('max', 1.7976931348623157e308),"
            " ('past_max', 1.7976931348623159e308), ('nan', 'NaN'), ('inf', 'Infinity'), ('ninf', '-Infinity'),"
            " ('long', 2 / 3.0), ('tiny', 1e-400)"
        ),
    )
    assert {q[:4] for q in run.quarantined} == {
        ("huge", WINDOW.end, 10**400, "value_type"),
        ("negative_huge", WINDOW.end, -15 * 10**399, "value_type"),
        ("past_max", WINDOW.end, 17976931348623159 * 10**292, "value_type"),
        ("nan", WINDOW.end, "NaN", "value_type"),
        ("inf", WINDOW.end, "Infinity", "value_type"),
        ("ninf", WINDOW.end, "-Infinity", "value_type"),
    }
    assert {q[0]: q[4] for q in run.quarantined} == {
        "huge": "value 1e400 is out of float64 range",
        "negative_huge": "value -1.5e400 is out of float64 range",
        "past_max": "value 1.7976931348623159e308 is out of float64 range",
        "nan": "value NaN is not a finite float64",
        "inf": "value Infinity is not a finite float64",
        "ninf": "value -Infinity is not a finite float64",
    }
    assert run.result.status is JobStatus.COMPLETED, run.result.errors
    # Valid values are staged as doubles, as before; below the smallest normal double, as they are.
    assert {k: float(v) for k, v in run.offline.items()} == {
        ("ok", WINDOW.end): 1.5,
        ("max", WINDOW.end): 1.7976931348623157e308,
        ("long", WINDOW.end): 2 / 3,
        ("tiny", WINDOW.end): 0.0,
    }
    assert db.value("SELECT value::text FROM feature_store.feature_values WHERE entity_id = 'long'") == str(2 / 3)
    assert db.value("SELECT value::numeric = 1e-400 FROM feature_store.feature_values WHERE entity_id = 'tiny'")
    assert run.online == {"ok": 1.5, "max": 1.7976931348623157e308, "long": 2 / 3, "tiny": 0.0}


def test_value_type_rule_quarantines_nan_and_infinite_doubles(store: FeatureStore, db: Sql, tmp_path: Path) -> None:
    run = run_feature(
        store,
        db,
        tmp_path,
        value_type="float64",
        transformation_sql=values_feature(
            "('ok', -2.5::float8), ('nan', 'NaN'), ('inf', 'Infinity'), ('ninf', '-Infinity'), ('zero', 0),"
            " ('max', 1.7976931348623157e308), ('subnormal', 5e-324)"
        ),
    )
    assert run.quarantined == {
        ("nan", WINDOW.end, "NaN", "value_type", "value NaN is not a finite float64"),
        ("inf", WINDOW.end, "Infinity", "value_type", "value Infinity is not a finite float64"),
        ("ninf", WINDOW.end, "-Infinity", "value_type", "value -Infinity is not a finite float64"),
    }
    assert run.result.status is JobStatus.COMPLETED, run.result.errors
    good = {"ok": -2.5, "zero": 0.0, "max": 1.7976931348623157e308, "subnormal": 5e-324}
    assert {k: float(v) for k, v in run.offline.items()} == {(e, WINDOW.end): v for e, v in good.items()}
    assert run.online == good


def test_value_size_rule_quarantines_strings_over_the_limit(store: FeatureStore, db: Sql, tmp_path: Path) -> None:
    limit = store.settings.max_value_bytes
    assert limit == 64 * 1024
    run = run_feature(
        store,
        db,
        tmp_path,
        value_type="string",
        transformation_sql=values_feature(
            f"('ok', 'fine'), ('at_limit', repeat('a', {limit})), ('wide', repeat('é', {limit // 2 + 1})),"
            f" ('ten_mb', repeat('x', {10 * 1024 * 1024})), ('chars_at_limit', repeat('b', {limit - 1}) || 'c')"
        ),
    )
    over = f"more than the limit of {limit} bytes (FEATURE_STORE_MAX_VALUE_BYTES)"
    # Quarantine keeps a 1024-character prefix of an oversized value; the reason gives its full size.
    assert run.quarantined == {
        (
            "wide",
            WINDOW.end,
            "é" * 1024 + "…",
            "value_size",
            f'value "{"é" * 99}… has {limit + 2} bytes, {over}',
        ),
        (
            "ten_mb",
            WINDOW.end,
            "x" * 1024 + "…",
            "value_size",
            f'value "{"x" * 99}… has {10 * 1024 * 1024} bytes, {over}',
        ),
    }
    assert_landed(
        run,
        {
            ("ok", WINDOW.end): "fine",
            ("at_limit", WINDOW.end): "a" * limit,
            ("chars_at_limit", WINDOW.end): "b" * (limit - 1) + "c",
        },
    )
    # Nothing of the 10 MB string reached Redis.
    assert not store.online.client.exists(store.online.key("acme", GROUP, "ten_mb"))
    assert max(len(v) for v in store.online.client.hgetall(store.online.key("acme", GROUP, "at_limit")).values()) < (
        limit + 100
    )


def test_min_rule_quarantines_values_below_min(store: FeatureStore, db: Sql, tmp_path: Path) -> None:
    run = run_feature(
        store,
        db,
        tmp_path,
        value_type="float64",
        transformation_sql=values_feature("('a', 0.5::float8), ('low', -0.25), ('edge', 0)"),
        validation={"min": 0},
    )
    assert run.quarantined == {("low", WINDOW.end, -0.25, "min", "value -0.25 is below min 0")}
    assert_landed(run, {("a", WINDOW.end): 0.5, ("edge", WINDOW.end): 0})


def test_max_rule_quarantines_values_above_max(store: FeatureStore, db: Sql, tmp_path: Path) -> None:
    run = run_feature(
        store,
        db,
        tmp_path,
        value_type="int64",
        transformation_sql=values_feature("('a', 5), ('high', 6), ('low', -3)"),
        validation={"max": 5},
    )
    assert run.quarantined == {("high", WINDOW.end, 6, "max", "value 6 is above max 5")}
    assert_landed(run, {("a", WINDOW.end): 5, ("low", WINDOW.end): -3})


def test_min_and_max_compare_exact_numbers_where_doubles_would_round_them_together(
    store: FeatureStore, db: Sql, tmp_path: Path
) -> None:
    # 2**53 + 1 and 2**53 are one double; 2e-320 and 5e-321 are staged as they are, as 0 in doubles.
    run = run_feature(
        store,
        db,
        tmp_path,
        value_type="int64",
        transformation_sql=values_feature("('at', 9007199254740992), ('above', 9007199254740993)"),
        validation={"max": 2**53},
    )
    assert run.quarantined == {
        ("above", WINDOW.end, 9007199254740993, "max", "value 9007199254740993 is above max 9.0072e+15")
    }
    assert_landed(run, {("at", WINDOW.end): 9007199254740992})
    run = run_feature(
        store,
        db,
        tmp_path,
        value_type="float64",
        transformation_sql=values_feature("('tiny', 2e-320::numeric), ('tinier', 5e-321::numeric)"),
        validation={"min": 1e-320},
    )
    assert {(q[0], q[3]) for q in run.quarantined} == {("tinier", "min")}
    assert_landed(run, {("tiny", WINDOW.end): 2e-320})


def test_allowed_values_rule_quarantines_values_outside_the_set(store: FeatureStore, db: Sql, tmp_path: Path) -> None:
    run = run_feature(
        store,
        db,
        tmp_path,
        value_type="string",
        transformation_sql=values_feature("('a', 'billing'), ('odd', 'gibberish'), ('b', 'sales'), ('case', 'Sales')"),
        validation={"allowed_values": ["billing", "sales"]},
    )
    allowed = "is not one of the allowed values ['billing', 'sales']"
    assert run.quarantined == {
        ("odd", WINDOW.end, "gibberish", "allowed_values", f'value "gibberish" {allowed}'),
        ("case", WINDOW.end, "Sales", "allowed_values", f'value "Sales" {allowed}'),
    }
    assert_landed(run, {("a", WINDOW.end): "billing", ("b", WINDOW.end): "sales"})


def test_unique_rule_quarantines_every_row_of_a_duplicated_key(store: FeatureStore, db: Sql, tmp_path: Path) -> None:
    later = INSIDE + timedelta(minutes=10)
    run = run_feature(
        store,
        db,
        tmp_path,
        value_type="int64",
        transformation_sql=values_feature(
            f"('dup', 1, '{INSIDE}'::timestamptz), ('dup', 2, '{INSIDE}'), ('ok', 3, '{INSIDE}'),"
            f" ('twice', 4, '{INSIDE}'), ('twice', 5, '{later}')",
            columns="entity_id, value, event_time",
        ),
    )
    reason = "entity dup has 2 rows at event_time 2026-11-02 11:30:00+00; (entity_id, event_time) must be unique"
    assert run.quarantined == {("dup", INSIDE, 1, "unique", reason), ("dup", INSIDE, 2, "unique", reason)}
    assert run.result.status is JobStatus.COMPLETED
    assert run.offline == {("ok", INSIDE): 3, ("twice", INSIDE): 4, ("twice", later): 5}
    assert run.online == {"ok": 3, "twice": 5}


def test_reasons_show_long_numbers_and_nulls_readably(store: FeatureStore, db: Sql, tmp_path: Path) -> None:
    run = run_feature(
        store,
        db,
        tmp_path,
        value_type="int64",
        transformation_sql=values_feature(
            "('zero', 0.0000000000000000000000000::numeric), ('tiny', 0.000000000000000000000000000001),"
            " ('negative_big', -123456789012345678901234567890), (NULL, NULL), ('one', 1)"
        ),
        validation={"min": 1},
    )
    assert {(e, rule, reason) for e, _, _, rule, reason in run.quarantined} == {
        ("zero", "min", "value 0.0000000000000000000000000 is below min 1"),
        ("tiny", "value_type", "value 1e-30 is not a whole number (int64)"),
        (
            "negative_big",
            "value_type",
            "value -1.2345678901234568e29 is out of int64 range [-9223372036854775808, 9223372036854775807]",
        ),
        (None, "entity_id", "entity_id is null (value null)"),
    }
    assert_landed(run, {("one", WINDOW.end): 1})
