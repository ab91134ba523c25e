"""The `feature-store` command line: every verb with human and JSON output, clear errors, exit codes."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import pydantic
import pytest
from click.testing import CliRunner
from psycopg import sql

from feature_store.cli.commands import _invalid_config, main
from feature_store.pipeline.models import PipelineConfig
from featurepipe_demo import demo_repo_path
from support import HOURS, Sql, admin_connection, url_for


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def materialize_args(tenant: str = "acme", group: str = "user_engagement") -> list[str]:
    return [
        "materialize",
        "--tenant",
        tenant,
        "--group",
        group,
        "--start",
        HOURS[-1].start.isoformat(),
        "--end",
        HOURS[-1].end.isoformat(),
    ]


def test_init_is_idempotent(env: object) -> None:
    assert run("init") == (0, "schema is up to date\n")
    code, out = run("init", "--json")
    assert code == 0 and json.loads(out) == {"applied": []}


def test_materialize_prints_a_result_table_and_json(env: object) -> None:
    code, out = run(*materialize_args())
    assert code == 0, out
    assert "completed" in out and "message_count" in out
    code, out = run(*materialize_args(), "--json")
    payload = json.loads(out)
    assert code == 0 and payload["status"] == "completed" and payload["rows_processed"] > 0


def test_materialize_exits_non_zero_when_the_job_failed(env: object, db: Sql) -> None:
    db.execute(
        "UPDATE feature_store.feature_definitions SET transformation_sql ="
        " 'SELECT m.user_id AS entity_id, count(*) / 0 AS value FROM app.messages m"
        "  WHERE m.tenant_id = %(tenant_id)s GROUP BY m.user_id'"
        " WHERE feature_group_id = 'user_engagement' AND name = 'message_count'"
    )
    code, out = run(*materialize_args())
    assert code == 1
    assert "division by zero" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--mode", "sometimes"], "'sometimes' is not one of 'full', 'incremental'"),
        (["--tenant", "nobody"], "tenant 'nobody' does not exist"),
        (["--group", "nothing"], "feature group 'nothing' does not exist"),
    ],
)
def test_materialize_rejects_bad_input_with_the_choices(env: object, args: list[str], message: str) -> None:
    base = materialize_args()
    for flag, value in zip(args[::2], args[1::2], strict=True):
        if flag in base:
            base[base.index(flag) + 1] = value
        else:
            base += [flag, value]
    code, out = run(*base)
    assert code != 0
    assert message in out


def test_a_window_without_time_zone_is_a_usage_error(env: object) -> None:
    code, out = run(
        "materialize",
        "--tenant",
        "acme",
        "--group",
        "user_engagement",
        "--start",
        "2026-01-01T00:00:00",
        "--end",
        "2026-01-01T01:00:00",
    )
    assert code == 2 and "has no time zone" in out


def test_jobs_online_historical_and_quarantine_verbs(env: object, tmp_path: object) -> None:
    assert run(*materialize_args())[0] == 0
    assert run(*materialize_args(group="message_features"))[0] == 0

    code, out = run("jobs", "--json")
    jobs = json.loads(out)
    assert code == 0 and [j["status"] for j in jobs] == ["completed", "completed"]
    assert "user_engagement" in run("jobs", "--tenant", "acme")[1]

    code, out = run(
        "online",
        "get",
        "--tenant",
        "acme",
        "--entity-type",
        "user",
        "--entity",
        "acme-u001",
        "--entity",
        "nobody",
        "--feature",
        "user_engagement:message_count",
        "--json",
    )
    rows = json.loads(out)
    assert code == 0 and rows[1]["features"]["user_engagement:message_count"]["status"] == "missing"

    code, out = run(
        "online",
        "get",
        "--tenant",
        "acme",
        "--entity-type",
        "message",
        "--entity",
        "x",
        "--feature",
        "user_engagement:message_count",
    )
    assert code == 1 and "belongs to entity type 'user', not 'message'" in out

    csv_path = tmp_path / "entities.csv"  # type: ignore[operator]
    csv_path.write_text(f"entity_id,timestamp\nacme-u001,{HOURS[-1].end.isoformat()}\n")
    code, out = run(
        "historical",
        "--tenant",
        "acme",
        "--feature",
        "user_engagement:message_count",
        "--entities",
        str(csv_path),
        "--json",
    )
    assert code == 0 and json.loads(out)[0]["entity_id"] == "acme-u001"

    code, out = run("quarantine", "--json")
    assert code == 0 and isinstance(json.loads(out), list)


def test_unreachable_services_are_named_with_how_to_start_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEATURE_STORE_DATABASE_URL", "postgresql://postgres:secret@127.0.0.1:1/featurepipe")
    code, out = run("jobs")
    assert code == 1
    assert "cannot connect to PostgreSQL at postgresql://postgres:***@127.0.0.1:1/featurepipe" in out
    assert "docker compose up -d postgres" in out
    assert "secret" not in out
    assert "Traceback" not in out


def test_unreachable_redis_is_named_too(env: object, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEATURE_STORE_REDIS_URL", "redis://127.0.0.1:1/0")
    code, out = run(
        "online",
        "get",
        "--tenant",
        "acme",
        "--entity-type",
        "user",
        "--entity",
        "a",
        "--feature",
        "user_engagement:message_count",
    )
    assert code == 1 and "cannot connect to Redis at redis://127.0.0.1:1/0" in out


def test_an_uninitialised_database_says_to_run_init(monkeypatch: pytest.MonkeyPatch, template_db: str) -> None:
    with admin_connection() as admin:
        admin.execute("CREATE DATABASE fp_test_empty_cli")
    try:
        monkeypatch.setenv("FEATURE_STORE_DATABASE_URL", url_for("fp_test_empty_cli"))
        code, out = run("jobs")
        assert code == 1 and "run `feature-store init`" in out
    finally:
        with admin_connection() as admin:
            admin.execute("DROP DATABASE fp_test_empty_cli WITH (FORCE)")


def run_failing(*args: str) -> str:
    """Output of a command that must fail cleanly: exit 1 via `error: ...`, not an escaping exception."""
    result = CliRunner().invoke(main, list(args))
    assert isinstance(result.exception, SystemExit) and result.exit_code == 1, (result.exception, result.output)
    return result.output


def every_command(tmp_path: Path) -> list[list[str]]:
    """One valid invocation of each verb that opens the store."""
    entities = tmp_path / "entities.csv"
    entities.write_text(f"entity_id,timestamp\nacme-u001,{HOURS[-1].end.isoformat()}\n")
    feature = ["--feature", "user_engagement:message_count"]
    return [
        ["init"],
        ["apply", str(demo_repo_path())],
        materialize_args(),
        ["jobs"],
        ["quarantine"],
        ["online", "get", "--tenant", "acme", "--entity-type", "user", "--entity", "acme-u001", *feature],
        ["historical", "--tenant", "acme", *feature, "--entities", str(entities)],
        ["demo", "--summary-only"],
    ]


@pytest.mark.parametrize(
    ("setting", "value", "problem"),
    [
        ("FEATURE_STORE_DATABASE_URL", "postgresql://postgres@127.0.0.1:notaport/x", "port 'notaport' is not a number"),
        ("FEATURE_STORE_DATABASE_URL", "not a url at all", 'missing "=" after "not"'),
        # Readable, but libpq refuses it before connecting.
        ("FEATURE_STORE_DATABASE_URL", "host=127.0.0.1 dbname=x sslmode=bogus", 'invalid sslmode value: "bogus"'),
        ("FEATURE_STORE_REDIS_URL", "http://x", "must specify one of the following schemes"),
        ("FEATURE_STORE_REDIS_URL", "redis://:6379:99", "'6379:99'"),
        ("FEATURE_STORE_REDIS_PREFIX", "fs:staging", "without ':' or glob characters"),
        ("FEATURE_STORE_STATEMENT_TIMEOUT", "soon", "not a number"),
    ],
)
def test_every_command_names_a_malformed_setting_in_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, setting: str, value: str, problem: str
) -> None:
    monkeypatch.setenv(setting, value)
    for args in every_command(tmp_path):
        out = run_failing(*args)
        assert out.startswith(f"error: {setting} {value!r} is invalid: "), (args, out)
        assert problem in out and "To fix:" in out, (args, out)
        assert out.count("\n") == 1, (args, out)


@pytest.mark.parametrize(
    ("setting", "value", "command"),
    [
        ("FEATURE_STORE_DATABASE_URL", "host=127.0.0.1 port=1 user=postgres password=s3cret dbname=x", "jobs"),
        ("FEATURE_STORE_DATABASE_URL", "host=127.0.0.1 port=1 user=postgres password='s3cret s3cret' dbname=x", "init"),
        ("FEATURE_STORE_DATABASE_URL", "postgresql://postgres:s3cret@127.0.0.1:1/x?password=s3cret", "jobs"),
        ("FEATURE_STORE_DATABASE_URL", "postgresql://postgres:s3cret@127.0.0.1:notaport/x", "jobs"),
        ("FEATURE_STORE_DATABASE_URL", "host=127.0.0.1 user=postgres password=s3cret sslmode=bogus", "jobs"),
        # Unquoted, the password's second word reads as a key: libpq's message quotes it.
        ("FEATURE_STORE_DATABASE_URL", "host=127.0.0.1 user=postgres password=s3cret s3cret-tail dbname=x", "jobs"),
        ("FEATURE_STORE_DATABASE_URL", "host=127.0.0.1 user=postgres password=s3cret dbname=fp_test_nodb", "jobs"),
        ("FEATURE_STORE_REDIS_URL", "redis://:s3cret@127.0.0.1:1/0", "online"),
        ("FEATURE_STORE_REDIS_URL", "redis://default:s3cret@127.0.0.1:6379:99", "online"),
    ],
)
def test_no_password_reaches_the_output_of_a_failing_command(
    env: object, monkeypatch: pytest.MonkeyPatch, setting: str, value: str, command: str
) -> None:
    monkeypatch.setenv(setting, value)
    online = ["online", "get", "--tenant", "acme", "--entity-type", "user", "--entity", "a"]
    args = {
        "jobs": ["jobs"],
        "init": ["init"],
        "online": [*online, "--feature", "user_engagement:message_count"],
    }[command]
    out = run_failing(*args)
    assert "s3cret" not in out
    assert "***" in out and "Traceback" not in out


def test_a_missing_database_says_to_run_init_which_creates_it(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"fp_test_missing_{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("FEATURE_STORE_DATABASE_URL", url_for(name))
    try:
        out = run_failing("jobs")
        assert f"database {name!r} does not exist" in out and "run `feature-store init`, which creates it" in out
        assert "docker compose" not in out  # the server is up: no hint to start it
        code, out = run("init")
        assert code == 0 and out.startswith("applied 001_initial.sql"), out
        assert run("jobs", "--json") == (0, "[]\n")
    finally:
        with admin_connection() as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.mark.parametrize(("start", "end"), [(HOURS[-1].end, HOURS[-1].end), (HOURS[-1].end, HOURS[-1].start)])
def test_materialize_reports_a_window_that_does_not_move_forward_in_one_line(
    env: object, start: datetime, end: datetime
) -> None:
    args = materialize_args()
    args[args.index("--start") + 1], args[args.index("--end") + 1] = start.isoformat(), end.isoformat()
    out = run_failing(*args)
    assert out == f"error: window start {start.isoformat()} is not before end {end.isoformat()}\n"


def test_other_invalid_job_values_are_named_by_their_option() -> None:
    with pytest.raises(pydantic.ValidationError) as raised:
        window = {"start_time": HOURS[0].start, "end_time": HOURS[0].end}
        PipelineConfig.model_validate({"tenant_id": 5, "feature_group_id": "g", "features": ["ok", 7], **window})
    assert (
        str(_invalid_config(raised.value))
        == "--tenant: Input should be a valid string; --feature: Input should be a valid string"
    )


@pytest.mark.parametrize(
    ("csv_text", "message"),
    [
        ("entity_id,timestamp\nacme-u001\n", "--entities line 2: no timestamp"),
        ("entity_id,timestamp\nacme-u001,\n", "--entities line 2: timestamp is empty"),
        ("entity_id,timestamp\nacme-u001,2026-01-01T00:00:00Z\n,2026-01-01T00:00:00Z\n", "line 3: entity_id is empty"),
        ("entity_id,timestamp\nacme-u001,yesterday\n", "line 2: timestamp 'yesterday' is not an ISO 8601 timestamp"),
        ("entity_id,timestamp\n\nacme-u001,2026-01-01T00:00:00\n", "line 3: timestamp '2026-01-01T00:00:00' has no"),
        ("entity_id,timestamp\nacme-u001,2026-01-01T00:00:00Z,x\n", "line 2: more fields than the 2 columns"),
        ("id,ts\nacme-u001,2026-01-01T00:00:00Z\n", "--entities: the CSV needs a header line"),
        ("", "--entities: the CSV needs a header line"),
    ],
)
def test_historical_names_the_bad_line_of_the_entities_file(tmp_path: Path, csv_text: str, message: str) -> None:
    path = tmp_path / "entities.csv"
    path.write_text(csv_text)
    out = run_failing(
        "historical", "--tenant", "acme", "--feature", "user_engagement:message_count", "--entities", str(path)
    )
    assert out.startswith("error: --entities") and message in out and out.count("\n") == 1, out


def test_reads_of_an_unknown_tenant_fail(env: object, tmp_path: Path) -> None:
    for args in every_command(tmp_path)[5:7]:  # online get, historical
        args[args.index("--tenant") + 1] = "nobody"
        out = run_failing(*args)
        assert out.startswith("error: tenant 'nobody' does not exist"), (args, out)


def test_error_messages_are_printed_as_they_are_not_as_markup(env: object) -> None:
    out = run_failing(*materialize_args(tenant="[red]nobody"))
    assert "tenant '[red]nobody' does not exist" in out


def test_online_reconcile_restores_what_redis_lost(env: Any, db: Sql) -> None:
    import redis

    assert run(*materialize_args())[0] == 0
    client = redis.Redis.from_url(env.redis_url)
    keys = list(client.scan_iter(match=f"{env.redis_prefix}:*"))
    assert keys
    client.unlink(*keys)
    code, out = run("online", "reconcile", "--tenant", "acme", "--json")
    assert code == 0, out
    restored = {(r["tenant_id"], r["feature_group_id"]): r for r in json.loads(out)}
    entities = db.value(
        "SELECT count(DISTINCT entity_id) FROM feature_store.feature_values WHERE feature_group_id = 'user_engagement'"
    )
    assert restored[("acme", "user_engagement")]["entities"] == entities > 0
    assert sorted(client.scan_iter(match=f"{env.redis_prefix}:*")) == sorted(keys)
    code, out = run("online", "reconcile", "--group", "no_such_group")
    assert code == 1 and "feature group 'no_such_group' does not exist" in out


def test_a_corrective_rerun_needs_a_reason_and_records_it(env: object, db: Sql) -> None:
    code, out = run(*materialize_args(), "--overwrite-online", "ratings were stamped in 2031", "--json")
    assert code == 0, out
    job_id = json.loads(out)["job_id"]
    assert db.rows(
        "SELECT online_overwrite, overwrite_reason FROM feature_store.materialization_jobs WHERE id = %s", (job_id,)
    ) == [(True, "ratings were stamped in 2031")]
    code, out = run(*materialize_args(), "--overwrite-online", "")
    assert code == 1 and "overwrite_online" in out


def test_apply_reports_per_tenant_and_materialize_names_a_group_the_tenant_switched_off(env: object) -> None:
    from featurepipe_demo import demo_tenant_repo_paths

    for path in demo_tenant_repo_paths():
        code, out = run("apply", str(path))
        assert code == 0, out
    assert "scopes applied: tenant globex; groups missing from the repo are deactivated only in these scopes" in out
    created = "created settings of shared feature group message_features for tenant globex: disabled"
    assert f"tenant globex:\n  {created}" in out
    code, out = run("apply", str(path), "--json")
    assert json.loads(out)["changes"] == {}
    code, out = run(*materialize_args("globex", "message_features"))
    assert code != 0
    assert "feature group 'message_features' is disabled for tenant 'globex'" in out
    code, out = run(*materialize_args("globex", "acme_satisfaction"))
    assert code != 0
    assert "feature group 'acme_satisfaction' does not exist for tenant 'globex'" in out


def test_demo_summary_shows_window_and_function_features(env: object) -> None:
    for group in ("user_engagement", "message_features"):
        args = materialize_args("acme", group)
        args[args.index("--start") + 1] = HOURS[0].start.isoformat()  # every hour of the data: all tiles
        code, out = run(*args, "--mode", "full")
        assert code == 0, out
    code, out = run("demo", "--summary-only", "--json")
    assert code == 0, out
    online = json.loads(out)["online"]
    users = [row["features"] for row in online["user"]]
    messages = [row["features"] for row in online["message"]]
    assert users and messages
    # The busiest users sent messages in the hour: their 24h counts are present, and at least their hourly count.
    for user in users:
        window = user["user_engagement:message_count_24h"]
        assert window["status"] == "present" and window["value"] >= user["user_engagement:message_count"]["value"]
        assert "user_engagement:avg_rating_7d" in user
    assert all(m["message_features:topic"]["status"] == "present" for m in messages)
    assert {m["message_features:topic"]["value"] for m in messages} <= {
        "billing",
        "account",
        "data",
        "integrations",
        "plans",
        "other",
    }
