"""Point-in-time reads: featurepipe's get_historical_features now vs before the wide offline layout vs raw SQL.

    python bench/historical.py --entities 100000 --hours 3 --rows 10000 --repeat 5

N entities x 5 float features are materialized for each of `--hours` consecutive hours (every hour
has a new value of every feature, stamped inside the hour), then `--rows` entity rows (a random
entity and a random time within those hours, a fixed seed) are joined point-in-time, along three
paths, each in its own child process, in alternating order:

- **featurepipe**: `FeatureStore.get_historical_features` of this checkout (offline rows, one wide
  row per entity and event time);
- **featurepipe before**: the same call in the checkout of `--before` (default: the commit before
  the wide layout, when every value was its own row), on its own database holding the same rows,
  materialized by that checkout: "today" in issue 9's terms;
- **raw SQL**: the least work on this checkout's offline table: the entity rows COPY'd into a temp
  table and one query taking, per entity row, the latest wide row at or before its time (every
  row of this data holds all five features, so one index probe per entity row answers it).

Only the read is timed (after connecting). Every path's answer is checked against the raw one.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import benchlib as bl
import psycopg

BEFORE = "ab6d97f^"
"""The last commit with the narrow offline layout (one row per value)."""

PATHS = ("featurepipe", "featurepipe-before", "raw")
PREFIX = "fpbenchpit"  # nothing goes online (offline-only jobs); the prefix keeps any key apart
LABELS = {
    "featurepipe": "featurepipe",
    "featurepipe-before": "featurepipe before the wide layout",
    "raw": "raw SQL",
}


def hours(count: int) -> list[bl.Window]:
    end = bl.Window.last_complete_hour().end
    return [bl.Window(end - timedelta(hours=count - i), end - timedelta(hours=count - i - 1)) for i in range(count)]


def prepare(database_url: str, entities: int, windows: list[bl.Window], library: Path | None) -> None:
    """Create the store, the source rows and materialize them, in a child importing the library at
    `library` (or this checkout's)."""
    env = dict(os.environ, PYTHONPATH=str(library)) if library is not None else None
    command = bl.project_child(
        "historical.py",
        "--child",
        "prepare",
        "--database-url",
        database_url,
        "--entities",
        str(entities),
        "--hours",
        str(len(windows)),
    )
    bl.run_child(command, env=env)


def prepare_here(database_url: str, entities: int, windows: list[bl.Window]) -> dict[str, Any]:
    from feature_store import FeatureStore, PipelineConfig, Settings

    settings = Settings(database_url=database_url, redis_url=bl.DEFAULT_REDIS_URL, redis_prefix=PREFIX)
    columns = ", ".join(f"{f} float8 NOT NULL" for f in bl.FEATURES)
    # The same values in every database: a hash of (entity, hour, feature), never random().
    values = ", ".join(f"(abs(hashtext(n || ':' || %(hour)s || ':{f}')) %% 100000) / 1000.0" for f in bl.FEATURES)
    with FeatureStore(settings=settings) as store:
        store.init()
        conn = store.conn
        conn.execute("DROP SCHEMA IF EXISTS bench CASCADE")
        conn.execute("CREATE SCHEMA bench")
        conn.execute(
            f"CREATE TABLE {bl.SOURCE_TABLE} (tenant_id text NOT NULL, entity_id text NOT NULL,"
            f" event_time timestamptz NOT NULL, {columns}, PRIMARY KEY (tenant_id, entity_id, event_time))"
        )
        conn.execute(f"ALTER TABLE {bl.SOURCE_TABLE} ENABLE ROW LEVEL SECURITY")
        conn.execute(
            f"CREATE POLICY featurepipe_tenant ON {bl.SOURCE_TABLE} FOR SELECT TO featurepipe_transform"
            " USING (tenant_id = (SELECT featurepipe_sandbox.current_tenant()))"
        )
        for hour, window in enumerate(windows):
            conn.execute(
                f"INSERT INTO {bl.SOURCE_TABLE} SELECT %(tenant)s, 'e' || n,"
                f" %(start)s + make_interval(secs => 1 + (n * 7 + %(hour)s) %% 3598), {values}"
                " FROM generate_series(1, %(entities)s) n",
                {"tenant": bl.TENANT, "start": window.start, "hour": hour, "entities": entities},
            )
        conn.execute(f"VACUUM ANALYZE {bl.SOURCE_TABLE}")
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "repo.yaml").write_text(bl.repo_yaml())
            store.apply(tmp)
        for window in windows:
            job = PipelineConfig(
                tenant_id=bl.TENANT,
                feature_group_id=bl.GROUP,
                start_time=window.start,
                end_time=window.end,
                write_online=False,
            )
            result = store.materialize(job)
            if result.status.value != "completed":
                raise SystemExit(f"materializing {window} failed: {result.errors}")
        conn.execute("VACUUM ANALYZE")
    return {"prepared": entities * len(windows)}


def entity_rows(entities: int, rows: int, windows: list[bl.Window]) -> list[tuple[str, datetime]]:
    rng = random.Random(9)
    start, span = windows[0].start, (windows[-1].end - windows[0].start).total_seconds()
    return [(f"e{rng.randint(1, entities)}", start + timedelta(seconds=rng.uniform(0, span))) for _ in range(rows)]


# -- the children ----------------------------------------------------------------------------------


def child_featurepipe(database_url: str, requested: list[tuple[str, datetime]]) -> dict[str, Any]:
    from feature_store import FeatureStore, Settings

    settings = Settings(database_url=database_url, redis_url=bl.DEFAULT_REDIS_URL, redis_prefix=PREFIX)
    with FeatureStore(settings=settings) as store:
        store.conn  # noqa: B018 - connect before the clock starts
        started = time.perf_counter()
        result = store.get_historical_features(bl.TENANT, requested, [f"{bl.GROUP}:{f}" for f in bl.FEATURES])
        seconds = time.perf_counter() - started
    values = [[row.values[f"{bl.GROUP}:{f}"] for f in bl.FEATURES] for row in result]
    return {"seconds": seconds, "values": values}


def child_raw(database_url: str, requested: list[tuple[str, datetime]]) -> dict[str, Any]:
    conn = psycopg.connect(database_url, autocommit=True)
    picks = ", ".join(f"(o.features ->> '{f}')::float8" for f in bl.FEATURES)
    started = time.perf_counter()
    with conn.transaction():
        conn.execute("CREATE TEMP TABLE rows (row_no int, entity_id text, ts timestamptz) ON COMMIT DROP")
        with conn.cursor().copy("COPY rows FROM STDIN") as copy:
            for i, (entity, ts) in enumerate(requested):
                copy.write_row((i, entity, ts))
        found = conn.execute(
            f"SELECT {picks} FROM rows r LEFT JOIN LATERAL (SELECT features FROM feature_store.offline_rows"
            " WHERE tenant_id = %s AND feature_group_id = %s AND entity_id = r.entity_id AND event_time <= r.ts"
            " ORDER BY event_time DESC LIMIT 1) o ON true ORDER BY r.row_no",
            (bl.TENANT, bl.GROUP),
        ).fetchall()
    seconds = time.perf_counter() - started
    conn.close()
    return {"seconds": seconds, "values": [list(r) for r in found]}


def run_child(args: argparse.Namespace) -> None:
    if args.child == "prepare":
        bl.emit(prepare_here(args.database_url, args.entities, hours(args.hours)))
        return
    lines = [line.split(" ") for line in args.rows_file.read_text().splitlines() if line]
    requested = [(entity, datetime.fromisoformat(ts)) for entity, ts in lines]
    child = child_raw if args.child == "raw" else child_featurepipe
    bl.emit(child(args.database_url, requested))


# -- the parent ------------------------------------------------------------------------------------


def database_url(base: str, suffix: str) -> str:
    return base.rsplit("/", 1)[0] + "/" + base.rsplit("/", 1)[1] + suffix


def checkout(rev: str) -> Path:
    """A work tree of `rev` (kept between runs in bench/.before-<commit>)."""
    commit = subprocess.run(["git", "rev-parse", rev], capture_output=True, text=True, check=True, cwd=bl.BENCH_DIR)
    path = bl.BENCH_DIR / f".before-{commit.stdout.strip()[:12]}"
    if not path.exists():
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(path), commit.stdout.strip()], check=True, cwd=bl.BENCH_DIR
        )
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entities", type=int, default=100_000)
    parser.add_argument("--hours", type=int, default=3)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--before", default=BEFORE, help="git revision of the 'before' library")
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/featurepipe_bench_pit")
    parser.add_argument("--results", type=Path, default=bl.RESULTS)
    parser.add_argument("--no-results", action="store_true", help="Print only; do not touch RESULTS.md.")
    parser.add_argument("--skip-prepare", action="store_true", help="Reuse the databases of the last run.")
    parser.add_argument("--child", choices=[*PATHS, "prepare"], help=argparse.SUPPRESS)
    parser.add_argument("--rows-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        run_child(args)
        return 0
    load_before = bl.load_average()
    windows = hours(args.hours)
    before_lib = checkout(args.before)
    urls = {
        "featurepipe": args.database_url,
        "raw": args.database_url,
        "featurepipe-before": database_url(args.database_url, "_before"),
    }
    if not args.skip_prepare:
        print(f"materializing {args.entities:,} entities x {len(bl.FEATURES)} features x {args.hours} hours, twice")
        prepare(urls["featurepipe"], args.entities, windows, None)
        prepare(urls["featurepipe-before"], args.entities, windows, before_lib)
    requested = entity_rows(args.entities, args.rows, windows)
    seconds: dict[str, list[float]] = {name: [] for name in PATHS}
    with tempfile.NamedTemporaryFile("w", suffix=".rows") as rows_file:
        rows_file.write("\n".join(f"{e} {ts.isoformat()}" for e, ts in requested))
        rows_file.flush()
        answers: dict[str, Any] = {}
        for r in range(args.repeat):
            for name in PATHS if r % 2 == 0 else reversed(PATHS):
                command = bl.project_child(
                    "historical.py", "--child", name, "--database-url", urls[name], "--rows-file", rows_file.name
                )
                env = dict(os.environ, PYTHONPATH=str(before_lib)) if name == "featurepipe-before" else None
                run = bl.run_child(command, env=env)
                seconds[name].append(run.result["seconds"])
                answers[name] = run.result["values"]
                print(f"  run {r + 1}/{args.repeat} {LABELS[name]:36s} {run.result['seconds']:.3f} s")
    for name in PATHS:
        if answers[name] != answers["raw"]:
            raise SystemExit(f"{LABELS[name]} answered differently from the raw SQL")
    text = report(args, seconds)
    print(text)
    if not args.no_results:
        block = (
            f"{bl.now_utc()}, {args.repeat} run(s) per path, {args.hours} hours of {args.entities:,} entities"
            f" materialized ({args.hours * args.entities:,} offline rows). Machine:"
            f" {bl.machine(args.database_url, bl.DEFAULT_REDIS_URL)}. Load average (1, 5, 15 min): {load_before}"
            f" before, {bl.load_average()} after.\n\n" + text
        )
        bl.write_section(args.results, "historical", INTRO, f"{args.rows:,} entity rows", block)
    return 0


def report(args: argparse.Namespace, seconds: dict[str, list[float]]) -> str:
    medians = {name: bl.median(values) for name, values in seconds.items()}
    lines = ["| path | wall, median (range) | entity rows/s |", "|---|---:|---:|"]
    for name in PATHS:
        lines.append(
            f"| {LABELS[name]} | {medians[name]:.3f} s ({min(seconds[name]):.3f}-{max(seconds[name]):.3f})"
            f" | {args.rows / medians[name]:,.0f} |"
        )
    lines += [
        "",
        "| ratio | of the median walls |",
        "|---|---:|",
        f"| featurepipe / featurepipe before | **{medians['featurepipe'] / medians['featurepipe-before']:.2f}** |",
        f"| featurepipe / raw SQL | **{medians['featurepipe'] / medians['raw']:.2f}** |",
    ]
    return "\n".join(lines)


INTRO = """\
## Point-in-time reads: featurepipe now vs before the wide layout vs raw SQL

`python bench/historical.py --entities N --hours H --rows R --repeat K` materializes H hours of N
entities x 5 float features (offline only), then joins R entity rows (a random entity, a random
time in those hours) point-in-time along three paths, each in its own child process: this
checkout's `get_historical_features`, the same call in the checkout of the commit before the wide
offline layout (issue 9's "today", on its own database with the same rows), and raw SQL (a COPY of
the entity rows and one LATERAL probe of the latest wide row per entity row). Only the read is
timed; every answer is checked against the raw one."""


if __name__ == "__main__":
    sys.exit(main())
