"""Feature repo as code: `apply` is all or nothing, and every problem names file:line, object and field."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from feature_store import DefinitionError, FeatureStore
from feature_store.cli.commands import main
from feature_store.definitions.repo import load_repo
from support import Sql

GOOD_FEATURE = """\
      - name: msg_count_v2
        value_type: int64
        validation: {min: 0}
        transformation_sql: |
          SELECT m.user_id AS entity_id, count(*) AS value
          FROM app.messages m
          WHERE m.tenant_id = %(tenant_id)s AND m.created_at > %(start_time)s AND m.created_at <= %(end_time)s
          GROUP BY m.user_id
"""


def repo_with(tmp_path: Path, features: str, *, extra_group: str = "") -> Path:
    (tmp_path / "features.yaml").write_text(
        "source_schemas: [app]\n"
        "tenants:\n  - {id: acme, name: Acme Corp}\n  - {id: umbrella, name: Umbrella}\n"
        "feature_groups:\n"
        "  - id: user_extra\n    entity_type: user\n    ttl_seconds: 3600\n    features:\n" + features + extra_group
    )
    return tmp_path


def registry_snapshot(db: Sql) -> list[tuple]:  # type: ignore[type-arg]
    return db.rows(
        "SELECT 'tenant', id, status, '' FROM feature_store.tenants UNION ALL"
        " SELECT 'group', id, status, '' FROM feature_store.feature_groups UNION ALL"
        " SELECT 'feature', feature_group_id || ':' || name, status, coalesce(transformation_sql, '')"
        " FROM feature_store.feature_definitions ORDER BY 1, 2"
    )


def test_apply_creates_then_reports_no_changes(store: FeatureStore, tmp_path: Path, db: Sql) -> None:
    path = repo_with(tmp_path, GOOD_FEATURE)
    report = store.apply(path)
    assert report.created == ["tenant umbrella", "feature group user_extra"]
    assert "tenant acme" in report.unchanged
    # The demo groups are not in this repo: apply deactivates them (history is kept).
    assert "feature group user_engagement" in report.deactivated
    again = store.apply(path)
    assert not again.changed
    assert db.value("SELECT status FROM feature_store.feature_groups WHERE id = 'user_engagement'") == "inactive"


def test_apply_reports_an_updated_feature(store: FeatureStore, tmp_path: Path) -> None:
    store.apply(repo_with(tmp_path, GOOD_FEATURE))
    report = store.apply(repo_with(tmp_path, GOOD_FEATURE.replace("{min: 0}", "{min: 1}")))
    assert report.updated == ["feature group user_extra"]


BROKEN_CASES = {
    "unknown key": (
        GOOD_FEATURE.replace("value_type: int64", "value_type: int64\n        colour: blue"),
        r"features.yaml:20: feature group 'user_extra': feature 'msg_count_v2'.colour: unknown key",
    ),
    "wrong type": (
        GOOD_FEATURE.replace("value_type: int64", "value_type: decimal"),
        r"features.yaml:19: feature group 'user_extra': feature 'msg_count_v2'.value_type: Input should be 'int64'",
    ),
    "min above max": (
        GOOD_FEATURE.replace("{min: 0}", "{min: 5, max: 1}"),
        r"features.yaml:20: feature group 'user_extra': feature 'msg_count_v2'.validation: "
        r"min \(5\) is greater than max \(1\)",
    ),
    "batch without sql": (
        "      - name: no_sql\n        value_type: int64\n",
        r"features.yaml:18: feature group 'user_extra': feature 'no_sql': a batch feature needs transformation_sql",
    ),
    "two statements": (
        GOOD_FEATURE.replace("GROUP BY m.user_id", "GROUP BY m.user_id; DROP TABLE app.messages"),
        r"features.yaml:21: feature group 'user_extra': feature 'msg_count_v2': transformation_sql is not a single "
        r"SELECT statement: syntax error at or near \";\"",
    ),
    "dml": (
        "      - name: sneaky\n        value_type: int64\n        transformation_sql: |\n"
        "          WITH d AS (DELETE FROM app.messages WHERE tenant_id = %(tenant_id)s RETURNING user_id)\n"
        "          SELECT user_id AS entity_id, 1 AS value FROM d\n",
        r"features.yaml:20: feature group 'user_extra': feature 'sneaky': transformation_sql must be a single SELECT"
        r" that does not modify data: WITH clause containing a data-modifying statement",
    ),
    "wrong columns": (
        GOOD_FEATURE.replace("count(*) AS value", "count(*) AS total"),
        r"feature 'msg_count_v2': transformation_sql must return columns entity_id, value\[, event_time\]; "
        r"it returns entity_id, total",
    ),
    "wrong value type": (
        GOOD_FEATURE.replace("count(*) AS value", "m.user_id AS value").replace("GROUP BY m.user_id", ""),
        r"transformation_sql returns value of type text, which is not a int64",
    ),
    "unknown table": (
        GOOD_FEATURE.replace("app.messages", "app.mesages"),
        r"transformation_sql relation \"app.mesages\" does not exist",
    ),
    "outside the source schemas": (
        GOOD_FEATURE.replace("app.messages m", "feature_store.feature_values m")
        .replace("m.user_id", "m.entity_id")
        .replace("m.created_at", "m.event_time"),
        r"transformation_sql reads something outside the declared source schemas or modifies data: "
        r"permission denied for schema feature_store",
    ),
    "no tenant filter": (
        GOOD_FEATURE.replace("m.tenant_id = %(tenant_id)s AND ", ""),
        r"transformation_sql must filter its sources by the bound %\(tenant_id\)s parameter",
    ),
    "unknown placeholder": (
        GOOD_FEATURE.replace("%(end_time)s", "%(until)s"),
        r"transformation_sql uses a placeholder other than %\(tenant_id\)s, %\(start_time\)s, %\(end_time\)s",
    ),
}


@pytest.mark.parametrize("case", list(BROKEN_CASES))
def test_a_broken_repo_is_rejected_precisely_and_changes_nothing(
    case: str, store: FeatureStore, tmp_path: Path, db: Sql
) -> None:
    features, message = BROKEN_CASES[case]
    before = registry_snapshot(db)
    with pytest.raises(DefinitionError, match=message):
        store.apply(repo_with(tmp_path, GOOD_FEATURE.replace("msg_count_v2", "fine_one") + features))
    assert registry_snapshot(db) == before


def test_the_cli_exits_non_zero_on_a_broken_repo_and_changes_nothing(env: object, tmp_path: Path, db: Sql) -> None:
    before = registry_snapshot(db)
    path = repo_with(tmp_path, GOOD_FEATURE.replace("{min: 0}", "{min: 5, max: 1}"))
    result = CliRunner().invoke(main, ["apply", str(path)])
    assert result.exit_code == 1
    assert "features.yaml:12: feature group 'user_extra': feature 'msg_count_v2'.validation: min (5)" in result.output
    assert registry_snapshot(db) == before


def test_yaml_syntax_errors_name_the_line(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("tenants:\n  - {id: acme, name: [unclosed\n")
    with pytest.raises(DefinitionError, match=r"bad.yaml:3: not valid YAML"):
        load_repo(tmp_path)


def test_objects_declared_twice_across_files_are_rejected(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("tenants:\n  - {id: acme, name: A}\n")
    (tmp_path / "b.yaml").write_text("tenants:\n  - {id: other, name: O}\n  - {id: acme, name: B}\n")
    with pytest.raises(DefinitionError, match=r"b.yaml:3: tenant 'acme': already declared at .*a.yaml:2"):
        load_repo(tmp_path)


def test_identifiers_are_restricted_to_a_safe_alphabet(tmp_path: Path) -> None:
    (tmp_path / "t.yaml").write_text(
        textwrap.dedent(
            """\
            tenants:
              - id: "x'; DROP TABLE feature_store.tenants; --"
                name: evil
            """
        )
    )
    with pytest.raises(DefinitionError, match=r"t.yaml:2: tenant \"x'; DROP.*\": id: must be 1-63 letters"):
        load_repo(tmp_path)
