"""`feature-store` command line: human output by default, `--json` for machines."""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import signal
import sys
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

import click
import pydantic
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

import featurepipe_demo as demo_module
from feature_store.cli.render import (
    console,
    emit_json,
    err_console,
    print_online,
    print_quarantine,
    print_results,
    print_summary,
    show_value,
    status_markup,
)
from feature_store.errors import EventError, FeatureStoreError, InvalidInputError
from feature_store.pipeline.models import JobStatus, JobType, PipelineConfig, PipelineResult
from feature_store.store import FeatureStore
from feature_store.stream.events import parse_event

F = TypeVar("F", bound=Callable[..., Any])

json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON instead of tables.")


def _handle_errors(func: F) -> F:
    """Print feature-store errors as one clear message and exit 1, instead of a stack trace."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except FeatureStoreError as exc:
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, markup=True, soft_wrap=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


def _to_time(value: str) -> datetime:
    """An ISO 8601 timestamp with a time zone; ValueError says what is wrong with `value`."""
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{value!r} is not an ISO 8601 timestamp") from None
    if parsed.tzinfo is None:
        raise ValueError(f"{value!r} has no time zone; add Z or +00:00")
    return parsed


def _parse_time(value: str, option: str) -> datetime:
    try:
        return _to_time(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=option) from None


# PipelineConfig fields as the options of `materialize` that set them, for error messages.
_OPTION_OF_FIELD = {
    "tenant_id": "--tenant",
    "feature_group_id": "--group",
    "start_time": "--start",
    "end_time": "--end",
    "mode": "--mode",
    "features": "--feature",
}


def _invalid_config(exc: pydantic.ValidationError) -> InvalidInputError:
    """One line naming each invalid value, instead of pydantic's multi-line dump."""
    problems = []
    for error in exc.errors(include_url=False):
        message = error["msg"].removeprefix("Value error, ")
        where = ".".join(str(part) for part in error["loc"])
        where = _OPTION_OF_FIELD.get(where.split(".")[0], where) if where else ""
        problems.append(f"{where}: {message}" if where else message)
    return InvalidInputError("; ".join(problems))


def _read_entities(entities_file: Any) -> list[tuple[str, datetime]]:
    """(entity_id, timestamp) rows of an entities CSV; InvalidInputError names the first bad line."""
    reader = csv.DictReader(entities_file)
    header = reader.fieldnames or []
    if "entity_id" not in header or "timestamp" not in header:
        raise InvalidInputError(
            f"--entities: the CSV needs a header line with the columns entity_id,timestamp, not {','.join(header)!r}"
        )
    rows = []
    for record in reader:
        where = f"--entities line {reader.line_num}"
        if None in record:
            raise InvalidInputError(f"{where}: more fields than the {len(header)} columns of the header")
        entity_id, timestamp = record["entity_id"], record["timestamp"]
        for column, value in (("entity_id", entity_id), ("timestamp", timestamp)):
            if value is None:
                raise InvalidInputError(f"{where}: no {column} (fewer fields than the {len(header)} of the header)")
            if not value.strip():
                raise InvalidInputError(f"{where}: {column} is empty")
        try:
            rows.append((entity_id, _to_time(timestamp.strip())))
        except ValueError as exc:
            raise InvalidInputError(f"{where}: timestamp {exc}") from None
    return rows


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """featurepipe feature store: batch SQL features into PostgreSQL (offline) and Redis (online).

    Connections come from FEATURE_STORE_DATABASE_URL and FEATURE_STORE_REDIS_URL.
    """


@main.command()
@json_option
@_handle_errors
def init(as_json: bool) -> None:
    """Create or migrate the feature_store schema (safe to run again)."""
    with FeatureStore.from_env() as store:
        applied = store.init()
    if as_json:
        emit_json({"applied": applied})
    else:
        console.print(f"applied {', '.join(applied)}" if applied else "schema is up to date")


@main.command()
@click.argument("path", type=click.Path(exists=False))
@json_option
@_handle_errors
def apply(path: str, as_json: bool) -> None:
    """Register tenants, feature groups and features from a YAML feature repo, all or nothing."""
    with FeatureStore.from_env() as store:
        report = store.apply(path)
    if as_json:
        emit_json(report.__dict__)
        return
    styles = {"created": "green", "updated": "yellow", "deactivated": "red"}
    console.print(
        f"scopes applied: {', '.join(report.scopes)}; groups missing from the repo are deactivated only in"
        " these scopes, every other scope is untouched"
    )
    for scope, changes in report.changes.items():
        console.print(f"{scope}:")
        for change in changes:
            verb, _, item = change.partition(" ")
            console.print(f"  [{styles[verb]}]{verb}[/] {escape(item)}")
    if not report.changed:
        console.print(f"no changes ({len(report.unchanged)} objects up to date)")


@main.command()
@click.option("--tenant", "tenant_id", required=True, help="Tenant id.")
@click.option("--group", "group_id", required=True, help="Feature group id.")
@click.option("--start", required=True, help="Window start, ISO 8601 with time zone (exclusive).")
@click.option("--end", required=True, help="Window end, ISO 8601 with time zone (inclusive).")
@click.option(
    "--mode",
    type=click.Choice([m.value for m in JobType]),
    default=JobType.INCREMENTAL.value,
    show_default=True,
    help="full recomputes every hour of the window as hourly runs would (keeping hourly history).",
)
@click.option("--feature", "features", multiple=True, help="Only these features (repeatable).")
@click.option("--no-online", is_flag=True, help="Do not write the online store.")
@click.option("--no-offline", is_flag=True, help="Do not write the offline store.")
@click.option(
    "--overwrite-online",
    metavar="REASON",
    help="A corrective rerun: replace online values even where they are newer; the reason is recorded on the job.",
)
@json_option
@_handle_errors
def materialize(
    tenant_id: str,
    group_id: str,
    start: str,
    end: str,
    mode: str,
    features: tuple[str, ...],
    no_online: bool,
    no_offline: bool,
    overwrite_online: str | None,
    as_json: bool,
) -> None:
    """Run one materialization job without Airflow; exits 1 when the job failed."""
    start_time, end_time = _parse_time(start, "--start"), _parse_time(end, "--end")
    try:
        config = PipelineConfig(
            tenant_id=tenant_id,
            feature_group_id=group_id,
            start_time=start_time,
            end_time=end_time,
            mode=JobType(mode),
            write_online=not no_online,
            write_offline=not no_offline,
            features=features or None,
            overwrite_online=overwrite_online,
        )
    except pydantic.ValidationError as exc:
        raise _invalid_config(exc) from None
    with FeatureStore.from_env() as store:
        result = store.materialize(config)
    if as_json:
        emit_json(result)
    else:
        print_results([result])
        for error in result.errors:
            err_console.print(f"[red]failed:[/] {error}", highlight=False)
    if not result.succeeded:
        sys.exit(1)


@main.command()
@click.option("--tenant", "tenant_id", help="Only this tenant.")
@click.option("--group", "group_id", help="Only this feature group.")
@click.option("--status", type=click.Choice([s.value for s in JobStatus]), help="Only jobs in this state.")
@click.option("--limit", type=int, default=20, show_default=True)
@json_option
@_handle_errors
def jobs(tenant_id: str | None, group_id: str | None, status: str | None, limit: int, as_json: bool) -> None:
    """List recent materialization jobs."""
    with FeatureStore.from_env() as store:
        rows = store.list_jobs(
            tenant_id=tenant_id, group_id=group_id, status=JobStatus(status) if status else None, limit=limit
        )
    if as_json:
        emit_json(rows)
        return
    table = Table("id", "tenant", "group", "type", "window", "status", "progress", "rows", "failed", "ms", "run")
    for job in rows:
        table.add_row(
            str(job.id),
            job.tenant_id,
            job.feature_group_id,
            job.job_type.value,
            f"{job.start_time:%Y-%m-%d %H:%M} → {job.end_time:%H:%M}",
            status_markup(job.status),
            f"{job.progress:.0%}",
            str(job.rows_processed),
            str(job.rows_failed),
            str(job.duration_ms if job.duration_ms is not None else ""),
            job.run_id or "",
        )
    console.print(table)


@main.command()
@click.option("--tenant", "tenant_id", help="Only this tenant.")
@click.option("--job", "job_id", type=int, help="Only this job.")
@click.option("--limit", type=int, default=20, show_default=True)
@json_option
@_handle_errors
def quarantine(tenant_id: str | None, job_id: int | None, limit: int, as_json: bool) -> None:
    """List rows rejected by validation rules, with the rule and the reason."""
    with FeatureStore.from_env() as store:
        rows = store.quarantined_rows(tenant_id=tenant_id, job_id=job_id, limit=limit)
    if as_json:
        emit_json(rows)
        return
    print_quarantine(rows)


@main.group()
def online() -> None:
    """Read the online store."""


@online.command("get")
@click.option("--tenant", "tenant_id", required=True)
@click.option("--entity-type", required=True, help="e.g. user, conversation, message.")
@click.option("--entity", "entity_ids", multiple=True, required=True, help="Entity id (repeatable).")
@click.option("--feature", "features", multiple=True, required=True, help="group:feature (repeatable).")
@json_option
@_handle_errors
def online_get(
    tenant_id: str, entity_type: str, entity_ids: tuple[str, ...], features: tuple[str, ...], as_json: bool
) -> None:
    """Latest feature values of entities, as served online (one Redis round trip)."""
    with FeatureStore.from_env() as store:
        rows = store.get_online_features(tenant_id, entity_type, list(entity_ids), list(features)).rows()
    if as_json:
        emit_json(rows)
    else:
        print_online(rows, list(features))


@online.command("reconcile")
@click.option("--tenant", "tenant_id", help="Only this tenant.")
@click.option("--group", "group_id", help="Only this feature group.")
@json_option
@_handle_errors
def online_reconcile(tenant_id: str | None, group_id: str | None, as_json: bool) -> None:
    """Restore online values from the offline store's latest valid values (after Redis lost data)."""
    with FeatureStore.from_env() as store:
        results = store.reconcile_online(tenant_id=tenant_id, group_id=group_id)
    if as_json:
        emit_json(results)
        return
    table = Table("tenant", "group", "entities", "values written")
    for r in results:
        table.add_row(r.tenant_id, r.feature_group_id, str(r.entities), str(r.values))
    console.print(table)


@main.command()
@click.option("--tenant", "tenant_id", required=True)
@click.option("--feature", "features", multiple=True, required=True, help="group:feature (repeatable).")
@click.option(
    "--entities",
    "entities_file",
    type=click.File("r"),
    required=True,
    help="CSV file (or - for stdin) with columns entity_id,timestamp.",
)
@json_option
@_handle_errors
def historical(tenant_id: str, features: tuple[str, ...], entities_file: Any, as_json: bool) -> None:
    """Point-in-time-correct feature values for (entity, timestamp) rows: never a value from the future."""
    entity_rows = _read_entities(entities_file)
    with FeatureStore.from_env() as store:
        rows = store.get_historical_features(tenant_id, entity_rows, list(features))
    if as_json:
        emit_json(rows)
        return
    table = Table("entity_id", "timestamp", *features)
    for row in rows:
        table.add_row(row.entity_id, row.timestamp.isoformat(), *(show_value(row.values[f]) for f in features))
    console.print(table)


@main.command()
@click.option("--hours", type=click.IntRange(1, 72), default=6, show_default=True, help="Hours of demo data.")
@click.option("--users", type=click.IntRange(1, 10_000), default=40, show_default=True, help="Users per tenant.")
@click.option(
    "--materialize/--no-materialize",
    default=True,
    show_default=True,
    help="Materialize through the library; --no-materialize only prepares data (e.g. for the Airflow DAG).",
)
@click.option("--summary-only", is_flag=True, help="Only print the summary of what is materialized.")
@click.option("--since", help="Summarise only jobs created at or after this ISO 8601 time.")
@json_option
@_handle_errors
def demo(hours: int, users: int, materialize: bool, summary_only: bool, since: str | None, as_json: bool) -> None:
    """Create demo data for 3 tenants, apply the demo feature repo, materialize it and summarise."""
    with FeatureStore.from_env() as store:
        payload: dict[str, Any] = {}
        if not summary_only:
            setup = demo_module.prepare(store, hours=hours, users_per_tenant=users)
            payload["source_rows"] = setup.source_rows
            payload["windows"] = [[w.start, w.end] for w in setup.windows]
            if not as_json:
                console.print(
                    f"demo sources: {', '.join(f'{n} {t}' for t, n in setup.source_rows.items())}"
                    f" over {hours} hours ({setup.windows[0].start:%Y-%m-%d %H:%M} → {setup.windows[-1].end:%H:%M} UTC)"
                )
                for change in setup.changes:
                    console.print(f"  {change}")
            if not materialize:
                if as_json:
                    emit_json(payload)
                return  # nothing materialized here: the caller (e.g. the Airflow DAG) does that
            payload["results"] = _demo_materialize(store, setup.windows, quiet=as_json)
        summary = _demo_summary(store, since=_parse_time(since, "--since") if since else None)
        payload.update(summary)
    if as_json:
        emit_json(payload)
        return
    print_summary(summary)


def _demo_materialize(store: FeatureStore, windows: list[Any], *, quiet: bool) -> list[PipelineResult]:
    total = len(windows) * sum(
        len([g for g in store.registry.tenant_groups(t.id, active_only=True, enabled_only=True) if g.batch_features])
        for t in store.registry.list_tenants(active_only=True)
    )
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        disable=quiet,
        transient=False,
    ) as progress:
        task = progress.add_task("materializing", total=total)
        return demo_module.materialize(
            store,
            windows,
            on_job=lambda _result: progress.advance(task),
            progress=lambda message: progress.update(task, description=message.ljust(48)[:48]),
        )


def _demo_summary(store: FeatureStore, *, since: datetime | None) -> dict[str, Any]:
    jobs = store.list_jobs(limit=500, created_after=since)
    quarantined = store.quarantined_rows(limit=8, since=since)
    by_rule = store.quarantine_summary(since=since)
    lookups: dict[str, Any] = {}
    for tenant in demo_module.DEMO_TENANTS[:1]:
        entities = demo_module.sample_entities(store.conn, tenant)
        lookups = {
            "tenant": tenant,
            "user": store.get_online_features(
                tenant,
                "user",
                entities["user"],
                [
                    f"user_engagement:{f}"
                    for f in (
                        "message_count",
                        "avg_message_length",
                        "conversation_count",
                        "avg_rating",
                        "message_count_24h",
                        "avg_rating_7d",
                    )
                ],
            ).rows(),
            "message": store.get_online_features(
                tenant,
                "message",
                entities["message"],
                [f"message_features:{f}" for f in ("length", "token_count", "intent", "is_question", "topic")],
            ).rows(),
        }
    return {
        "jobs": jobs,
        "quarantined": quarantined,
        "quarantine_by_rule": by_rule,
        "online": lookups,
        "tenant_groups": store.tenant_groups(),
    }


@main.group()
def events() -> None:
    """Publish events and consume them into stream features."""


PUBLISH_CHUNK = 1000
"""Lines validated and published together (stdin may be endless)."""


@events.command("publish")
@click.argument("source", type=click.File("r"), default="-")
@json_option
@_handle_errors
def events_publish(source: Any, as_json: bool) -> None:
    """Publish JSON-lines events from SOURCE (a file, or - for stdin).

    Valid lines are published in order; each invalid line is reported with its number and reason
    (exit 1), and published nothing.
    """
    published = 0
    problems: list[tuple[int, str]] = []
    with FeatureStore.from_env() as store:
        chunk: list[tuple[int, str]] = []

        def flush() -> None:
            nonlocal published
            good: list[Any] = []
            for line_no, line in chunk:
                try:
                    good.append(parse_event(line))
                except EventError as exc:
                    problems.append((line_no, str(exc)))
            if good:
                published += len(store.publish_events(good))
            chunk.clear()

        for line_no, line in enumerate(source, start=1):
            if line.strip():
                chunk.append((line_no, line))
            if len(chunk) >= PUBLISH_CHUNK:
                flush()
        flush()
    if as_json:
        emit_json({"published": published, "invalid": [{"line": n, "reason": r} for n, r in problems]})
    else:
        console.print(f"published {published} event(s)")
        for line_no, reason in problems:
            err_console.print(f"[red]line {line_no}:[/] {escape(reason)}", highlight=False)
    if problems:
        sys.exit(1)


DEMO_LIVE_FEATURES = [
    "user_realtime:conversation_count",
    "user_realtime:feedback_tendency",
    "user_live_scores:engagement_score",
]


@events.command("replay-demo")
@click.option("--tenant", "tenant_id", default="acme", show_default=True)
@click.option("--steps", type=click.IntRange(1, 20), default=4, show_default=True, help="Snapshots while replaying.")
@json_option
@_handle_errors
def events_replay_demo(tenant_id: str, steps: int, as_json: bool) -> None:
    """Replay the demo's event stream (derived from its source rows) and show the stream features move.

    Publishes the tenant's events in `steps` chunks; after each, a consumer applies them and the busiest
    users' live features are printed (conversation count, feedback EWMA, on-demand engagement score).
    """
    from featurepipe_demo.events import events_from_sources

    snapshots: list[dict[str, Any]] = []
    with FeatureStore.from_env() as store:
        found = events_from_sources(store.conn, tenants=[tenant_id])
        users = demo_module.sample_entities(store.conn, tenant_id)["user"]
        valid: list[Any] = []
        for raw in found:
            try:
                valid.append(parse_event(raw))
            except EventError:
                # What a buggy producer would send anyway: it reaches the stream and is dead-lettered there.
                store.publish_raw_events([json.dumps(raw)])
        size = max(1, -(-len(valid) // steps))
        consumer = store.event_consumer(consumer_id="demo-replay")
        applied = duplicates = 0
        for step in range(steps):
            chunk = valid[step * size : (step + 1) * size]
            if chunk:
                store.publish_events(chunk)
            stats = consumer.run(max_idle_s=0.2)
            applied, duplicates = applied + stats.applied, duplicates + stats.duplicates
            read = store.get_online_features(tenant_id, "user", users, DEMO_LIVE_FEATURES)
            snapshots.append(
                {
                    "published": min(len(valid), (step + 1) * size),
                    "until": chunk[-1].timestamp.isoformat() if chunk else None,
                    "users": {u: {f: read.values(f)[i] for f in DEMO_LIVE_FEATURES} for i, u in enumerate(users)},
                }
            )
        dead = store.dead_letters(limit=1000)
    payload = {
        "tenant": tenant_id,
        "events": len(found),
        "applied": applied,
        "duplicates": duplicates,
        "snapshots": snapshots,
        "dead_lettered": len(dead),
    }
    if as_json:
        emit_json(payload)
        return
    console.print(f"replaying {len(found)} events of tenant {tenant_id} (from its demo source rows)")
    table = Table("published", "up to", "user", *(f.split(":")[1] for f in DEMO_LIVE_FEATURES))
    for snap in snapshots:
        for user, values in snap["users"].items():
            table.add_row(
                str(snap["published"]),
                (snap["until"] or "")[:19],
                user,
                *(show_value(values[f]) for f in DEMO_LIVE_FEATURES),
            )
    console.print(table)
    if duplicates:
        # Event ids come from the source rows: a rerun over the same rows replays events already applied.
        console.print(
            f"{duplicates} events had been applied before (same event ids) and changed nothing: each event applies once"
        )
    reasons: dict[str, int] = {}
    for d in dead:
        reasons[d.reason] = reasons.get(d.reason, 0) + 1
    for reason, n in sorted(reasons.items(), key=lambda x: -x[1]):
        console.print(f"dead-lettered {n}: {escape(reason)}")


@events.command("consume")
@click.option(
    "--max-idle", type=float, help="Stop after this many seconds without events (default: run until stopped)."
)
@click.option("--batch-size", type=click.IntRange(1, 100_000), default=2000, show_default=True)
@click.option("--consumer-id", help="Name in the consumer group (default: host-pid-random).")
@json_option
@_handle_errors
def events_consume(max_idle: float | None, batch_size: int, consumer_id: str | None, as_json: bool) -> None:
    """Apply published events to stream features, sharing the partitions with any other consumers.

    SIGTERM or Ctrl-C stops it cleanly: it finishes its batch and hands its partitions over at once.
    """
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    with FeatureStore.from_env() as store:
        consumer = store.event_consumer(consumer_id=consumer_id, batch_size=batch_size)
        if not as_json:
            err_console.print(f"consumer {consumer.consumer_id} started")
        stats = consumer.run(stop=stopping.is_set, max_idle_s=max_idle)
    if as_json:
        emit_json(dataclasses.asdict(stats))
    else:
        console.print(
            f"read {stats.read}, applied {stats.applied}, duplicates {stats.duplicates},"
            f" dead-lettered {stats.dead_lettered}, claimed from others {stats.claimed}"
        )


@events.command("dead-letters")
@click.option("--limit", type=int, default=20, show_default=True)
@json_option
@_handle_errors
def events_dead_letters(limit: int, as_json: bool) -> None:
    """Events consumers could not apply, with the reason."""
    with FeatureStore.from_env() as store:
        found = store.dead_letters(limit=limit)
    if as_json:
        emit_json([dataclasses.asdict(d) for d in found])
        return
    table = Table("partition", "entry", "reason", "event")
    for d in found:
        table.add_row(str(d.partition), d.entry_id, escape(d.reason), escape(d.event[:80]))
    console.print(table)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0 for all).")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True, help="Server processes.")
@click.option("--access-log/--no-access-log", default=False, show_default=True, help="Log every request.")
@_handle_errors
def serve(host: str, port: int, workers: int, access_log: bool) -> None:
    """Run the HTTP feature server: POST /features/online, POST /events, GET /health, docs at /docs.

    Every request needs a tenant's API key (`feature-store api-keys create --tenant T`) in X-API-Key.
    """
    import uvicorn

    with FeatureStore.from_env() as store:
        store.registry.list_tenants()  # fail here, with the fix, when PostgreSQL or the schema is missing
    uvicorn.run(
        "feature_store.serving.http:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        access_log=access_log,
        log_level="info",
    )


@main.group("api-keys")
def api_keys() -> None:
    """Per-tenant API keys of the HTTP feature server (stored hashed)."""


@api_keys.command("create")
@click.option("--tenant", "tenant_id", required=True)
@click.option("--name", default="", help="What the key is for (shown by list).")
@json_option
@_handle_errors
def api_keys_create(tenant_id: str, name: str, as_json: bool) -> None:
    """Create a key for a tenant; the key is printed once and cannot be shown again."""
    with FeatureStore.from_env() as store:
        record, key = store.create_api_key(tenant_id, name=name)
    if as_json:
        emit_json({"id": record.id, "tenant_id": record.tenant_id, "name": record.name, "key": key})
        return
    console.print(f"API key {record.id} for tenant {tenant_id} (store it now, it is not shown again):")
    click.echo(key)


@api_keys.command("list")
@click.option("--tenant", "tenant_id", help="Only this tenant's keys.")
@json_option
@_handle_errors
def api_keys_list(tenant_id: str | None, as_json: bool) -> None:
    with FeatureStore.from_env() as store:
        keys = store.list_api_keys(tenant_id=tenant_id)
    if as_json:
        emit_json(keys)
        return
    table = Table("id", "tenant", "name", "key starts", "created", "revoked")
    for k in keys:
        table.add_row(
            str(k.id),
            k.tenant_id,
            escape(k.name),
            k.key_prefix,
            f"{k.created_at:%Y-%m-%d %H:%M}",
            f"{k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "",
        )
    console.print(table)


@api_keys.command("revoke")
@click.argument("key_id", type=int)
@_handle_errors
def api_keys_revoke(key_id: int) -> None:
    """Revoke a key (servers refuse it within API_KEY_CACHE_SECONDS)."""
    with FeatureStore.from_env() as store:
        store.revoke_api_key(key_id)
    console.print(f"revoked API key {key_id}")


if __name__ == "__main__":
    main()
