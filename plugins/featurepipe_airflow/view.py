"""The *Feature Store* view in the Airflow UI: freshness per group, recent jobs, quarantined rows, deadline misses.

A FastAPI app mounted by the plugin under /featurepipe. `/` is a server-rendered page (shown in
an iframe in Airflow's navigation); `/api/*` return the same data as JSON. Every route requires an
authenticated Airflow user.
"""

from __future__ import annotations

from collections.abc import Iterator
from html import escape
from typing import Annotated, Any

from airflow.api_fastapi.core_api.security import requires_authenticated
from fastapi import Depends, FastAPI, Query
from fastapi.responses import HTMLResponse

from feature_store import FeatureStore, MaterializationJob
from feature_store.models import QuarantinedRow
from feature_store.monitoring import DeadlineMiss, GroupFreshness, deadline_misses, freshness
from featurepipe_airflow.connections import open_store

require_user = requires_authenticated()
"""Airflow's own check that the request carries a valid user (cookie or bearer token)."""


def _store() -> Iterator[FeatureStore]:
    with open_store(online=False) as store:
        yield store


StoreDep = Annotated[FeatureStore, Depends(_store)]


app = FastAPI(title="featurepipe", description="Feature store status for Airflow", dependencies=[Depends(require_user)])


@app.get("/api/freshness", response_model=list[GroupFreshness])
def api_freshness(store: StoreDep) -> list[GroupFreshness]:
    return freshness(store.conn)


@app.get("/api/jobs", response_model=list[MaterializationJob])
def api_jobs(store: StoreDep, limit: Annotated[int, Query(le=500)] = 50) -> list[MaterializationJob]:
    return store.list_jobs(limit=limit)


@app.get("/api/quarantine", response_model=list[QuarantinedRow])
def api_quarantine(store: StoreDep, limit: Annotated[int, Query(le=500)] = 50) -> list[QuarantinedRow]:
    return store.quarantined_rows(limit=limit)


@app.get("/api/deadline-misses", response_model=list[DeadlineMiss])
def api_deadline_misses(store: StoreDep) -> list[DeadlineMiss]:
    return deadline_misses(store.conn)


@app.get("/", response_class=HTMLResponse)
def page(store: StoreDep) -> str:
    groups = freshness(store.conn)
    recent = store.list_jobs(limit=50)
    quarantined = store.quarantined_rows(limit=25)
    misses = deadline_misses(store.conn, limit=10)
    return _PAGE.format(
        freshness=_table(
            ["tenant", "group", "entity", "last window end", "completed at", "age", "target", "status"],
            [
                [
                    g.tenant_id,
                    g.feature_group_id,
                    g.entity_type,
                    _time(g.last_window_end),
                    _time(g.last_completed_at),
                    _age(g.age_seconds),
                    _age(g.freshness_target_seconds),
                    _badge("stale" if g.stale else "fresh"),
                ]
                for g in groups
            ],
            "no active feature groups",
        ),
        jobs=_table(
            ["id", "tenant", "group", "type", "window", "status", "progress", "rows", "failed", "ms", "run", "error"],
            [
                [
                    str(j.id),
                    j.tenant_id,
                    j.feature_group_id,
                    j.job_type.value,
                    f"{_time(j.start_time)} → {_time(j.end_time)}",
                    _badge(j.status.value),
                    f"{j.progress:.0%}",
                    str(j.rows_processed),
                    str(j.rows_failed),
                    "" if j.duration_ms is None else str(j.duration_ms),
                    j.run_id or "",
                    j.error_message or "",
                ]
                for j in recent
            ],
            "no jobs yet",
            css_class="jobs",
        ),
        quarantine=_table(
            ["job", "tenant", "feature", "entity", "event time", "rule", "reason"],
            [
                [
                    str(q.job_id),
                    q.tenant_id,
                    f"{q.feature_group_id}:{q.feature_name}",
                    q.entity_id or "",
                    _time(q.event_time),
                    q.rule,
                    q.reason,
                ]
                for q in quarantined
            ],
            "no quarantined rows",
        ),
        misses=_table(
            ["detected", "run", "deadline", "message"],
            [[_time(m.detected_at), m.run_id, _time(m.deadline_time), m.message] for m in misses],
            "no missed deadlines",
        ),
    )


def _table(headers: list[str], rows: list[list[str]], empty: str, css_class: str = "") -> str:
    if not rows:
        return f'<p class="empty">{escape(empty)}</p>'
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{cell if cell.startswith('<span') else escape(cell)}</td>" for cell in row) + "</tr>"
        for row in rows
    )
    return f'<table class="{css_class}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _badge(status: str) -> str:
    return f'<span class="badge {escape(status)}">{escape(status)}</span>'


def _time(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value else ""


def _age(seconds: float | int | None) -> str:
    if seconds is None:
        return ""
    minutes = int(seconds // 60)
    return f"{minutes // 60}h {minutes % 60:02d}m"


_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Feature Store</title>
<meta http-equiv="refresh" content="30">
<style>
 body {{ font-family: system-ui, sans-serif; margin: 1.5rem; color: #1a202c; }}
 h1 {{ font-size: 1.4rem; }} h2 {{ font-size: 1.1rem; margin-top: 1.8rem; }}
 table {{ border-collapse: collapse; width: 100%; font-size: .85rem; }}
 th, td {{ text-align: left; padding: .3rem .5rem; border-bottom: 1px solid #e2e8f0; vertical-align: top; }}
 th {{ background: #f7fafc; }}
 td:last-child {{ white-space: pre-wrap; }}
 .badge {{ padding: .1rem .45rem; border-radius: .6rem; font-weight: 600; font-size: .75rem; }}
 .completed, .fresh {{ background: #c6f6d5; }} .failed, .stale {{ background: #fed7d7; }}
 .running {{ background: #fefcbf; }} .pending {{ background: #e2e8f0; }}
 .empty {{ color: #718096; }}
</style></head>
<body>
<h1>Feature Store</h1>
<h2>Freshness</h2>{freshness}
<h2>Recent materialization jobs</h2>{jobs}
<h2>Quarantined rows</h2>{quarantine}
<h2>Missed deadlines</h2>{misses}
</body></html>
"""
