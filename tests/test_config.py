"""Settings: every malformed value is a ConfigurationError naming the setting."""

from __future__ import annotations

import pytest

from feature_store import Settings
from feature_store.errors import ConfigurationError


@pytest.mark.parametrize(
    ("env", "value", "problem"),
    [
        ("FEATURE_STORE_DATABASE_URL", "postgresql://postgres@127.0.0.1:notaport/x", "port 'notaport' is not a number"),
        ("FEATURE_STORE_DATABASE_URL", "postgresql://postgres@127.0.0.1:0/x", "port '0' is not a number from 1"),
        ("FEATURE_STORE_DATABASE_URL", "not a url at all", 'missing "=" after "not"'),
        ("FEATURE_STORE_DATABASE_URL", "host=h password='s3cret", "unterminated quoted string"),
        ("FEATURE_STORE_REDIS_URL", "http://x", "must specify one of the following schemes"),
        ("FEATURE_STORE_REDIS_URL", "redis://:6379:99", "'6379:99'"),
        ("FEATURE_STORE_STATEMENT_TIMEOUT", "soon", "not a number"),
    ],
)
def test_a_malformed_setting_names_itself_and_the_problem(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, problem: str
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigurationError, match=f"^{env} .* is invalid: .*To fix: ") as raised:
        Settings.from_env()
    assert problem in str(raised.value) and raised.value.setting == env


def test_valid_settings_in_either_form_are_accepted() -> None:
    Settings(database_url="host=127.0.0.1 port=5432,5433 user=postgres password='a b' dbname=x")
    Settings(database_url="postgresql://u:p%40ss@h1:5432,h2:5433/x?sslmode=prefer", redis_url="unix:///tmp/r.sock")
    Settings(redis_url="rediss://:pw@h:6380/2")
