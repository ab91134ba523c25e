"""The size limits of validation are settings: from the environment, through FeatureStore, into every run."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from feature_store import FeatureStore, JobStatus, PipelineConfig, Settings
from feature_store.errors import ConfigurationError
from support import HOURS, Sql

WINDOW = HOURS[-1]


def test_limits_default_to_256_characters_and_64_kib(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FEATURE_STORE_MAX_ENTITY_ID_LENGTH", raising=False)
    monkeypatch.delenv("FEATURE_STORE_MAX_VALUE_BYTES", raising=False)
    for settings in (Settings(), Settings.from_env()):
        assert (settings.max_entity_id_length, settings.max_value_bytes) == (256, 65536)


def test_limits_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEATURE_STORE_MAX_ENTITY_ID_LENGTH", "12")
    monkeypatch.setenv("FEATURE_STORE_MAX_VALUE_BYTES", "1000")
    settings = Settings.from_env()
    assert (settings.max_entity_id_length, settings.max_value_bytes) == (12, 1000)
    monkeypatch.setenv("FEATURE_STORE_MAX_VALUE_BYTES", "")
    assert Settings.from_env().max_value_bytes == 65536


@pytest.mark.parametrize(
    ("name", "raw", "message"),
    [
        ("FEATURE_STORE_MAX_ENTITY_ID_LENGTH", "lots", "'lots' is invalid: not a whole number"),
        ("FEATURE_STORE_MAX_ENTITY_ID_LENGTH", "0", "'0' is invalid: below 1"),
        ("FEATURE_STORE_MAX_VALUE_BYTES", "64k", "'64k' is invalid: not a whole number"),
        ("FEATURE_STORE_MAX_VALUE_BYTES", "-1", "'-1' is invalid: below 1"),
    ],
)
def test_a_bad_limit_in_the_environment_is_an_error(
    monkeypatch: pytest.MonkeyPatch, name: str, raw: str, message: str
) -> None:
    monkeypatch.setenv(name, raw)
    with pytest.raises(ConfigurationError, match=f"{name} {message}"):
        Settings.from_env()


def test_feature_store_keeps_the_limits_it_is_given(settings: Settings) -> None:
    limited = replace(settings, max_entity_id_length=7, max_value_bytes=99)
    with FeatureStore(settings=limited, database_url=settings.database_url) as fs:
        assert (fs.settings.max_entity_id_length, fs.settings.max_value_bytes) == (7, 99)
        assert fs.settings.database_url == settings.database_url


@pytest.mark.parametrize("parallelism", [1, 2])
def test_configured_limits_quarantine_ids_and_values_in_every_feature(
    settings: Settings, db: Sql, tmp_path: Path, parallelism: int
) -> None:
    rows = "('abcd', 'hello', 1), ('abcde', 'x', 2), ('ab', 'toolong', 3), ('ü', 'üüü', 4)"

    def feature(name: str, value_type: str, column: str) -> dict[str, str]:
        sql = (
            f"SELECT entity_id, {column} AS value FROM (VALUES {rows}) AS v(entity_id, label, n)"
            " WHERE %(tenant_id)s = 'acme'"
        )
        return {"name": name, "value_type": value_type, "transformation_sql": sql}

    repo = {
        "source_schemas": ["app"],
        "tenants": [{"id": "acme", "name": "Acme Corp"}],
        "feature_groups": [
            {
                "id": "limits",
                "entity_type": "thing",
                "max_failure_rate": 0.9,
                "features": [feature("label", "string", "label"), feature("n", "int64", "n")],
            }
        ],
    }
    (tmp_path / "features.yaml").write_text(yaml.safe_dump(repo))
    with FeatureStore(settings=replace(settings, max_entity_id_length=4, max_value_bytes=5)) as fs:
        fs.apply(tmp_path)
        result = fs.materialize(
            PipelineConfig(tenant_id="acme", feature_group_id="limits", start_time=WINDOW.start, end_time=WINDOW.end),
            parallelism=parallelism,
        )
    assert result.status is JobStatus.COMPLETED, result.errors
    too_long = "entity_id 'abcde' has 5 characters, more than the limit of 4 (FEATURE_STORE_MAX_ENTITY_ID_LENGTH)"
    too_big = "more than the limit of 5 bytes (FEATURE_STORE_MAX_VALUE_BYTES)"
    assert set(
        db.rows(
            "SELECT feature_name, entity_id, rule, reason FROM feature_store.quarantined_rows WHERE job_id = %s",
            (result.job_id,),
        )
    ) == {
        ("label", "abcde", "entity_id", too_long),
        ("n", "abcde", "entity_id", too_long),
        ("label", "ab", "value_size", f'value "toolong" has 7 bytes, {too_big}'),
        ("label", "ü", "value_size", f'value "üüü" has 6 bytes, {too_big}'),
    }
    assert set(db.rows("SELECT feature_name, entity_id, value FROM feature_store.feature_values")) == {
        ("label", "abcd", "hello"),
        ("n", "abcd", 1),
        ("n", "ab", 3),
        ("n", "ü", 4),
    }
