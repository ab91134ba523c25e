"""A group's own SQL: one query returning a column per feature, run once per job in the sandbox."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from test_online_consistency import assert_online_is_latest_offline

from feature_store import DefinitionError, FeatureStore, JobStatus, JobType, PipelineConfig
from feature_store.pipeline.models import FeatureStatus
from feature_store.pipeline.staging import UNIQUE_ENTITIES, UNIQUE_KEYS, GroupRows, group_rows, group_source_columns
from support import HOURS, Sql

WINDOW = "m.tenant_id = %(tenant_id)s AND m.created_at > %(start_time)s AND m.created_at <= %(end_time)s"

# The same three message features twice: by a SQL each, and by one SQL of the group's.
OWN = {
    "length": "SELECT m.id AS entity_id, length(m.content) AS value, m.created_at AS event_time",
    "token_count": "SELECT m.id AS entity_id, m.token_count AS value, m.created_at AS event_time",
    "intent": (
        "SELECT m.id AS entity_id, CASE WHEN m.role = 'user' THEN m.intent END AS value, m.created_at AS event_time"
    ),
}
GROUP_SQL = (
    "SELECT m.id AS entity_id, m.created_at AS event_time, length(m.content) AS length, m.token_count,"
    f" CASE WHEN m.role = 'user' THEN m.intent END AS intent FROM app.messages m WHERE {WINDOW}"
)
# The same features of each conversation in each window, as the value of its latest message: an entity
# with rows in several windows.
BY_CONVERSATION = "FROM app.messages m WHERE {WINDOW} GROUP BY m.conversation_id".replace("{WINDOW}", WINDOW)
OWN_BY_CONVERSATION = {
    name: (
        f"SELECT m.conversation_id AS entity_id, (array_agg({column} ORDER BY m.created_at DESC))[1] AS value,"
        f" max(m.created_at) AS event_time {BY_CONVERSATION}"
    )
    for name, column in (
        ("length", "length(m.content)"),
        ("token_count", "m.token_count"),
        ("intent", "CASE WHEN m.role = 'user' THEN m.intent END"),
    )
}
GROUP_SQL_BY_CONVERSATION = (
    "SELECT m.conversation_id AS entity_id, max(m.created_at) AS event_time,"
    " (array_agg(length(m.content) ORDER BY m.created_at DESC))[1] AS length,"
    " (array_agg(m.token_count ORDER BY m.created_at DESC))[1] AS token_count,"
    " (array_agg(CASE WHEN m.role = 'user' THEN m.intent END ORDER BY m.created_at DESC))[1] AS intent"
    f" {BY_CONVERSATION}"
)
FEATURES: dict[str, dict[str, Any]] = {
    "length": {"value_type": "int64", "validation": {"not_null": True, "max": 200}},
    "token_count": {"value_type": "int64", "validation": {"not_null": True, "min": 0}},
    "intent": {
        "value_type": "string",
        "validation": {"allowed_values": ["billing", "account", "technical", "sales", "other"]},
    },
}


def write_repo(
    tmp_path: Path,
    group_sql: str = GROUP_SQL,
    features: dict[str, dict[str, Any]] = FEATURES,
    own: dict[str, str] | None = None,
) -> Path:
    """Groups `by_feature` (a SQL per feature: `own`, by default OWN's of the window's messages) and
    `by_group` (`group_sql`)."""
    own = own or {name: f"{query} FROM app.messages m WHERE {WINDOW}" for name, query in OWN.items()}

    def group(group_id: str, **declared: Any) -> dict[str, Any]:
        return {"id": group_id, "entity_type": "message", "max_failure_rate": 0.5, **declared}

    repo = {
        "source_schemas": ["app"],
        "tenants": [{"id": "acme", "name": "Acme"}, {"id": "globex", "name": "Globex"}],
        "feature_groups": [
            group(
                "by_feature",
                features=[{"name": name, **spec, "transformation_sql": own[name]} for name, spec in features.items()],
            ),
            group(
                "by_group",
                transformation_sql=group_sql,
                features=[{"name": name, **spec} for name, spec in features.items()],
            ),
        ],
    }
    (tmp_path / "features.yaml").write_text(yaml.safe_dump(repo, sort_keys=False, width=200))
    return tmp_path


def full(group: str, tenant: str = "acme", **kw: object) -> PipelineConfig:
    return PipelineConfig(
        tenant_id=tenant,
        feature_group_id=group,
        start_time=HOURS[0].start,
        end_time=HOURS[-1].end,
        mode=JobType.FULL,
        **kw,  # type: ignore[arg-type]
    )


def offline(db: Sql, group: str) -> dict[tuple[str, str, object], object]:
    return {
        (feature, entity, ts): value
        for feature, entity, ts, value in db.rows(
            "SELECT feature_name, entity_id, event_time, value FROM feature_store.feature_values"
            " WHERE feature_group_id = %s",
            (group,),
        )
    }


def quarantined(db: Sql, group: str) -> list[tuple[object, ...]]:
    return db.rows(
        "SELECT feature_name, entity_id, event_time, rule, reason FROM feature_store.quarantined_rows"
        " WHERE feature_group_id = %s ORDER BY 1, 2, 3",
        (group,),
    )


def rewrite_group_sql(db: Sql, old: str, new: str) -> None:
    """Change by_group's SQL in the registry behind apply's back (as if the sources changed after it)."""
    db.execute(
        "UPDATE feature_store.feature_groups SET transformation_sql = replace(transformation_sql, %s, %s)"
        " WHERE id = 'by_group'",
        (old, new),
    )


def test_each_feature_gets_the_values_and_quarantine_a_sql_of_its_own_would_give(
    store: FeatureStore, db: Sql, tmp_path: Path
) -> None:
    store.apply(write_repo(tmp_path))
    for group in ("by_feature", "by_group"):
        result = store.materialize(full(group))
        assert result.status is JobStatus.COMPLETED, result.errors
    by_group = offline(db, "by_group")
    assert by_group == offline(db, "by_feature")
    # Computed here without the feature store: every message of the three hours, as it is.
    lengths = {
        ("length", mid, ts): n
        for mid, ts, n in db.rows(
            "SELECT id, created_at, length(content) FROM app.messages WHERE tenant_id = 'acme'"
            " AND created_at > %s AND created_at <= %s AND length(content) <= 200",
            (HOURS[0].start, HOURS[-1].end),
        )
    }
    assert lengths and {k: v for k, v in by_group.items() if k[0] == "length"} == lengths
    # A NULL in a feature's column is a null value (an assistant message has no intent), as from its own SQL.
    assert any(k[0] == "intent" and v is None for k, v in by_group.items())
    rejected = quarantined(db, "by_group")
    assert {r[3] for r in rejected} >= {"max"}  # long messages break the length rule, and only that feature's
    assert rejected == quarantined(db, "by_feature")
    assert not db.rows("SELECT 1 FROM feature_store.feature_values WHERE tenant_id <> 'acme'")
    message = next(e for f, e, _ in by_group if f == "token_count")
    online = store.get_online_features("acme", "message", [message], ["by_group:token_count", "by_feature:token_count"])
    assert online[0].features["by_group:token_count"].value == online[0].features["by_feature:token_count"].value
    assert online[0].features["by_group:token_count"].value is not None


def test_every_feature_of_a_job_reads_one_run_of_the_groups_sql_and_a_new_job_a_new_one(
    store: FeatureStore, db: Sql, tmp_path: Path
) -> None:
    store.apply(write_repo(tmp_path))
    window = HOURS[-1]
    job = PipelineConfig(tenant_id="acme", feature_group_id="by_group", start_time=window.start, end_time=window.end)
    pipeline = store.pipeline()
    planned = pipeline.start(job)
    first = pipeline.transform(planned.job_id, "token_count")
    # The sources change after the job's first feature ran its group's SQL: the job's other features do
    # not see it (one snapshot per job), and a retried transform reads the same rows again.
    db.execute("UPDATE app.messages SET content = content || '!!!' WHERE tenant_id = 'acme'")
    assert pipeline.transform(planned.job_id, "length") == first
    assert pipeline.transform(planned.job_id, "length") == first
    assert pipeline.transform(planned.job_id, "intent") == first
    for name in FEATURES:
        pipeline.validate(planned.job_id, name)
        pipeline.write(planned.job_id, name)
    assert pipeline.finish(planned.job_id).status is JobStatus.COMPLETED
    new_lengths = (
        "SELECT id, length(content) FROM app.messages WHERE tenant_id = 'acme' AND created_at > %s AND created_at <= %s"
    )
    now = dict(db.rows(new_lengths, (window.start, window.end)))
    stored = dict(
        db.rows("SELECT entity_id, value::int FROM feature_store.feature_values WHERE feature_name = 'length'")
    )
    assert stored and all(stored[m] == now[m] - 3 for m in stored)
    # The job's staged rows went with it: the next job runs the SQL again and sees the change.
    assert db.value("SELECT count(*) FROM pg_tables WHERE schemaname = 'feature_store_staging'") == 0
    assert store.materialize(job).status is JobStatus.COMPLETED
    stored = dict(
        db.rows("SELECT entity_id, value::int FROM feature_store.feature_values WHERE feature_name = 'length'")
    )
    assert stored and all(stored[m] == now[m] for m in stored)


def test_a_feature_whose_column_the_groups_sql_lacks_is_refused_at_apply(store: FeatureStore, tmp_path: Path) -> None:
    broken = GROUP_SQL.replace(" m.token_count,", "")
    with pytest.raises(DefinitionError) as caught:
        store.apply(write_repo(tmp_path, broken))
    (problem,) = caught.value.problems
    assert problem.startswith(f"{tmp_path / 'features.yaml'}:")
    assert "feature group 'by_group': feature 'token_count': transformation_sql of the group returns" in problem
    assert "no column 'token_count' for this feature; it returns entity_id, event_time, length, intent" in problem


def test_a_feature_whose_column_has_the_wrong_type_at_run_time_fails_alone(
    store: FeatureStore, db: Sql, tmp_path: Path
) -> None:
    store.apply(write_repo(tmp_path))
    # Valid at apply time; by the time the job runs, the column is text.
    rewrite_group_sql(db, "length(m.content) AS length", "length(m.content)::text AS length")
    result = store.materialize(full("by_group"))
    assert result.status is JobStatus.FAILED
    statuses = {f.feature: f for f in result.features}
    assert statuses["length"].status is FeatureStatus.FAILED
    assert "returns length of type text, which is not a int64" in (statuses["length"].error_message or "")
    assert "tenant 'acme', group 'by_group', feature 'length'" in (statuses["length"].error_message or "")
    assert statuses["token_count"].status is statuses["intent"].status is FeatureStatus.WRITTEN
    names = {r[0] for r in db.rows("SELECT DISTINCT feature_name FROM feature_store.feature_values")}
    assert names == {"token_count", "intent"}


def test_the_groups_sql_sees_only_its_tenants_rows_whatever_it_filters(
    store: FeatureStore, db: Sql, tmp_path: Path
) -> None:
    store.apply(write_repo(tmp_path))
    rewrite_group_sql(db, "m.tenant_id = %(tenant_id)s", "%(tenant_id)s::text IS NOT NULL")
    assert "m.tenant_id" not in db.value(
        "SELECT transformation_sql FROM feature_store.feature_groups WHERE id = 'by_group'"
    )
    assert store.materialize(full("by_group", tenant="globex")).status is JobStatus.COMPLETED
    entities = {r[0] for r in db.rows("SELECT entity_id FROM feature_store.feature_values")}
    assert entities and all(e.startswith("globex-") for e in entities)


@pytest.mark.parametrize(
    "by_conversation",
    [
        pytest.param(False, id="one row per entity: the wide rows are a view of the group rows"),
        pytest.param(True, id="rows per entity: the wide rows are built from the group rows"),
    ],
)
def test_a_job_without_quarantined_rows_writes_the_same_values_straight_from_the_groups_rows(
    store: FeatureStore, db: Sql, tmp_path: Path, by_conversation: bool
) -> None:
    # Rules nothing breaks: the wide rows come from the group rows as they are (see staging.build_wide).
    lenient = {name: {"value_type": spec["value_type"]} for name, spec in FEATURES.items()}
    if by_conversation:
        store.apply(write_repo(tmp_path, GROUP_SQL_BY_CONVERSATION, lenient, OWN_BY_CONVERSATION))
    else:
        store.apply(write_repo(tmp_path, features=lenient))
    for group in ("by_feature", "by_group"):
        assert store.materialize(full(group)).status is JobStatus.COMPLETED
    assert not db.rows("SELECT 1 FROM feature_store.quarantined_rows WHERE rule <> 'expectation'")
    by_group = offline(db, "by_group")
    assert by_group and by_group == offline(db, "by_feature")
    messages = sorted({entity for _, entity, _ in by_group})
    assert (len(messages) < len(by_group) / len(FEATURES)) == by_conversation  # several rows of an entity
    refs = [f"{group}:{name}" for group in ("by_group", "by_feature") for name in FEATURES]
    for row in store.get_online_features("acme", "message", messages, refs):
        for name in FEATURES:
            ours, theirs = row.features[f"by_group:{name}"], row.features[f"by_feature:{name}"]
            assert (ours.value, ours.event_time, ours.status) == (theirs.value, theirs.event_time, theirs.status)
    assert any(
        row.features["by_group:intent"].value is None
        for row in store.get_online_features("acme", "message", messages, ["by_group:intent"])
    )


@pytest.mark.parametrize(
    ("group_sql", "found"),
    [
        pytest.param(GROUP_SQL, UNIQUE_ENTITIES, id="one row per entity"),
        pytest.param(GROUP_SQL_BY_CONVERSATION, UNIQUE_KEYS, id="rows of an entity in several hours"),
        pytest.param(f"{GROUP_SQL} UNION ALL {GROUP_SQL} AND m.id LIKE '%%-m1'", None, id="a row twice"),
    ],
)
def test_one_search_of_the_group_rows_finds_how_many_there_are_and_which_of_their_keys_are_unique(
    store: FeatureStore, db: Sql, tmp_path: Path, group_sql: str, found: str | None
) -> None:
    # What every feature's validation and the wide rows rely on (see staging.mark_unique_keys): a
    # search that misses unique keys costs each feature a search of its own, one that invents them
    # lets duplicates through; a wrong count of the rows would be each feature's rows processed.
    # Without rules of its own, a feature's rows stay in the group rows unless a key occurs twice.
    store.apply(write_repo(tmp_path, group_sql, {"length": {"value_type": "int64"}}))
    pipeline = store.pipeline()
    planned = pipeline.start(full("by_group"))
    staged = pipeline.transform(planned.job_id, "length")
    rows = db.value(f"SELECT count(*) FROM feature_store_staging.job_{planned.job_id}_source")
    assert rows > 0 and staged == rows
    assert group_rows(db.conn, planned.job_id) == GroupRows(rows=rows, unique=found)
    pipeline.validate(planned.job_id, "length")
    quarantined = db.value(
        "SELECT count(*) FROM feature_store.quarantined_rows WHERE job_id = %s AND feature_name = 'length'",
        (planned.job_id,),
    )
    assert (quarantined > 0) == (found is None)
    assert pipeline.write(planned.job_id, "length") == rows - quarantined


def test_rows_the_groups_sql_returns_twice_are_quarantined_for_every_feature(
    store: FeatureStore, db: Sql, tmp_path: Path
) -> None:
    # The group's SQL returns each conversation's first message twice.
    twice = f"{GROUP_SQL} UNION ALL {GROUP_SQL} AND m.id LIKE '%%-m1'"
    store.apply(write_repo(tmp_path, twice))
    result = store.materialize(full("by_group"))
    assert result.status is JobStatus.COMPLETED, result.errors
    firsts = {
        str(mid)
        for (mid,) in db.rows(
            "SELECT id FROM app.messages WHERE tenant_id = 'acme' AND id LIKE '%%-m1' AND created_at > %s"
            " AND created_at <= %s",
            (HOURS[0].start, HOURS[-1].end),
        )
    }
    assert firsts
    duplicated = db.rows(
        "SELECT feature_name, entity_id, count(*) FROM feature_store.quarantined_rows WHERE rule = 'unique'"
        " GROUP BY 1, 2"
    )
    assert {(f, e) for f, e, _ in duplicated} == {(f, e) for f in FEATURES for e in firsts}
    assert {n for *_, n in duplicated} == {2}
    written = {e for (e,) in db.rows("SELECT DISTINCT entity_id FROM feature_store.feature_values")}
    assert written and not written & firsts


def test_a_backfill_of_an_earlier_hour_publishes_the_values_that_are_their_entities_latest(
    store: FeatureStore, db: Sql, tmp_path: Path
) -> None:
    # Rules nothing breaks: no staged row is marked, so none is copied out of the group rows by then.
    store.apply(write_repo(tmp_path, features={name: {"value_type": f["value_type"]} for name, f in FEATURES.items()}))
    for window in (HOURS[-1], HOURS[0]):  # the later hour first: the earlier one is a backfill
        config = PipelineConfig(
            tenant_id="acme", feature_group_id="by_group", start_time=window.start, end_time=window.end
        )
        assert store.materialize(config).status is JobStatus.COMPLETED
    # The backfilled hour's messages have no later value: theirs are the latest, online too.
    assert any(HOURS[0].start < ts <= HOURS[0].end for _, _, ts in offline(db, "by_group"))
    assert_online_is_latest_offline(store, db, "acme", "by_group")


# Doubles and numerics at every edge of how a value is staged and printed: zero and -0, the ends of the
# range printed without an exponent (1e-4, 1e15), exponents, the smallest normal double and below it,
# NULL; and what validation rejects: NaN, infinities, numerics beyond a double.
EDGE_VALUES = (
    "('zero', 0::float8, 0::numeric), ('neg_zero', '-0', -0.0), ('tenth', 0.1, 0.1), ('third', 1 / 3.0, 1 / 3.0),"
    " ('e-4', 0.0001, 0.0001), ('below_e-4', 0.0000999, 0.0000999), ('e15', 1e15, 1e15),"
    " ('below_e15', 999999999999999.9, 999999999999999.9), ('e20', 1e20, 1e20), ('small', 1.5e-5, 1.5e-5),"
    " ('neg', -123.456, -123.456), ('near_normal', 2.5e-308, 2.5e-308), ('below_1e-307', 5e-308, 5e-308),"
    " ('subnormal', 5e-324, 1e-310), ('max', 1.7976931348623157e308, 1.7976931348623157e308), ('null', NULL, NULL)"
)
REJECTED_VALUES = "('nan', 'NaN', 'NaN'), ('inf', 'Infinity', 1e400), ('ninf', '-Infinity', -1e400)"


@pytest.mark.parametrize(
    "rejected",
    [
        # No row rejected: each wide row is its group row, printed as it is (see staging.build_wide).
        pytest.param(set(), id="all valid"),
        pytest.param({"nan", "inf", "ninf"}, id="some rejected"),
    ],
)
def test_a_group_sql_stages_doubles_exactly_as_a_sql_per_feature_does(
    store: FeatureStore, db: Sql, tmp_path: Path, rejected: set[str]
) -> None:
    # The group rows keep a double as its number only (no jsonb to parse) and print it where the wide
    # rows are built: every value must still land, print and be rejected exactly as a SQL per feature
    # stages it.
    rows = f"{EDGE_VALUES}, {REJECTED_VALUES}" if rejected else EDGE_VALUES
    values = f"(VALUES {rows}) AS v(entity_id, double, num) WHERE %(tenant_id)s = 'acme'"
    features = {"double": {"value_type": "float64"}, "num": {"value_type": "float64"}}
    repo = {
        "source_schemas": ["app"],
        "tenants": [{"id": "acme", "name": "Acme"}],
        "feature_groups": [
            {
                "id": "by_feature",
                "entity_type": "thing",
                "max_failure_rate": 0.9,
                "features": [
                    {"name": name, **spec, "transformation_sql": f"SELECT entity_id, {name} AS value FROM {values}"}
                    for name, spec in features.items()
                ],
            },
            {
                "id": "by_group",
                "entity_type": "thing",
                "max_failure_rate": 0.9,
                "transformation_sql": f"SELECT entity_id, double, num FROM {values}",
                "features": [{"name": name, **spec} for name, spec in features.items()],
            },
        ],
    }
    (tmp_path / "features.yaml").write_text(yaml.safe_dump(repo, sort_keys=False, width=300))
    store.apply(tmp_path)
    pipeline = store.pipeline()

    # One window: one row per entity, which goes online as the wide row's text (see staging.build_wide).
    def hour(group: str) -> PipelineConfig:
        return PipelineConfig(
            tenant_id="acme", feature_group_id=group, start_time=HOURS[-1].start, end_time=HOURS[-1].end
        )

    planned = pipeline.start(hour("by_group"))
    pipeline.transform(planned.job_id, "double")
    value, number = group_source_columns("double")
    bare = db.rows(
        f"SELECT entity_id FROM feature_store_staging.job_{planned.job_id}_source WHERE {value} IS NULL"
        f" AND {number} IS NOT NULL ORDER BY 1"
    )
    assert {e for (e,) in bare} >= {"zero", "tenth", "third", "e20", "max"}  # no jsonb staged for them
    pipeline.fail(planned.job_id, "staged again by the materialize below")
    for group in ("by_feature", "by_group"):
        assert store.materialize(hour(group)).status is JobStatus.COMPLETED

    def landed(group: str) -> dict[str, object]:
        texts = db.rows(
            "SELECT feature_name, entity_id, value::text FROM feature_store.feature_values WHERE feature_group_id = %s",
            (group,),
        )
        online = {
            (name, entity): store.online.client.hget(store.online.key("acme", group, entity), name)  # type: ignore[attr-defined]
            for name, entity, _ in texts
        }
        stats = db.rows(
            "SELECT feature_name, rows_total, rows_null, rows_quarantined, rows_valid, min_value, max_value,"
            " mean_value, stddev_value, percentiles, distinct_count, bin_counts FROM feature_store.feature_statistics"
            " WHERE feature_group_id = %s ORDER BY 1",
            (group,),
        )
        return {
            "offline": sorted(texts),
            "online": {k: v.decode().split("|", 2)[2] for k, v in online.items()},  # the stored JSON text
            "quarantined": [(f, e, r, why) for f, e, _, r, why in quarantined(db, group)],
            "statistics": stats,
        }

    by_feature, by_group = landed("by_feature"), landed("by_group")
    assert by_group == by_feature
    offline_texts = {(f, e): text for f, e, text in by_group["offline"]}  # type: ignore[union-attr]
    assert by_group["online"] == offline_texts  # online prints each value as offline does
    assert offline_texts[("double", "e20")] == "100000000000000000000"
    assert {e for _, e, *_ in by_group["quarantined"]} == rejected  # type: ignore[union-attr]
