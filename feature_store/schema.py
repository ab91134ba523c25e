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


def pending_versions(conn: psycopg.Connection) -> list[int]:
    """Packaged migrations this database has not applied (all of them when it was never initialised)."""
    row = conn.execute("SELECT to_regclass('feature_store.schema_migrations') IS NOT NULL").fetchone()
    done: set[int] = set()
    if row and row[0]:
        done = {int(r[0]) for r in conn.execute("SELECT version FROM feature_store.schema_migrations")}
    return [version for version, _name, _sql in _migrations() if version not in done]


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
        # Every version not recorded yet, not only those above the highest: branches developed side by
        # side number theirs independently, and a database may have run a later one first.
        done = {int(r[0]) for r in conn.execute("SELECT version FROM feature_store.schema_migrations")}
        for version, name, sql in _migrations():
            if version in done:
                continue
            log.info("applying migration %s", name)
            conn.execute(sql.encode())  # bytes: run the file as a plain multi-statement script
            conn.execute("INSERT INTO feature_store.schema_migrations (version, name) VALUES (%s, %s)", (version, name))
            applied.append(name)
    return applied
