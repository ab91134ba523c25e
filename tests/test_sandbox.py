"""The transform sandbox holds against hostile feature SQL: no privilege escalation, no tenant switch,
no reads of tables without tenant isolation, no escape from the statement timeout.

Every attack runs through `materialize` (the SQL is put into the registry directly, as if `apply`
had let it through), and the test checks what reached the offline and online stores.
"""

from __future__ import annotations

import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from feature_store import DefinitionError, FeatureStore, JobStatus, PipelineConfig, Settings
from feature_store.pipeline.models import FeatureStatus
from support import HOURS, Sql

WINDOW = HOURS[-1]
# Enough of a window that the attacks have every tenant's messages to steal.
ALL_TIME = PipelineConfig(
    tenant_id="acme",
    feature_group_id="user_engagement",
    start_time=HOURS[0].start,
    end_time=HOURS[-1].end,
)


def set_sql(db: Sql, sql: str, feature: str = "message_count", group: str = "user_engagement") -> None:
    db.execute(
        "UPDATE feature_store.feature_definitions SET transformation_sql = %s"
        " WHERE feature_group_id = %s AND name = %s",
        (textwrap.dedent(sql), group, feature),
    )


def run(store: FeatureStore, feature: str = "message_count") -> tuple[FeatureStatus, str]:
    result = store.materialize(ALL_TIME.model_copy(update={"features": (feature,)}))
    outcome = next(f for f in result.features if f.feature == feature)
    return outcome.status, outcome.error_message or ""


def foreign_rows(db: Sql) -> int:
    """Rows of the offline store that are not acme's own messages' users."""
    return int(
        db.value(
            "SELECT count(*) FROM feature_store.feature_values"
            " WHERE tenant_id <> 'acme' OR entity_id NOT LIKE 'acme-%%'"
        )
    )


def foreign_online_keys(store: FeatureStore) -> list[bytes]:
    online = store.online
    return [k for k in online.scan_keys(tenant_id="acme") if not online.entity_of(k).startswith("acme-")]  # type: ignore[attr-defined]


ESCALATIONS = {
    "set_config role": """
        SELECT m.user_id AS entity_id, count(*) AS value
        FROM app.messages m, (SELECT set_config('role', 'postgres', true)) s
        WHERE m.tenant_id = %(tenant_id)s OR s IS NOT NULL GROUP BY m.user_id
    """,
    "set_config session_authorization": """
        SELECT m.user_id AS entity_id, count(*) AS value
        FROM app.messages m, (SELECT set_config('session_authorization', 'postgres', false)) s
        WHERE m.tenant_id = %(tenant_id)s GROUP BY m.user_id
    """,
    "role then query_to_xml of pg_shadow": """
        SELECT x::text AS entity_id, 1 AS value
        FROM (SELECT set_config('role', 'postgres', true)) s,
             query_to_xml('SELECT usename, passwd FROM pg_shadow', true, false, '') x
        WHERE %(tenant_id)s::text IS NOT NULL
    """,
    "query_to_xml of the offline store": """
        SELECT x::text AS entity_id, 1 AS value
        FROM query_to_xml('SELECT * FROM feature_store.feature_values', true, false, '') x
        WHERE %(tenant_id)s::text IS NOT NULL
    """,
    "query_to_xml writing the scope table": """
        SELECT x::text AS entity_id, 1 AS value
        FROM query_to_xml('UPDATE feature_store.sandbox_sessions SET tenant_id = ''globex'' RETURNING 1',
                          true, false, '') x
        WHERE %(tenant_id)s::text IS NOT NULL
    """,
}


@pytest.mark.parametrize("sql", ESCALATIONS.values(), ids=ESCALATIONS.keys())
def test_feature_sql_cannot_gain_privileges(store: FeatureStore, db: Sql, sql: str) -> None:
    db.execute(
        "INSERT INTO feature_store.offline_rows (tenant_id, feature_group_id, entity_id, event_time, features)"
        " VALUES ('globex', 'g', 'secret', now(), '{\"f\": 1}')"
    )
    set_sql(db, sql)
    status, error = run(store)
    assert status is FeatureStatus.FAILED
    assert "permission denied" in error or "is not allowed in a non-volatile function" in error, error
    assert db.value("SELECT count(*) FROM feature_store.feature_values WHERE tenant_id = 'acme'") == 0
    assert foreign_online_keys(store) == []


def test_transforms_run_as_a_session_user_without_privileges(store: FeatureStore, db: Sql) -> None:
    set_sql(
        db,
        """
        SELECT m.user_id AS entity_id,
               session_user || '/' || current_user || '/' || current_setting('is_superuser') AS value
        FROM app.messages m WHERE m.tenant_id = %(tenant_id)s GROUP BY m.user_id
        """,
        feature="intent",
        group="message_features",
    )
    result = store.materialize(
        ALL_TIME.model_copy(update={"feature_group_id": "message_features", "features": ("intent",)})
    )
    values = {
        r[0] for r in db.rows("SELECT value #>> '{}' FROM feature_store.quarantined_rows WHERE rule <> 'expectation'")
    }
    # Not an allowed intent, so quarantined with its value: which is who the SQL ran as.
    assert values == {"featurepipe_transform/featurepipe_transform/off"}, result
    assert (
        db.value("SELECT rolsuper OR rolbypassrls OR rolinherit FROM pg_roles WHERE rolname = 'featurepipe_transform'")
        is False
    )
    assert (
        db.value(
            "SELECT count(*) FROM pg_auth_members"
            " WHERE member = (SELECT oid FROM pg_roles WHERE rolname = 'featurepipe_transform')"
        )
        == 0
    )


def test_feature_sql_cannot_leave_data_behind_for_another_tenant(store: FeatureStore, db: Sql) -> None:
    # Run for acme, the SQL stores acme's messages in a large object (any role may create one, and it
    # outlives the session); run for globex, other SQL would read them back as globex's values.
    set_sql(
        db,
        """
        SELECT m.user_id AS entity_id, lo_from_bytea(0, convert_to(m.content, 'UTF8'))::int AS value
        FROM app.messages m WHERE m.tenant_id = %(tenant_id)s
        """,
    )
    run(store)
    # The sandbox's transaction is rolled back, whatever the SQL did in it.
    assert db.value("SELECT count(*) FROM pg_largeobject_metadata") == 0
    # Nor does the role hold any right on staging: its rows reach staging over the store's connection.
    assert (
        db.value(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'feature_store_staging'"
            " AND has_table_privilege('featurepipe_transform', c.oid, 'INSERT')"
        )
        == 0
    )
    assert db.value("SELECT has_schema_privilege('featurepipe_transform', 'feature_store_staging', 'USAGE')") is False


TENANT_SWITCHES = {
    "materialized CTE": """
        WITH s AS MATERIALIZED (SELECT set_config('featurepipe.tenant_id', 'globex', false) AS t)
        SELECT m.user_id AS entity_id, count(*) AS value FROM s, app.messages m
        WHERE m.tenant_id = %(tenant_id)s OR s.t IS NOT NULL GROUP BY m.user_id
    """,
    "scalar subquery": """
        SELECT m.user_id AS entity_id, count(*) AS value FROM app.messages m
        WHERE m.tenant_id = %(tenant_id)s
           OR (SELECT set_config('featurepipe.tenant_id', 'globex', false)) IS NOT NULL
        GROUP BY m.user_id
    """,
    "every setting in the select list": """
        SELECT m.user_id AS entity_id, count(*) AS value FROM app.messages m
        LEFT JOIN LATERAL (SELECT set_config(name, 'globex', false) FROM pg_settings
                           WHERE name LIKE 'featurepipe.%%') s ON true
        WHERE %(tenant_id)s::text IS NOT NULL GROUP BY m.user_id
    """,
    "query_to_xml after set_config": """
        SELECT m.user_id AS entity_id, count(*) AS value FROM app.messages m
        WHERE m.tenant_id = %(tenant_id)s
           OR length(query_to_xml('SELECT set_config(''featurepipe.tenant_id'', ''globex'', false)',
                                  true, false, '')::text) > 0
        GROUP BY m.user_id
    """,
}


@pytest.mark.parametrize("sql", TENANT_SWITCHES.values(), ids=TENANT_SWITCHES.keys())
def test_feature_sql_cannot_switch_its_tenant(store: FeatureStore, db: Sql, sql: str) -> None:
    set_sql(db, sql)
    status, error = run(store)
    written = db.rows("SELECT entity_id, value::int FROM feature_store.feature_values ORDER BY 1")
    assert foreign_rows(db) == 0 and foreign_online_keys(store) == []
    if status is FeatureStatus.WRITTEN:
        # Whatever the SQL did, it saw acme's messages and nothing else.
        expected = db.rows(
            "SELECT user_id, count(*)::int FROM app.messages WHERE tenant_id = 'acme' AND token_count >= 0"
            " AND created_at > %s AND created_at <= %s GROUP BY 1 ORDER BY 1",
            (ALL_TIME.start_time, ALL_TIME.end_time),
        )
        assert written == expected
    else:
        assert written == [] and error


def _repo(tmp_path: Path, *, sql: str, sources: str = "") -> Path:
    (tmp_path / "features.yaml").write_text(
        "source_schemas: [app]\n" + sources + "tenants:\n  - {id: acme, name: Acme}\n  - {id: globex, name: Globex}\n"
        "feature_groups:\n  - id: leaky\n    entity_type: user\n    features:\n"
        "      - name: notes\n        value_type: int64\n        transformation_sql: |\n"
        + textwrap.indent(textwrap.dedent(sql).strip(), " " * 10)
        + "\n"
    )
    return tmp_path


NOTES_SQL = """
    SELECT n.user_id AS entity_id, count(*) AS value FROM app.notes n
    WHERE %(tenant_id)s::text IS NOT NULL GROUP BY n.user_id
"""


@pytest.fixture
def notes(db: Sql) -> None:
    """A source table of two tenants' rows, with no tenant isolation at all."""
    db.execute("CREATE TABLE app.notes (id serial PRIMARY KEY, tenant_id text, user_id text, created_at timestamptz)")
    db.execute(
        "INSERT INTO app.notes (tenant_id, user_id, created_at) VALUES"
        " ('acme', 'acme-u001', %(t)s), ('globex', 'globex-u001', %(t)s), ('globex', 'globex-u002', %(t)s)",
        {"t": WINDOW.end},
    )


def test_apply_refuses_sql_reading_a_table_without_tenant_isolation(
    store: FeatureStore, tmp_path: Path, db: Sql, notes: None
) -> None:
    with pytest.raises(DefinitionError, match=r"reads app\.notes, which transforms may not read: row-level security"):
        store.apply(_repo(tmp_path, sql=NOTES_SQL))
    assert db.value("SELECT count(*) FROM feature_store.feature_groups WHERE id = 'leaky'") == 0
    assert db.value("SELECT has_table_privilege('featurepipe_transform', 'app.notes', 'SELECT')") is False


@pytest.mark.parametrize(
    ("setup", "problem"),
    [
        (
            "ALTER TABLE app.notes ENABLE ROW LEVEL SECURITY;"
            " CREATE POLICY app_tenant ON app.notes USING (tenant_id = current_setting('featurepipe.tenant_id', true))",
            "does not scope rows to the transform's tenant",
        ),
        (
            "ALTER TABLE app.notes ENABLE ROW LEVEL SECURITY;"
            " CREATE POLICY ok ON app.notes FOR SELECT TO featurepipe_transform"
            "   USING (tenant_id = (SELECT featurepipe_sandbox.current_tenant()));"
            " CREATE POLICY wide ON app.notes FOR SELECT USING (true)",
            "policies are OR-ed",
        ),
        ("ALTER TABLE app.notes ENABLE ROW LEVEL SECURITY", "no policy lets featurepipe_transform read it"),
    ],
    ids=["forgeable setting", "a second wide policy", "no policy"],
)
def test_apply_refuses_policies_that_do_not_pin_the_tenant(
    store: FeatureStore, tmp_path: Path, db: Sql, notes: None, setup: str, problem: str
) -> None:
    for statement in setup.split(";"):
        db.execute(statement)
    with pytest.raises(DefinitionError, match=problem):
        store.apply(_repo(tmp_path, sql=NOTES_SQL))


def test_a_view_that_bypasses_row_level_security_is_refused(store: FeatureStore, tmp_path: Path, db: Sql) -> None:
    db.execute("CREATE VIEW app.all_messages AS SELECT * FROM app.messages")
    sql = (
        "SELECT user_id AS entity_id, count(*) AS value FROM app.all_messages"
        " WHERE %(tenant_id)s::text IS NOT NULL GROUP BY 1"
    )
    with pytest.raises(DefinitionError, match="view without security_invoker"):
        store.apply(_repo(tmp_path, sql=sql))
    db.execute("ALTER VIEW app.all_messages SET (security_invoker = true)")
    store.apply(_repo(tmp_path, sql=sql))
    store.materialize(ALL_TIME.model_copy(update={"feature_group_id": "leaky"}))
    assert db.value("SELECT count(*) FROM feature_store.feature_values") > 0
    assert foreign_rows(db) == 0


def test_a_table_declared_shared_is_read_whole_on_purpose(
    store: FeatureStore, tmp_path: Path, db: Sql, notes: None
) -> None:
    store.apply(_repo(tmp_path, sql=NOTES_SQL, sources="sources:\n  - {table: app.notes, shared: true}\n"))
    result = store.materialize(ALL_TIME.model_copy(update={"feature_group_id": "leaky"}))
    assert result.status is JobStatus.COMPLETED
    assert {r[0] for r in db.rows("SELECT entity_id FROM feature_store.feature_values")} == {
        "acme-u001",
        "globex-u001",
        "globex-u002",
    }


def test_a_table_that_loses_its_isolation_after_apply_stops_the_transform(store: FeatureStore, db: Sql) -> None:
    db.execute("ALTER TABLE app.messages DISABLE ROW LEVEL SECURITY")
    set_sql(
        db,
        "SELECT m.user_id AS entity_id, count(*) AS value FROM app.messages m"
        " WHERE %(tenant_id)s::text IS NOT NULL GROUP BY m.user_id",
    )
    status, error = run(store)
    assert status is FeatureStatus.FAILED
    assert "app.messages is readable by transforms but no longer tenant-isolated" in error
    assert db.value("SELECT count(*) FROM feature_store.feature_values") == 0


def test_transforms_may_not_scan_the_catalog(store: FeatureStore, db: Sql) -> None:
    set_sql(
        db,
        "SELECT c.relname::text AS entity_id, 1 AS value FROM pg_catalog.pg_class c"
        " WHERE c.relnamespace = 'feature_store'::regnamespace AND %(tenant_id)s::text IS NOT NULL",
    )
    status, error = run(store)
    assert status is FeatureStatus.FAILED
    assert "reads pg_catalog.pg_class, outside the declared source schemas (app)" in error
    assert db.value("SELECT count(*) FROM feature_store.feature_values") == 0


def test_sql_cannot_lift_its_own_statement_timeout(settings: Settings, db: Sql) -> None:
    set_sql(
        db,
        """
        SELECT m.user_id AS entity_id, count(*) AS value
        FROM (SELECT set_config('statement_timeout', '0', false)) s, app.messages m, pg_sleep(0.5)
        WHERE m.tenant_id = %(tenant_id)s GROUP BY m.user_id
        """,
    )
    with FeatureStore(settings=replace(settings, statement_timeout_s=0.2)) as store:
        status, error = run(store)
    assert status is FeatureStatus.FAILED
    assert "exceeded the statement timeout of 0.2s" in error


def test_apply_refuses_a_security_definer_function_within_reach(store: FeatureStore, tmp_path: Path, db: Sql) -> None:
    db.execute(
        "CREATE FUNCTION app.all_notes() RETURNS SETOF app.messages LANGUAGE sql SECURITY DEFINER"
        " AS 'SELECT * FROM app.messages'"
    )
    sql = "SELECT user_id AS entity_id, 1 AS value FROM app.all_notes() WHERE %(tenant_id)s::text IS NOT NULL"
    with pytest.raises(DefinitionError, match=r"function app\.all_notes\(\) \(owner postgres\) is SECURITY DEFINER"):
        store.apply(_repo(tmp_path, sql=sql))
