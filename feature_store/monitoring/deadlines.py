"""Missed deadlines (SLAs) that the orchestrator reported, for the operators' view."""

from __future__ import annotations

from datetime import datetime

import psycopg
from pydantic import BaseModel

from feature_store.db import fetch_models


class DeadlineMiss(BaseModel):
    dag_id: str
    run_id: str
    deadline_time: datetime | None
    detected_at: datetime
    message: str


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
