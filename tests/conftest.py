"""Fixtures against the real PostgreSQL and Redis of this machine.

Each test run builds one template database with the schema and demo sources; each test gets its
own database cloned from it (fast, fully isolated) and its own Redis key prefix. Everything is
dropped at the end.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import psycopg
import pytest
import redis
from psycopg import sql

from feature_store import FeatureStore, Settings
from feature_store.demo import create_sources, demo_repo_path, generate_data
from feature_store.models import TimeWindow
from feature_store.schema import migrate

ADMIN_URL = os.environ.get("FEATURE_STORE_TEST_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("FEATURE_STORE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
RUN_ID = uuid.uuid4().hex[:8]

# Demo data for tests: three hours ending at a fixed, whole hour, so results are repeatable.
DATA_END = datetime(2026, 11, 2, 12, tzinfo=timezone.utc)
HOURS = [TimeWindow(start=DATA_END - timedelta(hours=h + 1), end=DATA_END - timedelta(hours=h)) for h in (2, 1, 0)]


def _url_for(dbname: str) -> str:
    return psycopg.conninfo.make_conninfo(ADMIN_URL, dbname=dbname)


def _admin() -> psycopg.Connection:
    try:
        return psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:  # a missing service is a failure, never a skip
        pytest.fail(f"PostgreSQL is not reachable at {ADMIN_URL}: {exc}. Run .ci/run, which starts it.")


@pytest.fixture(scope="session")
def template_db() -> Iterator[str]:
    """A database with the schema, the demo source tables and 3 hours of demo data, applied demo repo."""
    name = f"fp_test_tmpl_{RUN_ID}"
    with _admin() as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = _url_for(name)
    with psycopg.connect(url, autocommit=True) as conn:
        migrate(conn)
        create_sources(conn)
        generate_data(conn, start=HOURS[0].start, end=HOURS[-1].end, users_per_tenant=12, seed=0.17)
    store = FeatureStore(database_url=url, settings=Settings(redis_url=REDIS_URL))
    with store:
        store.apply(demo_repo_path())
    yield name
    with _admin() as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def database_url(template_db: str) -> Iterator[str]:
    name = f"fp_test_{RUN_ID}_{uuid.uuid4().hex[:8]}"
    with _admin() as admin:
        admin.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template_db))
        )
    yield _url_for(name)
    with _admin() as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    prefix = f"fptest:{RUN_ID}:{uuid.uuid4().hex[:6]}"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        client.unlink(*keys)
    client.close()


@pytest.fixture
def settings(database_url: str, redis_prefix: str) -> Settings:
    return Settings(database_url=database_url, redis_url=REDIS_URL, redis_prefix=redis_prefix)


@pytest.fixture
def store(settings: Settings) -> Iterator[FeatureStore]:
    with FeatureStore(settings=settings) as fs:
        yield fs


@pytest.fixture
def env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Point the CLI (which reads only the environment) at this test's database and prefix."""
    monkeypatch.setenv("FEATURE_STORE_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("FEATURE_STORE_REDIS_URL", settings.redis_url)
    monkeypatch.setenv("FEATURE_STORE_REDIS_PREFIX", settings.redis_prefix)
    return settings


@dataclass
class Sql:
    """Tiny helper for independent checks straight against the database."""

    conn: psycopg.Connection

    def rows(self, query: str, params: object = None) -> list[tuple]:  # type: ignore[type-arg]
        return self.conn.execute(query, params).fetchall()  # type: ignore[arg-type]

    def value(self, query: str, params: object = None) -> object:
        row = self.conn.execute(query, params).fetchone()  # type: ignore[arg-type]
        return row[0] if row else None


@pytest.fixture
def db(database_url: str) -> Iterator[Sql]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield Sql(conn)
