"""Settings: every malformed value is a ConfigurationError naming the setting; no password is ever printed."""

from __future__ import annotations

import pytest

from feature_store import Settings
from feature_store.errors import ConfigurationError, ConnectionFailedError, redact_secrets, redact_url


@pytest.mark.parametrize(
    ("env", "value", "problem"),
    [
        ("FEATURE_STORE_DATABASE_URL", "postgresql://postgres@127.0.0.1:notaport/x", "port 'notaport' is not a number"),
        ("FEATURE_STORE_DATABASE_URL", "postgresql://postgres@127.0.0.1:0/x", "port '0' is not a number from 1"),
        ("FEATURE_STORE_DATABASE_URL", "not a url at all", 'missing "=" after "not"'),
        ("FEATURE_STORE_DATABASE_URL", "host=h password='s3cret", "unterminated quoted string"),
        ("FEATURE_STORE_REDIS_URL", "http://x", "must specify one of the following schemes"),
        ("FEATURE_STORE_REDIS_URL", "redis://:6379:99", "'6379:99'"),
        ("FEATURE_STORE_REDIS_PREFIX", "fs:a", "without ':' or glob characters"),
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
    assert "s3cret" not in str(raised.value)


def test_valid_settings_in_either_form_are_accepted() -> None:
    Settings(database_url="host=127.0.0.1 port=5432,5433 user=postgres password='a b' dbname=x")
    Settings(database_url="postgresql://u:p%40ss@h1:5432,h2:5433/x?sslmode=prefer", redis_url="unix:///tmp/r.sock")
    Settings(redis_url="rediss://:pw@h:6380/2", redis_prefix="fs-staging.v2_1")


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("postgresql://postgres:s3cret@h:5432/x", "postgresql://postgres:***@h:5432/x"),
        (
            "postgresql://postgres@h/x?sslmode=require&password=s3cret",
            "postgresql://postgres@h/x?sslmode=require&password=***",
        ),
        ("host=127.0.0.1 user=postgres password=s3cret dbname=x", "host=127.0.0.1 user=postgres password=*** dbname=x"),
        ("host=h password = 's3cret s3cret' dbname=x", "host=h password = *** dbname=x"),
        ("host=h sslpassword=s3cret dbname=x", "host=h sslpassword=*** dbname=x"),
        ("host=h password=s3cret s3cret dbname=x", "host=h password=***"),  # unreadable: where does it end?
        ("redis://:s3cret@h:6379/0", "redis://:***@h:6379/0"),
        ("redis://default:s3cret@h:6379/0", "redis://default:***@h:6379/0"),
        ("redis://h:6379/0", "redis://h:6379/0"),
        ("postgresql://postgres@h/x", "postgresql://postgres@h/x"),
    ],
)
def test_redact_url_hides_passwords_of_uris_and_key_value_conninfos(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted


def test_driver_messages_lose_any_password_they_echo() -> None:
    url = "host=h user=postgres password=s3cret dbname=x"
    assert redact_secrets(f'bad value "s3cret" in {url}', url) == 'bad value "***" in ' + redact_url(url)
    assert redact_secrets("as 's3cr%2Ft'", "postgresql://u:s3cr%2Ft@h/x") == "as '***'"
    error = ConnectionFailedError("PostgreSQL", url, 'FATAL: password "s3cret" is wrong')
    assert "s3cret" not in str(error) and "s3cret" not in error.url
