"""Create or migrate the `feature_store` schema, idempotently and safely under concurrency."""

from __future__ import annotations

import logging
from importlib import resources

import psycopg

from feature_store.db import advisory_xact_lock

log = logging.getLogger(__name__)


def _migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every packaged migration, in order."""
    found = []
    for entry in resources.files("feature_store.migrations").iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            found.append((version, entry.name, entry.read_text(encoding="utf-8")))
    return sorted(found)


def latest_version() -> int:
    return _migrations()[-1][0]


def current_version(conn: psycopg.Connection) -> int:
    """Applied schema version, 0 for a database that was never initialised."""
    row = conn.execute("SELECT to_regclass('feature_store.schema_migrations') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return 0
    version = conn.execute("SELECT coalesce(max(version), 0) FROM feature_store.schema_migrations").fetchone()
    return int(version[0]) if version else 0


def migrate(conn: psycopg.Connection) -> list[str]:
    """Apply every migration not applied yet; return the names applied (empty when up to date)."""
    applied: list[str] = []
    with conn.transaction():
        # Serialise concurrent `init`s (parallel workers starting at once) on one database.
        advisory_xact_lock(conn, "featurepipe schema migrations")
        conn.execute("CREATE SCHEMA IF NOT EXISTS feature_store")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS feature_store.schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = current_version(conn)
        for version, name, sql in _migrations():
            if version <= done:
                continue
            log.info("applying migration %s", name)
            conn.execute(sql.encode())  # bytes: run the file as a plain multi-statement script
            conn.execute("INSERT INTO feature_store.schema_migrations (version, name) VALUES (%s, %s)", (version, name))
            applied.append(name)
    return applied
