"""Scoped materialization requests: an application emits an asset event, the DAG runs for just that scope.

The DAG is scheduled hourly *or* on the asset `feature_materialization_request`. An application asks
for a run by creating an event of that asset (`POST /api/v2/assets/events` with the asset's id, or an
asset watcher) whose `extra` says what to materialize:

    {"tenant_id": "acme", "feature_group_ids": ["user_engagement"],
     "start": "2026-11-25T09:00:00Z", "end": "2026-11-25T10:00:00Z", "mode": "incremental"}

`tenant_id` (or `tenant_ids`) is required; groups, window and mode are optional (all groups, the last
complete hour, incremental). Several events queued into one run are merged: their tenants and groups
together (all groups if one of them names none), and the span of their windows, recomputed hour by
hour (`full`) when they differ. Keys Airflow adds to `extra` itself are ignored.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from airflow.sdk import Asset
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

REQUEST_ASSET = Asset(name="feature_materialization_request", uri="featurepipe://feature_materialization_request")
"""The asset whose events ask `feature_materialization` for a scoped run."""


class MaterializationRequest(BaseModel):
    """What one asset event's `extra` asks for."""

    model_config = ConfigDict(extra="ignore")

    tenant_id: str | None = None
    tenant_ids: list[str] = Field(default_factory=list)
    feature_group_ids: list[str] = Field(default_factory=list)
    start: str | None = None
    end: str | None = None
    mode: Literal["incremental", "full"] | None = None

    @model_validator(mode="after")
    def _needs_a_tenant(self) -> MaterializationRequest:
        if not self.tenant_id and not self.tenant_ids:
            raise ValueError("a materialization request names its tenant_id (or tenant_ids)")
        if bool(self.start) != bool(self.end):
            raise ValueError("start and end must be given together (ISO 8601 with time zone)")
        return self

    @property
    def tenants(self) -> list[str]:
        return sorted({*self.tenant_ids, *([self.tenant_id] if self.tenant_id else [])})


def requests_of(context: Any) -> list[MaterializationRequest]:
    """The requests of the asset events that triggered this run (none for scheduled, manual or backfill runs)."""
    events = context.get("triggering_asset_events")
    if not events or REQUEST_ASSET not in events:
        return []
    found = []
    for n, event in enumerate(events[REQUEST_ASSET], start=1):
        try:
            found.append(MaterializationRequest.model_validate(dict(event.extra or {})))
        except ValidationError as exc:
            problems = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
            raise ValueError(f"asset event {n} of {REQUEST_ASSET.name} (extra {event.extra}): {problems}") from None
    return found


def _time(value: str) -> datetime:
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError(f"{value!r} has no time zone; add Z or +00:00")
    return parsed


def scoped_params(params: dict[str, Any], requests: list[MaterializationRequest]) -> dict[str, Any]:
    """The run's params narrowed to what the requests ask for (unchanged when there are none)."""
    if not requests:
        return params
    scoped = dict(params)
    scoped["tenant_ids"] = sorted({t for r in requests for t in r.tenants})
    groups = [r.feature_group_ids for r in requests]
    scoped["feature_group_ids"] = [] if any(not g for g in groups) else sorted({x for g in groups for x in g})
    windows = {(_time(r.start), _time(r.end)) for r in requests if r.start and r.end}
    modes = {r.mode for r in requests if r.mode}
    if windows:
        scoped["start"] = min(s for s, _ in windows).isoformat()
        scoped["end"] = max(e for _, e in windows).isoformat()
    if len(windows) > 1 or len(modes) > 1:
        scoped["mode"] = "full"
    elif modes:
        scoped["mode"] = modes.pop()
    return scoped
