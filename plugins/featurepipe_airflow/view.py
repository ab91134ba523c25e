"""The *Feature Store* view in the Airflow UI: groups per tenant (shared or owned), freshness, jobs, quarantine, misses.

A FastAPI app mounted by the plugin under /featurepipe. `/` is a server-rendered page (shown in
an iframe in Airflow's navigation) from templates/feature_store.html; `/api/*` return the same data
as JSON. Every route requires an authenticated Airflow user; `?tenant=` narrows every section to one tenant.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Annotated

from airflow.api_fastapi.core_api.security import requires_authenticated
from fastapi import Depends, FastAPI, HTTPException, Query
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from feature_store import FeatureStore, MaterializationJob
from feature_store.definitions.models import TenantGroup
from feature_store.errors import NotFoundError
from feature_store.monitoring.deadlines import DeadlineMiss
from feature_store.monitoring.freshness import GroupFreshness
from feature_store.pipeline.models import QuarantinedRow
from featurepipe_airflow.hooks import open_store

require_user = requires_authenticated()
"""Airflow's own check that the request carries a valid user (cookie or bearer token)."""


def _store() -> Iterator[FeatureStore]:
    with open_store() as store:
        try:
            yield store
        except NotFoundError as exc:  # e.g. ?tenant= of a tenant that is not registered
            raise HTTPException(status_code=404, detail=str(exc)) from exc


StoreDep = Annotated[FeatureStore, Depends(_store)]
TenantFilter = Annotated[str | None, Query(description="Only this tenant's groups, jobs and rows.")]


app = FastAPI(title="featurepipe", description="Feature store status for Airflow", dependencies=[Depends(require_user)])


@app.get("/api/groups", response_model=list[TenantGroup])
def api_groups(store: StoreDep, tenant: TenantFilter = None) -> list[TenantGroup]:
    return store.tenant_groups(tenant)


@app.get("/api/freshness", response_model=list[GroupFreshness])
def api_freshness(store: StoreDep, tenant: TenantFilter = None) -> list[GroupFreshness]:
    return store.freshness(tenant_id=tenant)


@app.get("/api/jobs", response_model=list[MaterializationJob])
def api_jobs(
    store: StoreDep, tenant: TenantFilter = None, limit: Annotated[int, Query(le=500)] = 50
) -> list[MaterializationJob]:
    return store.list_jobs(limit=limit, tenant_id=tenant)


@app.get("/api/quarantine", response_model=list[QuarantinedRow])
def api_quarantine(
    store: StoreDep, tenant: TenantFilter = None, limit: Annotated[int, Query(le=500)] = 50
) -> list[QuarantinedRow]:
    return store.quarantined_rows(limit=limit, tenant_id=tenant)


@app.get("/api/deadline-misses", response_model=list[DeadlineMiss])
def api_deadline_misses(store: StoreDep) -> list[DeadlineMiss]:
    return store.deadline_misses()


@app.get("/", response_class=HTMLResponse)
def page(store: StoreDep, tenant: TenantFilter = None) -> str:
    """Plain models go to the template, which lays them out and escapes every value; no HTML is built here."""
    return _templates.get_template("feature_store.html").render(
        tenant=tenant,
        tenants=[t.id for t in store.registry.list_tenants()],
        scopes=store.tenant_groups(tenant),
        groups=store.freshness(tenant_id=tenant),
        jobs=store.list_jobs(limit=50, tenant_id=tenant),
        quarantined=store.quarantined_rows(limit=25, tenant_id=tenant),
        quarantine_counts=store.quarantine_summary(tenant_id=tenant),
        misses=store.deadline_misses(limit=10),
    )


# Filters of the template (`|time`, `|age`, `|percent`): they return plain text, which is escaped like any value.


def _time(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value else ""


def _age(seconds: float | None) -> str:
    if seconds is None:
        return ""
    minutes = int(seconds // 60)
    return f"{minutes // 60}h {minutes % 60:02d}m"


def _percent(fraction: float) -> str:
    return f"{fraction:.0%}"


def _blank_none(value: object) -> object:
    """Jinja prints None as 'None'; the page shows an empty cell for a missing value instead."""
    return "" if value is None else value


_templates = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    # Every value on the page comes from the database (entity ids, reasons, error messages), so
    # escape everything, whatever the template file is called; nothing is marked safe in Python.
    autoescape=True,
    finalize=_blank_none,
    keep_trailing_newline=True,
    undefined=StrictUndefined,
)
_templates.filters.update(time=_time, age=_age, percent=_percent)
