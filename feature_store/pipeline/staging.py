"""Staging: one unlogged table per in-flight job holding transform results until they are written.

A table per job (instead of one shared table) keeps every stage's scan to its own rows without an
index to maintain, and finishing a job is a cheap `DROP TABLE`.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from feature_store.db import advisory_xact_lock
from feature_store.pipeline.sandbox import SANDBOX_ROLE

STAGING_SCHEMA = "feature_store_staging"


def staging_table(job_id: int) -> sql.Composed:
    return sql.SQL("{}.{}").format(sql.Identifier(STAGING_SCHEMA), sql.Identifier(f"job_{int(job_id)}"))


def replaced_table(job_id: int) -> sql.Composed:
    """(feature, entity) pairs whose offline rows in the window were replaced: the publish re-checks them."""
    return sql.SQL("{}.{}").format(sql.Identifier(STAGING_SCHEMA), sql.Identifier(f"job_{int(job_id)}_replaced"))


def create_staging(conn: psycopg.Connection, job_id: int) -> None:
    """Create the job's staging tables unless they exist; safe when parallel tasks of the job all call it."""
    with conn.transaction():
        # Concurrent GRANTs on one table fail with "tuple concurrently updated": take turns.
        advisory_xact_lock(conn, f"featurepipe staging {int(job_id)}")
        if not staging_exists(conn, job_id):
            _create(conn, job_id)


def _create(conn: psycopg.Connection, job_id: int) -> None:
    table = staging_table(job_id)
    conn.execute(
        sql.SQL(
            "CREATE UNLOGGED TABLE IF NOT EXISTS {} ("
            " feature_name text NOT NULL, entity_id text, event_time timestamptz, value jsonb,"
            " window_start timestamptz NOT NULL, window_end timestamptz NOT NULL,"
            " rejected_rule text, rejected_reason text)"
        ).format(table)
    )
    conn.execute(
        sql.SQL(
            "CREATE UNLOGGED TABLE IF NOT EXISTS {}"
            " (feature_name text, entity_id text, PRIMARY KEY (feature_name, entity_id))"
        ).format(replaced_table(job_id))
    )
    # Transformation SQL runs as the restricted role: it may add rows here and nothing else.
    conn.execute(sql.SQL("GRANT INSERT ON {} TO {}").format(table, sql.Identifier(SANDBOX_ROLE)))


def drop_staging(conn: psycopg.Connection, job_id: int) -> None:
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}, {}").format(staging_table(job_id), replaced_table(job_id)))


def staging_exists(conn: psycopg.Connection, job_id: int) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{STAGING_SCHEMA}.job_{int(job_id)}",)).fetchone()
    return bool(row and row[0])
