"""Demo: realistic source data for a multi-tenant chat platform, a demo feature repo, and a summary."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from importlib import resources
from pathlib import Path

import psycopg

from feature_store.pipeline.models import JobType, PipelineConfig, PipelineResult
from feature_store.store import FeatureStore
from feature_store.windows import TimeWindow

DEMO_TENANTS = ("acme", "globex", "initech")


def demo_repo_path() -> Path:
    """The platform's repo: tenants, sources and the shared groups."""
    return Path(str(resources.files("featurepipe_demo").joinpath("repo")))


def demo_tenant_repo_paths() -> list[Path]:
    """One repo per tenant that has one (Acme's own group; Globex's settings of shared groups)."""
    root = Path(str(resources.files("featurepipe_demo").joinpath("tenants")))
    return sorted(p for p in root.iterdir() if p.is_dir())


def demo_windows(hours: int, *, now: datetime | None = None) -> list[TimeWindow]:
    """The last `hours` complete hours, oldest first."""
    end = TimeWindow.last_complete_hour(now).end
    return [
        TimeWindow(start=end - timedelta(hours=h + 1), end=end - timedelta(hours=h)) for h in reversed(range(hours))
    ]


def create_sources(conn: psycopg.Connection) -> None:
    script = resources.files("featurepipe_demo").joinpath("sources.sql").read_text(encoding="utf-8")
    with conn.transaction():
        conn.execute(script.encode())


def generate_data(
    conn: psycopg.Connection,
    *,
    start: datetime,
    end: datetime,
    users_per_tenant: int = 40,
    seed: float = 0.42,
) -> dict[str, int]:
    """Replace the demo source rows with fresh ones in (start, end]; returns row counts per table."""
    script = resources.files("featurepipe_demo").joinpath("data.sql").read_text(encoding="utf-8")
    params = {"start": start, "end": end, "users": users_per_tenant, "seed": seed}
    with conn.transaction():
        for statement in _statements(script):
            conn.execute(statement, {k: v for k, v in params.items() if f"%({k})s" in statement})
    counts = {}
    for table in ("tenants", "users", "conversations", "messages", "feedback"):
        row = conn.execute(f"SELECT count(*) FROM app.{table}").fetchone()
        counts[table] = int(row[0]) if row else 0
    return counts


def _statements(script: str) -> list[str]:
    without_comments = re.sub(r"--[^\n]*", "", script)
    return [s.strip() for s in without_comments.split(";") if s.strip()]


@dataclass
class DemoSetup:
    windows: list[TimeWindow]
    source_rows: dict[str, int]
    changes: list[str]


def prepare(store: FeatureStore, *, hours: int = 6, users_per_tenant: int = 40) -> DemoSetup:
    """Initialise the schema, (re)create the demo sources and data, and apply the demo repo."""
    store.init()
    windows = demo_windows(hours)
    create_sources(store.conn)
    counts = generate_data(store.conn, start=windows[0].start, end=windows[-1].end, users_per_tenant=users_per_tenant)
    changes = []
    # The platform's repo first (it registers the tenants), then each tenant's: each changes only its scope.
    for path in (demo_repo_path(), *demo_tenant_repo_paths()):
        report = store.apply(path)
        changes += [f"created {x}" for x in report.created] + [f"updated {x}" for x in report.updated]
    return DemoSetup(windows=windows, source_rows=counts, changes=changes)


def materialize(
    store: FeatureStore,
    windows: list[TimeWindow],
    *,
    on_job: Callable[[PipelineResult], None] | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[PipelineResult]:
    """Materialize every window for every active tenant x its groups, through the library (no Airflow).

    A tenant's groups are its own and the shared ones it did not switch off.
    """
    tenants = store.registry.list_tenants(active_only=True)
    groups = {t.id: store.registry.tenant_groups(t.id, active_only=True, enabled_only=True) for t in tenants}
    results = []
    for window in windows:
        for tenant in tenants:
            for group in groups[tenant.id]:
                result = store.materialize(
                    PipelineConfig(
                        tenant_id=tenant.id,
                        feature_group_id=group.id,
                        start_time=window.start,
                        end_time=window.end,
                        mode=JobType.INCREMENTAL,
                    ),
                    progress=progress,
                )
                results.append(result)
                if on_job:
                    on_job(result)
    return results


def sample_entities(conn: psycopg.Connection, tenant_id: str, limit: int = 3) -> dict[str, list[str]]:
    """A few of a tenant's busiest users, conversations and latest messages, for sample lookups."""
    users = conn.execute(
        "SELECT user_id FROM app.messages WHERE tenant_id = %s GROUP BY user_id"
        " ORDER BY count(*) DESC, user_id LIMIT %s",
        (tenant_id, limit),
    ).fetchall()
    conversations = conn.execute(
        "SELECT conversation_id FROM app.messages WHERE tenant_id = %s GROUP BY conversation_id"
        " ORDER BY count(*) DESC, conversation_id LIMIT %s",
        (tenant_id, limit),
    ).fetchall()
    messages = conn.execute(
        "SELECT id FROM app.messages WHERE tenant_id = %s AND role = 'user' ORDER BY created_at DESC, id LIMIT %s",
        (tenant_id, limit),
    ).fetchall()
    return {
        "user": [r[0] for r in users],
        "conversation": [r[0] for r in conversations],
        "message": [r[0] for r in messages],
    }


def utcnow() -> datetime:
    return datetime.now(timezone.utc)
