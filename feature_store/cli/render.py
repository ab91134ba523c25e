"""How the command line shows results: rich tables and JSON; nothing here talks to a store."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import click
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from feature_store.definitions.models import Status, TenantGroup
from feature_store.pipeline.models import JobStatus, PipelineResult
from feature_store.serving.models import OnlineFeatureRow

# Piped output (CI logs, `| less`) gets wide tables instead of rich's 80-column default.
_WIDTH = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 160
console = Console(width=_WIDTH)
err_console = Console(stderr=True, width=_WIDTH)


def emit_json(payload: Any) -> None:
    def default(value: Any) -> Any:
        if isinstance(value, BaseModel):
            return value.model_dump(mode="json")
        if isinstance(value, datetime):
            return value.isoformat()
        raise TypeError(f"cannot serialise {type(value).__name__}")

    click.echo(json.dumps(payload, default=default, indent=2))


def print_summary(summary: dict[str, Any]) -> None:
    jobs = summary["jobs"]
    by_status: dict[str, int] = {}
    for job in jobs:
        by_status[job.status.value] = by_status.get(job.status.value, 0) + 1
    console.rule("jobs")
    console.print(
        f"{len(jobs)} jobs: "
        + ", ".join(f"{n} {s}" for s, n in sorted(by_status.items()))
        + f"; {sum(j.rows_processed for j in jobs)} rows processed, {sum(j.rows_failed for j in jobs)} quarantined"
    )
    table = Table("tenant", "group", "jobs", "completed", "failed", "rows", "quarantined", "last window end")
    groups: dict[tuple[str, str], list[Any]] = {}
    for job in jobs:
        groups.setdefault((job.tenant_id, job.feature_group_id), []).append(job)
    for (tenant, group), items in sorted(groups.items()):
        table.add_row(
            tenant,
            group,
            str(len(items)),
            str(sum(j.status is JobStatus.COMPLETED for j in items)),
            str(sum(j.status is JobStatus.FAILED for j in items)),
            str(sum(j.rows_processed for j in items)),
            str(sum(j.rows_failed for j in items)),
            f"{max(j.end_time for j in items):%Y-%m-%d %H:%M}",
        )
    console.print(table)
    failed = [j for j in jobs if j.status is JobStatus.FAILED]
    for job in failed[:5]:
        console.print(f"[red]job {job.id} failed:[/] {job.error_message}", highlight=False)
    print_tenant_groups(summary["tenant_groups"])
    console.rule("quarantined rows by feature and rule")
    counts = Table("feature", "rule", "rows", "tenants", "for example")
    for c in summary["quarantine_by_rule"]:
        counts.add_row(f"{c.feature_group_id}:{c.feature_name}", c.rule, str(c.rows), str(c.tenants), c.example)
    console.print(counts if summary["quarantine_by_rule"] else "no quarantined rows")
    console.rule("quarantined rows (latest)")
    print_quarantine(summary["quarantined"])
    online_lookups = summary["online"]
    if online_lookups:
        console.rule(f"online lookups (tenant {online_lookups['tenant']})")
        for kind in ("user", "message"):
            rows: list[OnlineFeatureRow] = online_lookups[kind]
            if rows:
                print_online(rows, list(rows[0].features))


def print_tenant_groups(rows: Sequence[TenantGroup]) -> None:
    """Which groups each tenant has: shared or its own, switched off, overridden."""
    console.rule("feature groups per tenant")
    table = Table("tenant", "group", "scope", "enabled", "overrides")
    for row in rows:
        if row.status is not Status.ACTIVE:
            continue
        table.add_row(
            row.tenant_id,
            row.feature_group_id,
            row.scope,
            "yes" if row.enabled else "[red]disabled[/]",
            ", ".join(f"{k}={v}" for k, v in row.overrides.items()),
        )
    console.print(table)


def print_results(results: Sequence[PipelineResult]) -> None:
    table = Table("job", "tenant", "group", "status", "rows", "failed", "online", "ms")
    for r in results:
        table.add_row(
            str(r.job_id),
            r.tenant_id,
            r.feature_group_id,
            status_markup(r.status),
            str(r.rows_processed),
            str(r.rows_failed),
            str(r.rows_online),
            str(r.duration_ms),
        )
    console.print(table)
    features = Table("feature", "status", "rows", "failed", "error")
    for r in results:
        for f in r.features:
            features.add_row(
                f.feature, f.status.value, str(f.rows_processed), str(f.rows_failed), f.error_message or ""
            )
    console.print(features)


def print_quarantine(rows: Sequence[Any]) -> None:
    if not rows:
        console.print("no quarantined rows")
        return
    table = Table("job", "tenant", "feature", "entity", "rule", "reason")
    for q in rows:
        table.add_row(
            str(q.job_id),
            q.tenant_id,
            f"{q.feature_group_id}:{q.feature_name}",
            q.entity_id or "",
            q.rule,
            q.reason,
        )
    console.print(table)


def print_online(rows: Sequence[OnlineFeatureRow], features: list[str]) -> None:
    groups = {ref.split(":", 1)[0] for ref in features}
    if len(groups) == 1 and all(":" in ref for ref in features):
        # One group: its name as the title, short feature names as headers (they fit the terminal).
        table = Table("entity_id", *(ref.split(":", 1)[1] for ref in features), title=groups.pop())
    else:
        table = Table("entity_id", *features)
    for row in rows:
        cells = []
        for ref in features:
            value = row.features[ref]
            cells.append(
                show_value(value.value) if value.status.value == "present" else f"[dim]{value.status.value}[/]"
            )
        table.add_row(row.entity_id, *cells)
    console.print(table)


def show_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return "—" if value is None else str(value)


def status_markup(status: JobStatus) -> str:
    color = {"completed": "green", "failed": "red", "running": "yellow"}.get(status.value, "white")
    return f"[{color}]{status.value}[/]"
