"""What operators look at: feature-group freshness and missed deadlines."""

from __future__ import annotations

from datetime import datetime

import psycopg
from pydantic import BaseModel

from feature_store.db import fetch_models


class GroupFreshness(BaseModel):
    """Last successful materialization of one (tenant, group), against the group's freshness target."""

    tenant_id: str
    feature_group_id: str
    entity_type: str
    freshness_target_seconds: int | None
    last_window_end: datetime | None
    last_completed_at: datetime | None
    age_seconds: float | None
    stale: bool


class DeadlineMiss(BaseModel):
    dag_id: str
    run_id: str
    deadline_time: datetime | None
    detected_at: datetime
    message: str


def freshness(conn: psycopg.Connection) -> list[GroupFreshness]:
    """One row per active tenant x active group; `stale` when past its target or never materialized."""
    return fetch_models(
        conn,
        GroupFreshness,
        "SELECT t.id AS tenant_id, g.id AS feature_group_id, g.entity_type, g.freshness_target_seconds,"
        " last.end_time AS last_window_end, last.completed_at AS last_completed_at, age.seconds AS age_seconds,"
        " (age.seconds IS NULL OR age.seconds > g.freshness_target_seconds) IS TRUE AS stale"
        " FROM feature_store.tenants t CROSS JOIN feature_store.feature_groups g"
        " LEFT JOIN LATERAL (SELECT j.end_time, j.completed_at FROM feature_store.materialization_jobs j"
        "   WHERE j.tenant_id = t.id AND j.feature_group_id = g.id AND j.status = 'completed'"
        "   ORDER BY j.end_time DESC LIMIT 1) last ON true"
        " CROSS JOIN LATERAL (SELECT extract(epoch FROM now() - last.end_time)::float8 AS seconds) age"
        " WHERE t.status = 'active' AND g.status = 'active'"
        " ORDER BY t.id, g.id",
    )


def record_deadline_miss(
    conn: psycopg.Connection, *, dag_id: str, run_id: str, deadline_time: datetime | None, message: str
) -> None:
    conn.execute(
        "INSERT INTO feature_store.deadline_misses (dag_id, run_id, deadline_time, message) VALUES (%s, %s, %s, %s)",
        (dag_id, run_id, deadline_time, message),
    )


def deadline_misses(conn: psycopg.Connection, *, limit: int = 20) -> list[DeadlineMiss]:
    return fetch_models(
        conn,
        DeadlineMiss,
        "SELECT dag_id, run_id, deadline_time, detected_at, message FROM feature_store.deadline_misses"
        " ORDER BY detected_at DESC, id DESC LIMIT %s",
        (limit,),
    )
