"""What operators look at: feature-group freshness (including what online holds) and missed deadlines."""

from __future__ import annotations

from datetime import datetime

import psycopg
from pydantic import BaseModel

from feature_store.db import fetch_models
from feature_store.stores.online.base import OnlineStore


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
    """Past its target, never materialized, or online no longer holds what was published."""

    online_sampled: int | None = None
    """Entities of the last online publish checked in the online store (None: nothing to check)."""

    online_present: int | None = None
    """How many of those the online store still holds."""

    last_online_job_id: int | None = None


def freshness(
    conn: psycopg.Connection, online: OnlineStore | None = None, *, tenant_id: str | None = None
) -> list[GroupFreshness]:
    """One row per active tenant x each of its active, enabled groups; `stale` when past its target or
    never materialized.

    With `online`, a sample of the entities the last online publish wrote (when its values have not
    expired yet) is looked up, so freshness reflects what the online store actually holds.
    """
    rows = fetch_models(
        conn,
        GroupFreshness,
        "SELECT t.id AS tenant_id, g.id AS feature_group_id, g.entity_type, g.freshness_target_seconds,"
        " last.end_time AS last_window_end, last.completed_at AS last_completed_at, age.seconds AS age_seconds,"
        " (age.seconds IS NULL OR age.seconds > g.freshness_target_seconds) IS TRUE AS stale,"
        " pub.id AS last_online_job_id"
        # Each tenant's own groups and the shared ones it keeps, with its overrides (target, TTL).
        " FROM feature_store.tenants t JOIN feature_store.tenant_feature_groups g ON g.tenant_id = t.id"
        " LEFT JOIN LATERAL (SELECT j.end_time, j.completed_at FROM feature_store.materialization_jobs j"
        "   WHERE j.tenant_id = t.id AND j.feature_group_id = g.id AND j.status = 'completed'"
        "   ORDER BY j.end_time DESC LIMIT 1) last ON true"
        " LEFT JOIN LATERAL (SELECT j.id FROM feature_store.materialization_jobs j"
        "   WHERE j.tenant_id = t.id AND j.feature_group_id = g.id AND j.status = 'completed' AND j.write_online"
        "     AND g.online_enabled AND j.write_offline AND g.offline_enabled"
        "     AND (g.ttl_seconds IS NULL OR j.completed_at > now() - make_interval(secs => g.ttl_seconds))"
        "   ORDER BY j.completed_at DESC LIMIT 1) pub ON true"
        " CROSS JOIN LATERAL (SELECT extract(epoch FROM now() - last.end_time)::float8 AS seconds) age"
        " WHERE t.status = 'active' AND g.status = 'active' AND g.enabled"
        " AND (%(tenant)s::text IS NULL OR t.id = %(tenant)s)"
        " ORDER BY t.id, g.id",
        {"tenant": tenant_id},
    )
    if online is None:
        return rows
    checked = []
    for row in rows:
        if row.last_online_job_id is None:
            checked.append(row)
            continue
        sample = [
            str(r[0])
            for r in conn.execute(
                "SELECT DISTINCT entity_id FROM feature_store.feature_values WHERE job_id = %s LIMIT %s",
                (row.last_online_job_id, ONLINE_SAMPLE),
            ).fetchall()
        ]
        present = online.count_present(tenant_id=row.tenant_id, group_id=row.feature_group_id, entity_ids=sample)
        checked.append(
            row.model_copy(
                update={
                    "online_sampled": len(sample),
                    "online_present": present,
                    "stale": row.stale or present < len(sample),
                }
            )
        )
    return checked


ONLINE_SAMPLE = 20
"""Entities per (tenant, group) that `freshness` looks up online."""
