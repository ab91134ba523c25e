"""Opening connections to PostgreSQL and Redis with errors that say what to do."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import psycopg
import redis
from psycopg import sql
from psycopg.rows import class_row
from pydantic import BaseModel

from feature_store.config import DATABASE_URL_FIX, REDIS_URL_FIX, check_database_url
from feature_store.errors import (
    ConfigurationError,
    ConnectionFailedError,
    DatabaseNotFoundError,
    FeatureStoreError,
    first_line,
    redact_url,
)

CONNECT_TIMEOUT_S = 5

M = TypeVar("M", bound=BaseModel)

# libpq's words for a server that answers but has no such database (the database name in quotes).
_NO_DATABASE = re.compile(r'database "(.*)" does not exist')


def connect(url: str, *, autocommit: bool = True) -> psycopg.Connection:
    """Open a psycopg 3 connection; statements run in autocommit unless inside `conn.transaction()`."""
    check_database_url(url)
    try:
        return psycopg.connect(url, autocommit=autocommit, connect_timeout=CONNECT_TIMEOUT_S)
    except psycopg.ProgrammingError as exc:  # a conninfo libpq cannot read
        raise ConfigurationError("FEATURE_STORE_DATABASE_URL", url, first_line(exc), DATABASE_URL_FIX) from None
    except psycopg.OperationalError as exc:
        raise _connection_error(url, exc) from exc


def _connection_error(url: str, exc: psycopg.OperationalError) -> FeatureStoreError:
    message = first_line(exc)
    missing = _NO_DATABASE.search(message)
    if missing:
        return DatabaseNotFoundError(url, missing.group(1))
    if message.startswith("connection is bad: invalid "):  # libpq refused an option before connecting
        return ConfigurationError(
            "FEATURE_STORE_DATABASE_URL", url, message.removeprefix("connection is bad: "), DATABASE_URL_FIX
        )
    return ConnectionFailedError("PostgreSQL", url, message)


def connect_redis(url: str) -> redis.Redis:
    """Open a Redis client and check it answers, so a dead server fails here and not mid-pipeline."""
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=CONNECT_TIMEOUT_S)
    except ValueError as exc:  # redis-py's word for a URL it cannot read
        raise ConfigurationError("FEATURE_STORE_REDIS_URL", url, first_line(exc), REDIS_URL_FIX) from None
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        raise ConnectionFailedError("Redis", url, first_line(exc)) from exc
    return client


def ensure_database(url: str) -> bool:
    """Create the database named in `url` if it does not exist yet; returns True when it was created."""
    try:
        connect(url).close()
        return False
    except DatabaseNotFoundError as exc:
        name = exc.dbname
    maintenance = psycopg.conninfo.make_conninfo(url, dbname="postgres")
    try:
        with psycopg.connect(maintenance, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.errors.DuplicateDatabase:
        return False
    except psycopg.errors.InsufficientPrivilege as exc:
        raise FeatureStoreError(
            f"cannot create database {name!r} on the PostgreSQL server at {redact_url(url)}: {first_line(exc)}."
            f" To fix: create it as a superuser (CREATE DATABASE {name}) or grant this user CREATEDB."
        ) from exc
    except psycopg.OperationalError as exc:
        raise ConnectionFailedError("PostgreSQL", maintenance, first_line(exc)) from exc
    return True


def fetch_models(
    conn: psycopg.Connection, model: type[M], query: Any, params: Sequence[Any] | Mapping[str, Any] | None = None
) -> list[M]:
    """The rows of `query` as `model` instances, validated by pydantic (column names = field names)."""
    with conn.cursor(row_factory=class_row(model)) as cur:
        return cur.execute(query, params).fetchall()


def advisory_xact_lock(conn: psycopg.Connection, key: str) -> None:
    """Take a transaction-scoped advisory lock named by `key`: holders of the same key take turns."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (key,))


def qualified_name(name: str) -> sql.Composed:
    """`schema.table` as a composed identifier."""
    schema, table = name.split(".", 1)
    return sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(table))
