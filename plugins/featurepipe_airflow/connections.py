"""Resolve the feature store's PostgreSQL and Redis through Airflow connections, falling back to env vars.

Connections (define them the Airflow way, e.g. ``AIRFLOW_CONN_FEATURE_STORE_DB``):

* ``feature_store_db`` (postgres): host, port, login, password, schema = database name.
* ``feature_store_redis`` (redis): host, port, password; extras as in ``RedisHook``, plus an optional
  key prefix for the online store:

  .. code-block:: json

      {"db": 0, "key_prefix": "fs"}

Without a connection, ``FEATURE_STORE_DATABASE_URL`` / ``FEATURE_STORE_REDIS_URL`` /
``FEATURE_STORE_REDIS_PREFIX`` apply, as for the CLI.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import redis

from feature_store import FeatureStore, Settings

log = logging.getLogger(__name__)

DB_CONN_ID = "feature_store_db"
REDIS_CONN_ID = "feature_store_redis"


def settings() -> Settings:
    """Settings with the database URL and Redis prefix taken from the Airflow connections when defined."""
    base = Settings.from_env()
    database_url = _postgres_uri()
    prefix = _redis_prefix()
    return replace(
        base,
        database_url=database_url or base.database_url,
        redis_prefix=prefix or base.redis_prefix,
    )


def open_store(*, online: bool = True) -> FeatureStore:
    """A FeatureStore on the Airflow connections (env vars where a connection is not defined)."""
    resolved = settings()
    redis_client = _redis_client() if online else None
    if redis_client is None:
        return FeatureStore(settings=resolved)
    return FeatureStore(settings=resolved, redis_client=redis_client)


def _postgres_uri() -> str | None:
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    try:
        uri = PostgresHook(postgres_conn_id=DB_CONN_ID).get_uri()
    except Exception as exc:  # AirflowNotFoundException, or no connection backend reachable
        if not _is_missing_connection(exc):
            raise
        log.info("connection %s is not defined; using FEATURE_STORE_DATABASE_URL", DB_CONN_ID)
        return None
    # PostgresHook hands out SQLAlchemy-style URIs ("postgresql+psycopg://"); psycopg takes "postgresql://".
    scheme, _, rest = uri.partition("://")
    return f"postgresql://{rest}" if scheme.split("+")[0] in ("postgres", "postgresql") else uri


def _redis_client() -> redis.Redis | None:
    from airflow.providers.redis.hooks.redis import RedisHook

    try:
        return RedisHook(redis_conn_id=REDIS_CONN_ID).get_conn()
    except Exception as exc:
        if not _is_missing_connection(exc):
            raise
        log.info("connection %s is not defined; using FEATURE_STORE_REDIS_URL", REDIS_CONN_ID)
        return None


def _redis_prefix() -> str | None:
    from airflow.sdk import BaseHook

    try:
        conn = BaseHook.get_connection(REDIS_CONN_ID)
    except Exception as exc:
        if not _is_missing_connection(exc):
            raise
        return None
    prefix = conn.extra_dejson.get("key_prefix")
    return str(prefix) if prefix else None


def _is_missing_connection(exc: Exception) -> bool:
    return type(exc).__name__ in ("AirflowNotFoundException", "ConnectionNotFound") or "isn't defined" in str(exc)
