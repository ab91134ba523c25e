"""Shared test data and helpers (imported by tests; fixtures live in conftest.py)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg
import psycopg.sql
import pytest

from feature_store.windows import TimeWindow

ADMIN_URL = os.environ.get("FEATURE_STORE_TEST_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("FEATURE_STORE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def url_for(dbname: str) -> str:
    """The admin URL with another database: a URI, as Airflow's AIRFLOW_CONN_* variables need."""
    return ADMIN_URL.rsplit("/", 1)[0] + "/" + dbname


def admin_connection() -> psycopg.Connection:
    try:
        return psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:  # a missing service is a failure, never a skip
        pytest.fail(f"PostgreSQL is not reachable at {ADMIN_URL}: {exc}. Run .ci/run, which starts it.")


# Demo data for tests: three hours ending at a fixed, whole hour, so results are repeatable.
DATA_END = datetime(2026, 11, 2, 12, tzinfo=timezone.utc)
HOURS = [TimeWindow(start=DATA_END - timedelta(hours=h + 1), end=DATA_END - timedelta(hours=h)) for h in (2, 1, 0)]


@dataclass
class Sql:
    """Tiny helper for independent checks straight against the database."""

    conn: psycopg.Connection

    def execute(self, query: str, params: Any = None) -> int:
        """Run a statement; returns the rows it affected."""
        return self.conn.execute(query, params).rowcount

    def rows(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        return self.conn.execute(query, params).fetchall()

    def value(self, query: str, params: Any = None) -> Any:
        row = self.conn.execute(query, params).fetchone()
        return row[0] if row else None

    def try_counter(self, name: str) -> str:
        """A counter feature SQL can bump, for tests that count how often a transform ran.

        Transforms run read-only and roll back, so nothing they do persists; the counter is a
        sequence bumped over a dblink connection of its own by a SECURITY DEFINER function, which this
        test (and only it) grants to the transform role. Returns the SQL expression that bumps it;
        `SELECT last_value FROM app.<name>` reads it.
        """
        info = self.conn.info
        dsn = f"host={info.host} port={info.port} dbname={info.dbname} user={info.user}"
        self.execute("CREATE EXTENSION IF NOT EXISTS dblink")
        self.execute(psycopg.sql.SQL("CREATE SEQUENCE app.{}").format(psycopg.sql.Identifier(name)))
        self.execute(
            psycopg.sql.SQL(
                "CREATE FUNCTION app.{fn}() RETURNS bigint LANGUAGE sql SECURITY DEFINER"
                " SET search_path = pg_catalog, public AS $$"
                " SELECT n FROM dblink({dsn}, {query}) AS t(n bigint) $$"
            ).format(
                fn=psycopg.sql.Identifier(name),
                dsn=psycopg.sql.Literal(dsn),
                query=psycopg.sql.Literal(f"SELECT nextval('app.{name}')"),
            )
        )
        self.execute(
            psycopg.sql.SQL("GRANT EXECUTE ON FUNCTION app.{}() TO featurepipe_transform").format(
                psycopg.sql.Identifier(name)
            )
        )
        return f"app.{name}()"


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler that keeps the test output clean (no access log on stderr)."""

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def http_server(handler: type[BaseHTTPRequestHandler]) -> Iterator[int]:
    """A real HTTP server on a free loopback port, serving from a thread until the block ends; yields the port."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
