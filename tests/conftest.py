"""Fixtures against the real PostgreSQL and Redis of this machine.

Each test run builds one template database with the schema and demo sources; each test gets its
own database cloned from it (fast, fully isolated) and its own Redis key prefix. Everything is
dropped at the end.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
import redis
from psycopg import sql

from feature_store import FeatureStore, Settings
from feature_store.schema import migrate
from featurepipe_demo import create_sources, demo_repo_path, generate_data
from support import HOURS, REDIS_URL, Sql, admin_connection, url_for

RUN_ID = uuid.uuid4().hex[:8]


@pytest.fixture(scope="session")
def template_db() -> Iterator[str]:
    """A database with the schema, the demo source tables and 3 hours of demo data, applied demo repo."""
    name = f"fp_test_tmpl_{RUN_ID}"
    with admin_connection() as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = url_for(name)
    with psycopg.connect(url, autocommit=True) as conn:
        migrate(conn)
        create_sources(conn)
        generate_data(conn, start=HOURS[0].start, end=HOURS[-1].end, users_per_tenant=12, seed=0.17)
    store = FeatureStore(database_url=url, settings=Settings(redis_url=REDIS_URL))
    with store:
        store.apply(demo_repo_path())
    yield name
    with admin_connection() as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def database_url(template_db: str) -> Iterator[str]:
    name = f"fp_test_{RUN_ID}_{uuid.uuid4().hex[:8]}"
    with admin_connection() as admin:
        admin.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template_db))
        )
    yield url_for(name)
    with admin_connection() as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A key prefix of this test alone (no `:`, see Settings); keys of `{prefix}<more>` stores are cleared too."""
    prefix = f"fptest-{RUN_ID}-{uuid.uuid4().hex[:6]}"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
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


@pytest.fixture
def db(database_url: str) -> Iterator[Sql]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield Sql(conn)


@pytest.fixture(scope="session")
def redis_cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real three-node Redis Cluster on loopback ports, for the whole test run."""
    from redis_cluster import redis_cluster

    with redis_cluster(tmp_path_factory.mktemp("redis-cluster")) as url:
        yield url
