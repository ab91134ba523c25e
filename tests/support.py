"""Shared test data and helpers (imported by tests; fixtures live in conftest.py)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
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
