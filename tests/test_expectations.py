"""Expectations on source rows: a row that breaks one never reaches a feature, and is quarantined with why."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from feature_store import DefinitionError, FeatureStore, JobStatus, PipelineConfig
from featurepipe_demo import demo_repo_path
from support import HOURS, Sql


@pytest.fixture(autouse=True)
def broken_ratings(db: Sql) -> None:
    """Two broken ratings (0 and 42) in every hour, besides whatever the demo data holds."""
    for window in HOURS:
        db.execute(
            "UPDATE app.feedback f SET rating = CASE WHEN s.n = 1 THEN 0 ELSE 42 END FROM ("
            "  SELECT id, row_number() OVER (ORDER BY id) AS n FROM app.feedback"
            "  WHERE tenant_id = 'acme' AND created_at > %s AND created_at <= %s) s"
            " WHERE f.id = s.id AND s.n <= 2",
            (window.start, window.end),
        )


def run_user_engagement(store: FeatureStore, tenant: str = "acme") -> list[int]:
    jobs = []
    for window in HOURS:
        result = store.materialize(
            PipelineConfig(
                tenant_id=tenant, feature_group_id="user_engagement", start_time=window.start, end_time=window.end
            )
        )
        assert result.status is JobStatus.COMPLETED
        jobs.append(result.job_id)
    return jobs


def avg_ratings(db: Sql) -> dict[tuple[str, object], float]:
    return {
        (entity, ts): float(value)
        for entity, ts, value in db.rows(
            "SELECT entity_id, event_time, value FROM feature_store.feature_values WHERE feature_name = 'avg_rating'"
        )
    }


def test_broken_ratings_never_reach_avg_rating_and_are_quarantined(store: FeatureStore, db: Sql) -> None:
    broken = db.value(
        "SELECT count(*) FROM app.feedback WHERE tenant_id = 'acme' AND rating NOT BETWEEN 1 AND 5"
        " AND created_at > %s AND created_at <= %s",
        (HOURS[0].start, HOURS[-1].end),
    )
    assert broken > 0, "the demo data holds broken ratings on purpose"
    jobs = run_user_engagement(store)
    expected = {
        (user, hour_end): pytest.approx(float(avg))
        for user, hour_end, avg in db.rows(
            "SELECT user_id, date_trunc('hour', created_at - interval '1 microsecond') + interval '1 hour', avg(rating)"
            " FROM app.feedback WHERE tenant_id = 'acme' AND rating BETWEEN 1 AND 5 GROUP BY 1, 2"
        )
    }
    assert avg_ratings(db) == expected
    quarantined = db.rows(
        "SELECT entity_id, value, reason FROM feature_store.quarantined_rows"
        " WHERE feature_name = 'avg_rating' AND rule = 'expectation' AND job_id = ANY(%s) ORDER BY entity_id",
        (jobs,),
    )
    assert len(quarantined) == broken
    for feedback_id, value, reason in quarantined:
        rating = value["rating"]
        assert rating not in range(1, 6)
        bound = "below min 1" if rating < 1 else "above max 5"
        assert reason == (
            f"source row app.feedback {feedback_id}: app.feedback.rating {rating} is {bound}"
            " (excluded before aggregation)"
        )
    # They count as the feature's failed rows, visible on the job.
    failed = db.value(
        "SELECT sum(rows_failed) FROM feature_store.materialization_job_features"
        " WHERE feature_name = 'avg_rating' AND job_id = ANY(%s)",
        (jobs,),
    )
    assert failed == broken
    # The summary (CLI demo, Feature Store view) counts them per feature and rule, with a reason.
    summary = {(c.feature_name, c.rule): c for c in store.quarantine_summary(tenant_id="acme")}
    assert summary[("avg_rating", "expectation")].rows == broken
    assert summary[("avg_rating", "expectation")].example.startswith("source row app.feedback ")


def test_feature_sql_cannot_see_rows_that_break_an_expectation(store: FeatureStore, db: Sql) -> None:
    db.execute(
        "UPDATE feature_store.feature_definitions SET transformation_sql ="
        " 'SELECT f.user_id AS entity_id, count(*)::float8 AS value FROM app.feedback f"
        "  WHERE f.tenant_id = %(tenant_id)s AND f.rating NOT BETWEEN 1 AND 5 GROUP BY f.user_id'"
        " WHERE feature_group_id = 'user_engagement' AND name = 'avg_rating'"
    )
    run_user_engagement(store)
    assert avg_ratings(db) == {}


def _demo_repo_with(tmp_path: Path, sources: str) -> Path:
    text = (demo_repo_path() / "features.yaml").read_text()
    start = text.index("sources:")
    end = text.index("tenants:")
    (tmp_path / "features.yaml").write_text(text[:start] + textwrap.dedent(sources) + "\n" + text[end:])
    for module in demo_repo_path().glob("*.py"):  # the repo's function features
        (tmp_path / module.name).write_text(module.read_text())
    return tmp_path


def test_expectations_follow_the_repo(store: FeatureStore, db: Sql, tmp_path: Path) -> None:
    policies = "SELECT count(*) FROM pg_policy WHERE polname = 'featurepipe_expectations'"
    assert db.value(policies) == 2
    store.apply(_demo_repo_with(tmp_path, "sources: []"))
    assert db.value(policies) == 0
    run_user_engagement(store)
    # Nothing checks ratings any more: the broken ones are averaged in (only the feature's own min/max
    # rules still catch an average outside 1-5).
    assert db.value("SELECT count(*) FROM feature_store.quarantined_rows WHERE rule = 'expectation'") == 0
    averaged_in = {
        (user, hour_end): pytest.approx(float(avg))
        for user, hour_end, avg in db.rows(
            "SELECT user_id, date_trunc('hour', created_at - interval '1 microsecond') + interval '1 hour', avg(rating)"
            " FROM app.feedback WHERE tenant_id = 'acme' GROUP BY 1, 2 HAVING avg(rating) BETWEEN 1 AND 5"
        )
    }
    assert avg_ratings(db) == averaged_in
    store.apply(
        _demo_repo_with(
            tmp_path,
            """
            sources:
              - table: app.feedback
                tenant_column: tenant_id
                time_column: created_at
                expectations:
                  rating: {min: 2, max: 4}
            """,
        )
    )
    assert db.value(policies) == 1
    db.execute("TRUNCATE feature_store.offline_rows")
    run_user_engagement(store)
    values = avg_ratings(db).values()
    assert values and all(2 <= v <= 4 for v in values)


@pytest.mark.parametrize(
    ("sources", "message"),
    [
        (
            "sources:\n  - {table: app.feedback, tenant_column: tenant_id, time_column: created_at,"
            " expectations: {stars: {min: 1}}}\n",
            r"features.yaml:3: source 'app.feedback': table app.feedback has no column 'stars'",
        ),
        (
            "sources:\n  - {table: app.feedback, tenant_column: tenant_id, time_column: created_at,"
            " expectations: {comment: {min: 1}}}\n",
            r"features.yaml:3: source 'app.feedback': expectation on app.feedback.comment:"
            r" min/max need a numeric column",
        ),
        (
            "sources:\n  - {table: app.feedback, time_column: created_at, expectations: {rating: {min: 1}}}\n",
            r"features.yaml:3: source 'app.feedback': expectations need tenant_column",
        ),
        (
            "sources:\n  - {table: public.feedback, tenant_column: tenant_id, time_column: created_at,"
            " expectations: {rating: {min: 1}}}\n",
            r"features.yaml:3: source 'public.feedback': table public.feedback is not in the source schemas \(app\)",
        ),
    ],
    ids=["unknown column", "min on text", "no tenant column", "outside the source schemas"],
)
def test_source_declarations_are_checked_at_apply(
    store: FeatureStore, db: Sql, tmp_path: Path, sources: str, message: str
) -> None:
    (tmp_path / "features.yaml").write_text(
        "source_schemas: [app]\n" + sources + "tenants:\n  - {id: acme, name: Acme}\n"
    )
    with pytest.raises(DefinitionError, match=message):
        store.apply(tmp_path)
    assert db.value("SELECT count(*) FROM feature_store.source_tables") == 2  # the demo repo's, untouched


def test_expectation_values_are_literals_never_sql(store: FeatureStore, db: Sql, tmp_path: Path) -> None:
    hostile = "x'); DROP TABLE app.feedback; --"
    store.apply(
        _demo_repo_with(
            tmp_path,
            f"""
            sources:
              - table: app.feedback
                tenant_column: tenant_id
                time_column: created_at
                expectations:
                  comment: {{allowed_values: ["Thanks, that helped", "{hostile}"]}}
            """,
        )
    )
    assert db.value("SELECT to_regclass('app.feedback') IS NOT NULL") is True
    policy = db.value("SELECT pg_get_expr(polqual, polrelid) FROM pg_policy WHERE polname = 'featurepipe_expectations'")
    assert "DROP TABLE" in policy and "comment" in policy  # inside a string constant
    run_user_engagement(store)
