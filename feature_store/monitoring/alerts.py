"""Alerts: what is breaching now, one notification per breach and one when it clears.

`evaluate` finds the current breaches set-wise in PostgreSQL (quarantine rate of each feature's
latest window, latest job failed, missed deadline of an unfinished run, group not fresh), compares
them with the alerts still open in `feature_store.alerts`, and queues a *firing* notification for
each new breach and a *resolved* one for each open alert that cleared, per routed channel, in
`feature_store.alert_outbox`. The orchestrator delivers the outbox (Airflow notifiers) and marks
each delivered; an undelivered one stays pending and is retried, never queued twice.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from pydantic import BaseModel

from feature_store.db import advisory_xact_lock, fetch_models
from feature_store.definitions.registry import Registry
from feature_store.monitoring.routing import AlertKind, AlertRouting, load_routing

DEFAULT_SCHEDULE_SECONDS = 3600
"""The materialization DAG's schedule (hourly): a group without a freshness target alerts after twice it."""

DEADLINE_LOOKBACK_HOURS = 24
"""A missed deadline is followed this long; after that it counts as cleared even if its run never ended."""

MAX_ERROR_CHARS = 300
"""A failed job's error, as quoted in an alert, is cut after this many characters."""


class AlertState(str, enum.Enum):
    FIRING = "firing"
    RESOLVED = "resolved"


class Breach(BaseModel):
    """Something breaching right now; `key` names it across evaluations (one alert per key)."""

    key: str
    kind: AlertKind
    tenant_id: str | None
    feature_group_id: str | None
    feature_name: str | None
    summary: str


class Notification(BaseModel):
    """One queued message for one channel."""

    id: int
    alert_key: str
    kind: AlertKind
    state: AlertState
    channel: str
    tenant_id: str | None
    feature_group_id: str | None
    feature_name: str | None
    title: str
    text: str
    created_at: datetime
    attempts: int


def evaluate(conn: psycopg.Connection, routing: AlertRouting | None = None) -> list[Notification]:
    """Open alerts for new breaches and resolve cleared ones; returns the notifications it queued.

    Serialised by an advisory lock, so two evaluators at once (two schedulers' tasks) queue each
    transition once."""
    routing = routing or load_routing(conn)
    with conn.transaction():
        advisory_xact_lock(conn, "featurepipe alerts")
        breaches = current_breaches(conn, routing)
        rows = conn.execute(_SYNC, {"breaches": Jsonb([b.model_dump(mode="json") for b in breaches])}).fetchall()
        queued: list[int] = []
        for key, kind, state, tenant_id, group_id, feature_name, summary in rows:
            alert_kind = AlertKind(kind)
            channels = routing.channels_for(group_id, alert_kind)
            if not channels:
                continue
            title, text = _message(alert_kind, AlertState(state), key, summary)
            for channel in channels:
                row = conn.execute(
                    "INSERT INTO feature_store.alert_outbox"
                    " (alert_key, kind, state, channel, tenant_id, feature_group_id, feature_name, title, text)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
                    (key, kind, state, channel, tenant_id, group_id, feature_name, title, text),
                ).fetchone()
                assert row is not None
                queued.append(int(row[0]))
    return _notifications(conn, "id = ANY(%(ids)s)", {"ids": queued})


def current_breaches(conn: psycopg.Connection, routing: AlertRouting) -> list[Breach]:
    """Every breach of a kind some route wants, for active tenants and groups."""
    groups = Registry(conn).list_groups(active_only=True)
    thresholds: dict[str, float] = {}
    targets: dict[str, int | None] = {}
    for group in groups:
        quarantine_routes = routing.routes_for(group.id, AlertKind.QUARANTINE_RATE)
        if quarantine_routes:
            thresholds[group.id] = min(r.quarantine_rate for r in quarantine_routes)
        fresh_routes = routing.routes_for(group.id, AlertKind.NOT_FRESH)
        if fresh_routes:
            # None: the group's target as each tenant has it (a tenant may override it), else the default.
            declared = [r.freshness_target_seconds for r in fresh_routes if r.freshness_target_seconds]
            targets[group.id] = min(declared) if declared else None
    failing = [g.id for g in groups if routing.routes_for(g.id, AlertKind.JOB_FAILED)]
    deadlines = bool(routing.routes_for(None, AlertKind.DEADLINE_MISSED))
    return fetch_models(
        conn,
        Breach,
        _BREACHES,
        {
            "thresholds": Jsonb(thresholds),
            "targets": Jsonb(targets),
            "default_target": 2 * DEFAULT_SCHEDULE_SECONDS,
            "failing": failing,
            "deadlines": deadlines,
            "lookback": DEADLINE_LOOKBACK_HOURS,
            "error_chars": MAX_ERROR_CHARS,
        },
    )


def pending_notifications(conn: psycopg.Connection, *, limit: int = 200) -> list[Notification]:
    """Queued notifications not delivered yet, oldest first."""
    return _notifications(conn, "delivered_at IS NULL", {}, limit=limit)


def mark_delivered(conn: psycopg.Connection, notification_id: int) -> None:
    conn.execute(
        "UPDATE feature_store.alert_outbox SET delivered_at = now(), attempts = attempts + 1, last_error = NULL"
        " WHERE id = %s",
        (notification_id,),
    )


def mark_failed(conn: psycopg.Connection, notification_id: int, error: str) -> None:
    """Note a failed delivery; the notification stays pending. `error` must not hold a secret."""
    conn.execute(
        "UPDATE feature_store.alert_outbox SET attempts = attempts + 1, last_error = %s WHERE id = %s",
        (error[:1000], notification_id),
    )


class OpenAlert(BaseModel):
    key: str
    kind: AlertKind
    tenant_id: str | None
    feature_group_id: str | None
    feature_name: str | None
    summary: str
    opened_at: datetime
    last_seen_at: datetime


def open_alerts(conn: psycopg.Connection) -> list[OpenAlert]:
    return fetch_models(
        conn,
        OpenAlert,
        "SELECT key, kind, tenant_id, feature_group_id, feature_name, summary, opened_at, last_seen_at"
        " FROM feature_store.alerts WHERE status = 'firing' ORDER BY opened_at, key",
    )


def _notifications(
    conn: psycopg.Connection, where: str, params: dict[str, Any], *, limit: int = 10_000
) -> list[Notification]:
    return fetch_models(
        conn,
        Notification,
        "SELECT id, alert_key, kind, state, channel, tenant_id, feature_group_id, feature_name, title, text,"
        f" created_at, attempts FROM feature_store.alert_outbox WHERE {where} ORDER BY id LIMIT %(limit)s",
        {**params, "limit": limit},
    )


def _message(kind: AlertKind, state: AlertState, key: str, summary: str) -> tuple[str, str]:
    label = key.split(":", 1)[1]
    if state is AlertState.FIRING:
        return f"[featurepipe] {_TITLES[kind]}: {label}", summary
    return f"[featurepipe] resolved: {_TITLES[kind]}: {label}", f"Cleared. It was: {summary}"


_TITLES = {
    AlertKind.QUARANTINE_RATE: "quarantine rate over threshold",
    AlertKind.JOB_FAILED: "materialization job failed",
    AlertKind.DEADLINE_MISSED: "deadline missed",
    AlertKind.NOT_FRESH: "feature group not fresh",
}


# Current breaches, one row each. %(thresholds)s / %(targets)s map a group id to its quarantine-rate
# threshold / freshness target (groups without a route for the kind are absent).
_BREACHES = """
WITH active AS (  -- each tenant's own groups and the shared ones it keeps, with its overrides
    SELECT t.id AS tenant_id, g.id AS group_id, g.freshness_target_seconds
    FROM feature_store.tenants t JOIN feature_store.tenant_feature_groups g ON g.tenant_id = t.id
    WHERE t.status = 'active' AND g.status = 'active' AND g.enabled),
latest_stats AS (
    SELECT DISTINCT ON (s.tenant_id, s.feature_group_id, s.feature_name) s.*
    FROM feature_store.feature_statistics s
    JOIN active a ON (a.tenant_id, a.group_id) = (s.tenant_id, s.feature_group_id)
    WHERE %(thresholds)s::jsonb ? s.feature_group_id
    ORDER BY s.tenant_id, s.feature_group_id, s.feature_name, s.window_end DESC),
latest_job AS (
    SELECT DISTINCT ON (j.tenant_id, j.feature_group_id) j.*
    FROM feature_store.materialization_jobs j
    JOIN active a ON (a.tenant_id, a.group_id) = (j.tenant_id, j.feature_group_id)
    WHERE j.status IN ('completed', 'failed') AND j.feature_group_id = ANY(%(failing)s)
    ORDER BY j.tenant_id, j.feature_group_id, j.completed_at DESC NULLS LAST, j.id DESC),
freshness AS (
    SELECT a.tenant_id, a.group_id,
           coalesce((%(targets)s::jsonb ->> a.group_id)::int, a.freshness_target_seconds, %(default_target)s) AS target,
           (SELECT max(j.end_time) FROM feature_store.materialization_jobs j
            WHERE j.tenant_id = a.tenant_id AND j.feature_group_id = a.group_id AND j.status = 'completed') AS last_end,
           (SELECT min(j.created_at) FROM feature_store.materialization_jobs j
            WHERE j.tenant_id = a.tenant_id AND j.feature_group_id = a.group_id) AS first_job
    FROM active a
    WHERE %(targets)s::jsonb ? a.group_id)
SELECT format('quarantine_rate:%%s/%%s/%%s', tenant_id, feature_group_id, feature_name) AS key,
       'quarantine_rate' AS kind, tenant_id, feature_group_id, feature_name,
       format('%%s/%%s/%%s: %%s of %%s rows (%%s%%%%) quarantined in window (%%s, %%s], above the alert threshold'
              ' of %%s%%%%', tenant_id, feature_group_id, feature_name, rows_quarantined, rows_total,
              round((100.0 * rows_quarantined / rows_total)::numeric, 1),
              to_char(window_start AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI"Z"'),
              to_char(window_end AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI"Z"'),
              round((100 * (%(thresholds)s::jsonb ->> feature_group_id)::numeric), 1)) AS summary
FROM latest_stats
WHERE rows_total > 0
  AND rows_quarantined::float8 / rows_total > (%(thresholds)s::jsonb ->> feature_group_id)::float8
UNION ALL
SELECT format('job_failed:%%s/%%s', tenant_id, feature_group_id), 'job_failed', tenant_id, feature_group_id, NULL,
       format('%%s/%%s: job %%s (window (%%s, %%s], run %%s) failed: %%s', tenant_id, feature_group_id, id,
              to_char(start_time AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI"Z"'),
              to_char(end_time AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI"Z"'), coalesce(run_id, 'none'),
              CASE WHEN char_length(coalesce(error_message, '')) > %(error_chars)s
                   THEN left(error_message, %(error_chars)s) || '…'
                   ELSE coalesce(error_message, 'no reason recorded') END)
FROM latest_job WHERE status = 'failed'
UNION ALL
SELECT format('not_fresh:%%s/%%s', tenant_id, group_id), 'not_fresh', tenant_id, group_id, NULL,
       CASE WHEN last_end IS NULL
            THEN format('%%s/%%s: no window has completed in the %%s since its first job (target %%s s)',
                        tenant_id, group_id, date_trunc('second', now() - first_job), target)
            ELSE format('%%s/%%s: the last completed window ended %%s ago (%%s),'
                        ' longer than its freshness target of %%s s',
                        tenant_id, group_id, date_trunc('second', now() - last_end),
                        to_char(last_end AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI"Z"'), target) END
FROM freshness
WHERE now() - coalesce(last_end, first_job) > make_interval(secs => target)
UNION ALL
SELECT format('deadline_missed:%%s/%%s', m.dag_id, m.run_id), 'deadline_missed', NULL, NULL, NULL, min(m.message)
FROM feature_store.deadline_misses m
WHERE %(deadlines)s AND m.detected_at > now() - make_interval(hours => %(lookback)s)
  AND (NOT EXISTS (SELECT FROM feature_store.materialization_jobs j WHERE j.dag_id = m.dag_id AND j.run_id = m.run_id)
       OR EXISTS (SELECT FROM feature_store.materialization_jobs j
                  WHERE j.dag_id = m.dag_id AND j.run_id = m.run_id AND j.status IN ('pending', 'running')))
GROUP BY m.dag_id, m.run_id
"""

# Open alerts for new breaches (or reopen resolved ones), touch the ones still breaching, resolve the
# rest; returns the transitions (firing: opened now; resolved: cleared now).
_SYNC = """
WITH b AS (
    SELECT * FROM jsonb_to_recordset(%(breaches)s::jsonb)
        AS x(key text, kind text, tenant_id text, feature_group_id text, feature_name text, summary text)),
opened AS (
    INSERT INTO feature_store.alerts AS a (key, kind, tenant_id, feature_group_id, feature_name, status, summary)
    SELECT key, kind, tenant_id, feature_group_id, feature_name, 'firing', summary FROM b
    ON CONFLICT (key) DO UPDATE SET
        status = 'firing', summary = excluded.summary, last_seen_at = now(),
        opened_at = CASE WHEN a.status = 'resolved' THEN now() ELSE a.opened_at END,
        resolved_at = CASE WHEN a.status = 'resolved' THEN NULL ELSE a.resolved_at END
    RETURNING a.key, a.kind, a.tenant_id, a.feature_group_id, a.feature_name, a.summary,
              (a.opened_at = now()) AS is_new),
resolved AS (
    UPDATE feature_store.alerts a SET status = 'resolved', resolved_at = now()
    WHERE a.status = 'firing' AND NOT EXISTS (SELECT FROM b WHERE b.key = a.key)
    RETURNING a.key, a.kind, a.tenant_id, a.feature_group_id, a.feature_name, a.summary)
SELECT key, kind, 'firing', tenant_id, feature_group_id, feature_name, summary FROM opened WHERE is_new
UNION ALL
SELECT key, kind, 'resolved', tenant_id, feature_group_id, feature_name, summary FROM resolved
ORDER BY 1, 3
"""
