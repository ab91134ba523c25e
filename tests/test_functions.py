"""Function features: a Python function over batches of its sandboxed SQL's rows, COPY'd into staging."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from feature_store import FeatureStore, JobStatus, JobType, PipelineConfig
from feature_store.errors import DefinitionError
from feature_store.pipeline import functions
from support import HOURS, Sql

MODULE = r'''
"""Text features of the test repo."""

from collections import Counter
from datetime import timedelta


def vowels(batch):
    for message_id, content, created_at in batch:
        if "explode" in content:
            raise ValueError(f"cannot parse {content[:20]!r}")
        yield message_id, sum(c in "aeiou" for c in content.lower()), created_at


def messages_per_user(batch):
    # Stamped with the window end (2-tuples): a per-window aggregate, computed in Python.
    yield from Counter(row["user_id"] for row in batch.dicts()).items()


def batch_sizes(batch):
    for message_id, _content, created_at in batch:
        yield message_id, len(batch), created_at


def odd_text(batch):
    for message_id, content, created_at in batch:
        yield "id\t" + message_id, "tab\tnewline\nbackslash\\ quote\" é", created_at


def back_in_time(batch):
    for message_id, _content, created_at in batch:
        yield message_id, 1, created_at - timedelta(hours=2)


def signed_length(batch):
    for message_id, content, created_at in batch:
        yield message_id, -1 if content.endswith("?") else len(content), created_at
'''

SOURCE = """
          SELECT m.id, m.content, m.created_at FROM app.messages m
          WHERE m.tenant_id = %(tenant_id)s AND m.created_at > %(start_time)s AND m.created_at <= %(end_time)s
"""


def write_repo(tmp_path: Path, *, features: str, module: str = MODULE) -> Path:
    (tmp_path / "text_features.py").write_text(module)
    (tmp_path / "features.yaml").write_text(
        "source_schemas: [app]\n"
        "tenants:\n  - {id: acme, name: Acme}\n  - {id: globex, name: Globex}\n"
        "feature_groups:\n"
        "  - id: message_text\n    entity_type: message\n    max_failure_rate: 0.9\n    features:\n"
        + textwrap.indent(textwrap.dedent(features), "      ")
    )
    return tmp_path


def feature(name: str, function: str, *, sql: str = SOURCE, extra: str = "") -> str:
    return f"- name: {name}\n  value_type: int64\n  function: {function}\n{extra}  transformation_sql: |{sql}"


def run(store: FeatureStore, tenant: str = "acme", group: str = "message_text", **kw: object) -> object:
    window = HOURS[0].model_copy(update={"end": HOURS[-1].end})
    return store.materialize(
        PipelineConfig(
            tenant_id=tenant,
            feature_group_id=group,
            start_time=window.start,
            end_time=window.end,
            mode=JobType.FULL,
            **kw,  # type: ignore[arg-type]
        )
    )


def offline(db: Sql, feature_name: str, tenant: str = "acme") -> dict[tuple[str, object], object]:
    return {
        (e, t): v
        for e, t, v in db.rows(
            "SELECT entity_id, event_time, value FROM feature_store.feature_values"
            " WHERE tenant_id = %s AND feature_name = %s",
            (tenant, feature_name),
        )
    }


def test_function_values_equal_an_independent_sql_computation(store: FeatureStore, db: Sql, tmp_path: Path) -> None:
    user_sql = SOURCE.replace("SELECT m.id, m.content, m.created_at", "SELECT m.user_id, m.role")
    store.apply(
        write_repo(
            tmp_path,
            features=feature("vowels", "text_features:vowels")
            + "\n"
            + feature("messages_per_user", "text_features:messages_per_user", sql=user_sql),
        )
    )
    result = run(store)
    assert result.status is JobStatus.COMPLETED, result.errors  # type: ignore[attr-defined]
    # Only acme's rows reached the function (the SQL ran in the sandbox, scoped to the tenant).
    expected_vowels = {
        (mid, ts): n
        for mid, ts, n in db.rows(
            "SELECT id, created_at, length(regexp_replace(lower(content), '[^aeiou]', '', 'g')) FROM app.messages"
            " WHERE tenant_id = 'acme' AND created_at > %s AND created_at <= %s",
            (HOURS[0].start, HOURS[-1].end),
        )
    }
    assert expected_vowels
    assert offline(db, "vowels") == expected_vowels
    # 2-tuples are stamped with each schedule window's end, like a SQL feature without event_time.
    expected_counts = {
        (user, hour_end): n
        for user, hour_end, n in db.rows(
            "SELECT user_id, date_trunc('hour', created_at - interval '1 microsecond') + interval '1 hour', count(*)"
            " FROM app.messages WHERE tenant_id = 'acme' AND created_at > %s AND created_at <= %s"
            " GROUP BY 1, 2",
            (HOURS[0].start, HOURS[-1].end),
        )
    }
    assert offline(db, "messages_per_user") == expected_counts
    online = store.get_online_features("acme", "message", [next(iter(expected_vowels))[0]], ["message_text:vowels"])
    assert online[0].features["message_text:vowels"].value == next(iter(expected_vowels.values()))


def test_text_with_copy_special_characters_arrives_intact(store: FeatureStore, db: Sql, tmp_path: Path) -> None:
    text = feature("odd_text", "text_features:odd_text").replace("value_type: int64", "value_type: string")
    store.apply(write_repo(tmp_path, features=text))
    assert run(store).status is JobStatus.COMPLETED  # type: ignore[attr-defined]
    values = offline(db, "odd_text")
    assert values
    assert {v for v in values.values()} == {'tab\tnewline\nbackslash\\ quote" é'}
    assert all(entity.startswith("id\t") for entity, _ in values)


def test_rows_arrive_in_bounded_batches(
    store: FeatureStore, db: Sql, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(functions, "BATCH_SIZE", 7)
    store.apply(write_repo(tmp_path, features=feature("batch_sizes", "text_features:batch_sizes")))
    assert run(store).status is JobStatus.COMPLETED  # type: ignore[attr-defined]
    sizes = [int(v) for v in offline(db, "batch_sizes").values()]  # type: ignore[call-overload]
    assert max(sizes) == 7
    assert len(sizes) > 3 * 7


def test_function_output_is_validated_and_quarantined(store: FeatureStore, db: Sql, tmp_path: Path) -> None:
    store.apply(
        write_repo(
            tmp_path,
            features=feature("signed_length", "text_features:signed_length", extra="  validation: {min: 0}\n"),
        )
    )
    result = run(store)
    assert result.status is JobStatus.COMPLETED, result.errors  # type: ignore[attr-defined]
    questions = db.value(
        "SELECT count(*) FROM app.messages WHERE tenant_id = 'acme' AND content LIKE '%%?'"
        " AND created_at > %s AND created_at <= %s",
        (HOURS[0].start, HOURS[-1].end),
    )
    assert questions > 0
    assert (
        db.value(
            "SELECT count(*) FROM feature_store.quarantined_rows WHERE feature_name = 'signed_length' AND rule = 'min'"
        )
        == questions
    )
    assert all(int(v) >= 0 for v in offline(db, "signed_length").values())  # type: ignore[call-overload]


def test_function_rows_outside_the_window_are_quarantined(store: FeatureStore, db: Sql, tmp_path: Path) -> None:
    store.apply(write_repo(tmp_path, features=feature("back_in_time", "text_features:back_in_time")))
    result = run(store)
    assert result.status is JobStatus.FAILED  # type: ignore[attr-defined]
    assert "(event_time: " in "\n".join(result.errors)  # type: ignore[attr-defined]
    assert db.value(
        "SELECT count(*) FROM feature_store.quarantined_rows"
        " WHERE feature_name = 'back_in_time' AND rule = 'event_time'"
    ) == db.value(
        "SELECT count(*) FROM app.messages WHERE tenant_id = 'acme' AND created_at > %s AND created_at <= %s",
        (HOURS[0].start, HOURS[-1].end),
    )


def test_an_exception_names_feature_tenant_and_input_row(store: FeatureStore, db: Sql, tmp_path: Path) -> None:
    store.apply(write_repo(tmp_path, features=feature("vowels", "text_features:vowels")))
    victim = db.value(
        "SELECT id FROM app.messages WHERE tenant_id = 'globex' AND created_at > %s AND created_at <= %s"
        " ORDER BY created_at LIMIT 1 OFFSET 3",
        (HOURS[1].start, HOURS[1].end),
    )
    db.execute("UPDATE app.messages SET content = 'please explode now' WHERE id = %s", (victim,))
    result = run(store, tenant="globex")
    assert result.status is JobStatus.FAILED  # type: ignore[attr-defined]
    message = "\n".join(result.errors)  # type: ignore[attr-defined]
    assert "function text_features:vowels of feature 'vowels' for tenant 'globex'" in message
    assert "raised ValueError: cannot parse 'please explode now'" in message
    assert f"'id': '{victim}'" in message
    assert db.value("SELECT count(*) FROM feature_store.feature_values WHERE feature_name = 'vowels'") == 0


def test_apply_checks_that_the_function_loads(store: FeatureStore, tmp_path: Path) -> None:
    with pytest.raises(DefinitionError, match=r"features.yaml:\d+: .*function nowhere:f: cannot read .*nowhere.py"):
        store.apply(write_repo(tmp_path, features=feature("x", "nowhere:f")))
    with pytest.raises(DefinitionError, match=r"function text_features:missing of feature 'x': module text_features"):
        store.apply(write_repo(tmp_path, features=feature("x", "text_features:missing")))
    with pytest.raises(DefinitionError, match=r"its module failed to load: SyntaxError"):
        store.apply(write_repo(tmp_path, features=feature("x", "text_features:vowels"), module="def (:\n"))
