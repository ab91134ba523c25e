"""Materialization jobs: one row per (tenant, group, window, run) that mirrors its progress and outcome.

States: pending -> running -> completed | failed. Each feature's stages record their progress in
`materialization_job_features`; the job row's counts and progress are recomputed from those rows
under a row lock, so parallel feature tasks never lose each other's updates.

A try that failed in a way a retry can fix, with more tries to come, only leaves a note (error
message `retrying after try N: <cause>`) on its feature, or on the job for finish: statuses stay as
they were, so the job never shows `failed` for a failure its retry survives.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import psycopg

from feature_store.db import fetch_models
from feature_store.definitions.models import FeatureGroup
from feature_store.errors import JobNotFoundError
from feature_store.pipeline.models import (
    FeatureResult,
    FeatureStatus,
    JobStatus,
    JobType,
    MaterializationJob,
    TimeWindow,
)

JOB_COLUMNS = (
    "id, tenant_id, feature_group_id, job_type, start_time, end_time, status, progress, error_message,"
    " rows_processed, rows_failed, duration_ms, created_at, started_at, completed_at, dag_id, run_id,"
    " try_number, write_online, write_offline, features_total, online_overwrite, overwrite_reason"
)

# Share of a feature's work done once it reaches each status (three stages: transform, validate, write).
_PROGRESS_SQL = (
    "CASE status WHEN 'transformed' THEN 1.0/3 WHEN 'validated' THEN 2.0/3"
    " WHEN 'written' THEN 1 WHEN 'failed' THEN 1 ELSE 0 END"
)


@dataclass(frozen=True, kw_only=True)
class RunInfo:
    """Which orchestrator run owns a job (Airflow's dag id, run id and try number)."""

    dag_id: str
    run_id: str
    try_number: int | None = None


def create_job(
    conn: psycopg.Connection,
    *,
    tenant_id: str,
    group: FeatureGroup,
    features: Sequence[str],
    window: TimeWindow,
    mode: JobType,
    write_online: bool,
    write_offline: bool,
    run: RunInfo | None = None,
    overwrite_online: str | None = None,
) -> int:
    """Create a pending job for `features` of the group (its first transform creates its staging).

    `overwrite_online` is the recorded reason of a corrective rerun whose publish replaces newer
    online values too.

    For an orchestrator run that already has this job (a cleared or retried planning task), the
    job is reset and reused instead of duplicated.
    """
    params = {
        "tenant_id": tenant_id,
        "group_id": group.id,
        "job_type": mode.value,
        "start": window.start,
        "end": window.end,
        "write_online": write_online,
        "write_offline": write_offline,
        "total": len(features),
        "dag_id": run.dag_id if run else None,
        "run_id": run.run_id if run else None,
        "try_number": run.try_number if run else None,
        "overwrite": overwrite_online is not None,
        "reason": overwrite_online,
    }
    insert = (
        "INSERT INTO feature_store.materialization_jobs (tenant_id, feature_group_id, job_type, start_time,"
        " end_time, write_online, write_offline, features_total, dag_id, run_id, try_number,"
        " online_overwrite, overwrite_reason)"
        " VALUES (%(tenant_id)s, %(group_id)s, %(job_type)s, %(start)s, %(end)s, %(write_online)s,"
        " %(write_offline)s, %(total)s, %(dag_id)s, %(run_id)s, %(try_number)s, %(overwrite)s, %(reason)s)"
    )
    if run is not None:
        # A cleared or retried planning task starts the same job over instead of adding a second one.
        insert += (
            " ON CONFLICT (dag_id, run_id, tenant_id, feature_group_id) WHERE run_id IS NOT NULL DO UPDATE SET"
            " job_type = excluded.job_type, start_time = excluded.start_time, end_time = excluded.end_time,"
            " write_online = excluded.write_online, write_offline = excluded.write_offline,"
            " features_total = excluded.features_total, try_number = excluded.try_number,"
            " online_overwrite = excluded.online_overwrite, overwrite_reason = excluded.overwrite_reason,"
            " status = 'pending', progress = 0, error_message = NULL, rows_processed = 0, rows_failed = 0,"
            " shard = NULL, finish_claimed_at = NULL,"
            " duration_ms = NULL, started_at = NULL, completed_at = NULL"
        )
    with conn.transaction():
        row = conn.execute(insert + " RETURNING id", params).fetchone()
        assert row is not None
        job_id = int(row[0])
        conn.execute("DELETE FROM feature_store.materialization_job_features WHERE job_id = %s", (job_id,))
        conn.execute(
            "INSERT INTO feature_store.materialization_job_features (job_id, feature_name)"
            " SELECT %s, unnest(%s::text[])",
            (job_id, list(features)),
        )
    return job_id


def get_job(conn: psycopg.Connection, job_id: int) -> MaterializationJob:
    found = fetch_models(
        conn,
        MaterializationJob,
        f"SELECT {JOB_COLUMNS} FROM feature_store.materialization_jobs WHERE id = %s",
        (job_id,),
    )
    if not found:
        raise JobNotFoundError(job_id)
    return found[0]


def list_jobs(
    conn: psycopg.Connection,
    *,
    limit: int = 50,
    tenant_id: str | None = None,
    group_id: str | None = None,
    status: JobStatus | None = None,
    run_id: str | None = None,
    created_after: datetime | None = None,
) -> list[MaterializationJob]:
    """Most recent jobs first, optionally filtered."""
    return fetch_models(
        conn,
        MaterializationJob,
        f"SELECT {JOB_COLUMNS} FROM feature_store.materialization_jobs"
        " WHERE (%(tenant)s::text IS NULL OR tenant_id = %(tenant)s)"
        " AND (%(group)s::text IS NULL OR feature_group_id = %(group)s)"
        " AND (%(status)s::text IS NULL OR status = %(status)s)"
        " AND (%(run_id)s::text IS NULL OR run_id = %(run_id)s)"
        " AND (%(after)s::timestamptz IS NULL OR created_at >= %(after)s)"
        " ORDER BY created_at DESC, id DESC LIMIT %(limit)s",
        {
            "tenant": tenant_id,
            "group": group_id,
            "status": status.value if status else None,
            "run_id": run_id,
            "after": created_after,
            "limit": limit,
        },
    )


def feature_results(conn: psycopg.Connection, job_id: int) -> list[FeatureResult]:
    return fetch_models(
        conn,
        FeatureResult,
        "SELECT feature_name AS feature, status, rows_processed, rows_failed, error_message"
        " FROM feature_store.materialization_job_features WHERE job_id = %s ORDER BY feature_name",
        (job_id,),
    )


def record_feature(
    conn: psycopg.Connection,
    job_id: int,
    feature: str,
    status: FeatureStatus,
    *,
    rows_processed: int | None = None,
    rows_failed: int | None = None,
    error_message: str | None = None,
    try_number: int | None = None,
    own_event_time: bool | None = None,
) -> None:
    """Record one feature's progress and refresh the job's counts and progress; the job is running now."""
    with conn.transaction():
        locked = conn.execute(
            "SELECT 1 FROM feature_store.materialization_jobs WHERE id = %s FOR UPDATE", (job_id,)
        ).fetchone()
        if locked is None:
            raise JobNotFoundError(job_id)
        conn.execute(
            "INSERT INTO feature_store.materialization_job_features"
            " (job_id, feature_name, status, rows_processed, rows_failed, error_message, own_event_time)"
            " VALUES (%(job)s, %(feature)s, %(status)s, coalesce(%(processed)s, 0), coalesce(%(failed)s, 0),"
            " %(error)s, %(own)s)"
            " ON CONFLICT (job_id, feature_name) DO UPDATE SET status = excluded.status,"
            " rows_processed = coalesce(%(processed)s, materialization_job_features.rows_processed),"
            " rows_failed = coalesce(%(failed)s, materialization_job_features.rows_failed),"
            " own_event_time = coalesce(%(own)s, materialization_job_features.own_event_time),"
            " error_message = excluded.error_message, updated_at = now()",
            {
                "job": job_id,
                "feature": feature,
                "status": status.value,
                "processed": rows_processed,
                "failed": rows_failed,
                "error": error_message,
                "own": own_event_time,
            },
        )
        conn.execute(
            "UPDATE feature_store.materialization_jobs j SET"
            " status = 'running', started_at = coalesce(j.started_at, now()), completed_at = NULL,"
            " duration_ms = NULL, try_number = coalesce(%(try)s, j.try_number),"
            " rows_processed = agg.processed, rows_failed = agg.failed,"
            " progress = CASE WHEN j.features_total > 0 THEN least(1, agg.done / j.features_total) ELSE 0 END"
            f" FROM (SELECT coalesce(sum(rows_processed), 0) AS processed, coalesce(sum(rows_failed), 0) AS failed,"
            f"   coalesce(sum({_PROGRESS_SQL}), 0) AS done"
            "   FROM feature_store.materialization_job_features WHERE job_id = %(job)s) agg"
            " WHERE j.id = %(job)s",
            {"job": job_id, "try": try_number},
        )


def note_feature_retry(conn: psycopg.Connection, job_id: int, feature: str, note: str) -> None:
    """Record why a feature's stage failed in a way a retry can fix: its status stays as it is (so the
    retry can go on from there) and the note is its error message until a stage succeeds."""
    with conn.transaction():
        locked = conn.execute(
            "SELECT 1 FROM feature_store.materialization_jobs WHERE id = %s FOR UPDATE", (job_id,)
        ).fetchone()
        if locked is None:
            raise JobNotFoundError(job_id)
        conn.execute(
            "INSERT INTO feature_store.materialization_job_features (job_id, feature_name, error_message)"
            " VALUES (%(job)s, %(feature)s, %(note)s)"
            " ON CONFLICT (job_id, feature_name) DO UPDATE SET error_message = excluded.error_message,"
            " updated_at = now()",
            {"job": job_id, "feature": feature, "note": note},
        )
        conn.execute(
            "UPDATE feature_store.materialization_jobs SET status = 'running',"
            " started_at = coalesce(started_at, now()) WHERE id = %s AND status = 'pending'",
            (job_id,),
        )


def note_job_retry(conn: psycopg.Connection, job_id: int, note: str) -> None:
    """Record why ending a job failed in a way a retry can fix: an unfinished job stays unfinished."""
    conn.execute(
        "UPDATE feature_store.materialization_jobs SET error_message = %s WHERE id = %s AND status IN"
        " ('pending', 'running')",
        (note, job_id),
    )


def finish_job(
    conn: psycopg.Connection, job_id: int, *, extra_errors: Sequence[str] = (), try_number: int | None = None
) -> MaterializationJob:
    """End a job: completed if every feature was written and nothing else failed, else failed.

    The error message lists one reason per line, each naming its feature. `try_number` is the
    orchestrator's try that ended the job.
    """
    with conn.transaction():
        conn.execute("SELECT 1 FROM feature_store.materialization_jobs WHERE id = %s FOR UPDATE", (job_id,))
        results = feature_results(conn, job_id)
        errors = [
            f"{r.feature}: {r.error_message or r.status.value}"
            for r in results
            if r.status is not FeatureStatus.WRITTEN
        ]
        errors.extend(extra_errors)
        conn.execute(
            "UPDATE feature_store.materialization_jobs SET status = %(status)s, error_message = %(error)s,"
            " progress = 1, started_at = coalesce(started_at, now()), completed_at = now(),"
            " duration_ms = (extract(epoch FROM now() - coalesce(started_at, now())) * 1000)::bigint,"
            " try_number = coalesce(%(try)s, try_number)"
            " WHERE id = %(job)s",
            {
                "job": job_id,
                "try": try_number,
                "status": (JobStatus.FAILED if errors else JobStatus.COMPLETED).value,
                "error": "\n".join(errors) or None,
            },
        )
    return get_job(conn, job_id)


def fail_jobs_of_run(conn: psycopg.Connection, *, dag_id: str, run_id: str, reason: str) -> int:
    """Fail every unfinished job of an orchestrator run (killed, timed out or failed from outside)."""
    cur = conn.execute(
        "UPDATE feature_store.materialization_jobs SET status = 'failed',"
        " error_message = concat_ws(E'\\n', error_message, %(reason)s::text), completed_at = now(),"
        " duration_ms = (extract(epoch FROM now() - coalesce(started_at, created_at)) * 1000)::bigint"
        " WHERE dag_id = %(dag_id)s AND run_id = %(run_id)s AND status IN ('pending', 'running')",
        {"dag_id": dag_id, "run_id": run_id, "reason": reason},
    )
    return cur.rowcount


def record_shards(conn: psycopg.Connection, shards: dict[int, int]) -> None:
    """Remember which tenant shard of its run each job belongs to (job id -> shard number)."""
    if shards:
        conn.execute(
            "UPDATE feature_store.materialization_jobs j SET shard = s.shard"
            " FROM unnest(%s::bigint[], %s::int[]) AS s(id, shard) WHERE j.id = s.id",
            (list(shards), list(shards.values())),
        )


def find_shard_jobs(conn: psycopg.Connection, *, dag_id: str, run_id: str, group_id: str, shard: int) -> list[int]:
    """The jobs of one tenant shard of an orchestrator run."""
    rows = conn.execute(
        "SELECT id FROM feature_store.materialization_jobs"
        " WHERE dag_id = %s AND run_id = %s AND feature_group_id = %s AND shard = %s ORDER BY id",
        (dag_id, run_id, group_id, shard),
    ).fetchall()
    return [int(r[0]) for r in rows]


def claim_finish(conn: psycopg.Connection, job_id: int) -> bool:
    """Claim the right to finish a job whose features are all done (written or failed); one caller wins."""
    row = conn.execute(
        "UPDATE feature_store.materialization_jobs j SET finish_claimed_at = now()"
        " WHERE j.id = %s AND j.finish_claimed_at IS NULL AND j.status NOT IN ('completed', 'failed')"
        " AND NOT EXISTS (SELECT 1 FROM feature_store.materialization_job_features f"
        "   WHERE f.job_id = j.id AND f.status NOT IN ('written', 'failed'))"
        " RETURNING j.id",
        (job_id,),
    ).fetchone()
    return row is not None


def run_jobs(conn: psycopg.Connection, *, dag_id: str, run_id: str) -> list[int]:
    """Every job of an orchestrator run."""
    rows = conn.execute(
        "SELECT id FROM feature_store.materialization_jobs WHERE dag_id = %s AND run_id = %s ORDER BY id",
        (dag_id, run_id),
    ).fetchall()
    return [int(r[0]) for r in rows]


def find_run_job(conn: psycopg.Connection, *, dag_id: str, run_id: str, tenant_id: str, group_id: str) -> int | None:
    """The job an orchestrator run created for (tenant, group), if any."""
    row = conn.execute(
        "SELECT id FROM feature_store.materialization_jobs"
        " WHERE dag_id = %s AND run_id = %s AND tenant_id = %s AND feature_group_id = %s",
        (dag_id, run_id, tenant_id, group_id),
    ).fetchone()
    return int(row[0]) if row else None


def fail_feature(conn: psycopg.Connection, job_id: int, feature: str, reason: str) -> bool:
    """Mark a feature failed from outside its task (killed, timed out, failed from the UI).

    A feature already written keeps that (a shard's task may fail for its other tenants), and a
    failure the stage already recorded keeps its own, more precise, message. Returns True if changed.
    """
    row = conn.execute(
        "SELECT status FROM feature_store.materialization_job_features WHERE job_id = %s AND feature_name = %s",
        (job_id, feature),
    ).fetchone()
    if row is not None and row[0] in (FeatureStatus.FAILED.value, FeatureStatus.WRITTEN.value):
        return False
    record_feature(conn, job_id, feature, FeatureStatus.FAILED, error_message=reason)
    return True


def fail_job(conn: psycopg.Connection, job_id: int, reason: str) -> bool:
    """End an unfinished job as failed with `reason` (its finish task died). Returns True if changed."""
    job = get_job(conn, job_id)
    if job.status.is_final:
        return False
    finish_job(conn, job_id, extra_errors=[reason])
    return True
