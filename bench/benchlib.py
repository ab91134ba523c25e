"""What bench/materialize.py and bench/online_reads.py share: the source table, cleanup, child processes, RESULTS.md.

The source is one table of N entities x 5 float features, all in one hour, for one tenant, tenant-isolated
the way featurepipe requires (row-level security with the `featurepipe_tenant` policy); featurepipe,
the raw paths and Feast all read these same rows.
"""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
import redis
from psycopg import sql

from feature_store import FeatureStore, Settings

BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "RESULTS.md"

FEATURES = ("f1", "f2", "f3", "f4", "f5")
TENANT = "bench"
GROUP = "bench_group"
GROUP_SQL = "bench_group_sql"  # the same features, by one SQL of the group's
ENTITY_TYPE = "entity"
TTL_SECONDS = 86_400
SOURCE_TABLE = "bench.entity_stats"
RAW_OFFLINE_TABLE = "bench.raw_offline"
FP_PREFIX = "fpbench"  # featurepipe's online keys: fpbench:{tenant}:{group}:{entity}
RAW_PREFIX = "fpbenchraw"  # the raw path's hashes: fpbenchraw:{tenant}:{group}:{entity}
FEAST_PROJECT = "fpbench_feast"  # Feast's keys end with the project name
RAW_BATCH = 10_000

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/featurepipe_bench"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


_WINDOW_FILTER = "s.tenant_id = %(tenant_id)s AND s.event_time > %(start_time)s AND s.event_time <= %(end_time)s"


def repo_yaml() -> str:
    """The featurepipe repo: 5 float64 features read from the source table for the window, twice: in
    GROUP each feature by a SQL of its own, in GROUP_SQL all of them by one SQL of the group's."""

    def features(own_sql: bool) -> str:
        return "".join(
            f"""      - name: {f}
        value_type: float64
        validation: {{not_null: true, min: 0}}
"""
            + (
                f"""        transformation_sql: |
          SELECT s.entity_id, s.event_time, s.{f} AS value FROM {SOURCE_TABLE} s WHERE {_WINDOW_FILTER}
"""
                if own_sql
                else ""
            )
            for f in FEATURES
        )

    return f"""\
source_schemas: [bench]
tenants: [{{id: {TENANT}, name: Benchmark}}]
feature_groups:
  - id: {GROUP}
    entity_type: {ENTITY_TYPE}
    ttl_seconds: {TTL_SECONDS}
    features:
{features(own_sql=True)}
  - id: {GROUP_SQL}
    entity_type: {ENTITY_TYPE}
    ttl_seconds: {TTL_SECONDS}
    transformation_sql: |
      SELECT s.entity_id, s.event_time, {", ".join("s." + f for f in FEATURES)} FROM {SOURCE_TABLE} s
      WHERE {_WINDOW_FILTER}
    features:
{features(own_sql=False)}"""


@dataclass(frozen=True)
class Window:
    start: datetime
    end: datetime

    @classmethod
    def last_complete_hour(cls) -> Window:
        """A recent hour, so that Feast's TTL (checked against event time on reads) and featurepipe's agree."""
        end = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
        return cls(end - timedelta(hours=1), end)

    @classmethod
    def ending(cls, end: str) -> Window:
        at = datetime.fromisoformat(end)
        return cls(at - timedelta(hours=1), at)


def settings(database_url: str, redis_url: str) -> Settings:
    return Settings(database_url=database_url, redis_url=redis_url, redis_prefix=FP_PREFIX)


def prepare(config: Settings, entities: int, window: Window) -> None:
    """Create the feature store schema, the source table (N rows inside `window`) and the raw offline table; apply."""
    with FeatureStore(settings=config) as store:
        store.init()  # creates the database, the schema and the featurepipe_transform role
        conn = store.conn
        conn.execute("DROP SCHEMA IF EXISTS bench CASCADE")
        conn.execute("CREATE SCHEMA bench")
        columns = ", ".join(f"{f} double precision NOT NULL" for f in FEATURES)
        conn.execute(
            f"CREATE TABLE {SOURCE_TABLE} (tenant_id text NOT NULL, entity_id text NOT NULL,"
            f" event_time timestamptz NOT NULL, {columns}, PRIMARY KEY (tenant_id, entity_id, event_time))"
        )
        # Tenant-isolated, as featurepipe's sandbox requires; superusers (the raw paths, Feast) bypass RLS.
        conn.execute(f"ALTER TABLE {SOURCE_TABLE} ENABLE ROW LEVEL SECURITY")
        conn.execute(
            f"CREATE POLICY featurepipe_tenant ON {SOURCE_TABLE} FOR SELECT TO featurepipe_transform"
            " USING (tenant_id = (SELECT featurepipe_sandbox.current_tenant()))"
        )
        # Event times spread over the hour, strictly inside it (featurepipe's window is (start, end],
        # Feast's BETWEEN start AND end: both take every row).
        values = ", ".join(f"round((random() * {i + 1} * 100)::numeric, 3)::float8" for i in range(len(FEATURES)))
        conn.execute(
            f"INSERT INTO {SOURCE_TABLE} SELECT %s, 'e' || n, %s + make_interval(secs => 1 + n %% 3598), {values}"
            " FROM generate_series(1, %s) n",
            (TENANT, window.start, entities),
        )
        conn.execute(
            f"CREATE TABLE {RAW_OFFLINE_TABLE} (tenant_id text NOT NULL, entity_id text NOT NULL,"
            f" event_time timestamptz NOT NULL, {columns}, PRIMARY KEY (tenant_id, entity_id, event_time))"
        )
        conn.execute(f"VACUUM ANALYZE {SOURCE_TABLE}")
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "repo.yaml").write_text(repo_yaml())
            store.apply(tmp)


def offline_value_tables(conn: psycopg.Connection) -> list[str]:
    """featurepipe's offline tables that hold feature values (not registry, jobs or bookkeeping).

    Kept in one place so a redesign of the offline store only needs this changed: today that is
    `feature_store.feature_values` (and `quarantined_rows`, which the benchmark never fills); any
    table of the `feature_store` schema with an `entity_id` column counts, partitioned parents once.
    """
    rows = conn.execute(
        "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = 'feature_store' AND c.relkind IN ('r', 'p') AND NOT c.relispartition"
        " AND EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'entity_id'"
        " AND NOT a.attisdropped) ORDER BY 1"
    ).fetchall()
    return [str(r[0]) for r in rows]


def reset(config: Settings) -> None:
    """Empty every offline copy and every online key the benchmark paths write, and checkpoint."""
    with psycopg.connect(config.database_url, autocommit=True) as conn:
        tables = [*offline_value_tables(conn), RAW_OFFLINE_TABLE]
        conn.execute(sql.SQL("TRUNCATE {}").format(sql.SQL(", ").join(sql.SQL(t) for t in tables)))
        conn.execute("CHECKPOINT")  # the next path does not pay for this one's dirty pages
    client = redis.Redis.from_url(config.redis_url)
    for pattern in (f"{FP_PREFIX}:*", f"{RAW_PREFIX}:*", f"*{FEAST_PROJECT}"):
        unlink_matching(client, pattern)
    client.close()


def unlink_matching(client: redis.Redis, pattern: str) -> int:
    removed = 0
    batch: list[bytes] = []
    for key in client.scan_iter(match=pattern, count=10_000):
        batch.append(key)
        if len(batch) >= 10_000:
            removed += int(client.unlink(*batch))
            batch.clear()
    if batch:
        removed += int(client.unlink(*batch))
    return removed


def count_keys(redis_url: str, pattern: str) -> int:
    client = redis.Redis.from_url(redis_url)
    try:
        return sum(1 for _ in client.scan_iter(match=pattern, count=10_000))
    finally:
        client.close()


def count_rows(database_url: str, table: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.SQL(table))).fetchone()
        return int(row[0]) if row else 0


def source_values(database_url: str, entity_ids: Sequence[str]) -> dict[str, list[float]]:
    """The source rows' feature values of `entity_ids`, to check what each path serves."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            f"SELECT entity_id, {', '.join(FEATURES)} FROM {SOURCE_TABLE} WHERE tenant_id = %s AND entity_id = ANY(%s)",
            (TENANT, list(entity_ids)),
        ).fetchall()
    return {str(r[0]): [float(v) for v in r[1:]] for r in rows}


# -- child processes ----------------------------------------------------------------------------


@dataclass
class ChildRun:
    result: dict[str, Any]
    """The JSON object the child printed last."""
    peak_rss_mb: float
    """The child's peak resident set size (getrusage via wait4: its own process, whatever it imported)."""


def run_child(command: Sequence[str], *, env: dict[str, str] | None = None) -> ChildRun:
    """Run `command` to the end, its stderr passed through; parse the last JSON line of its stdout."""
    with tempfile.TemporaryFile(mode="w+") as out:
        process = subprocess.Popen(list(command), stdout=out, env=env, cwd=BENCH_DIR)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
        out.seek(0)
        stdout = out.read()
    if process.returncode != 0:
        sys.stderr.write(stdout[-3000:])
        raise SystemExit(f"{' '.join(command[:4])} ... exited with {process.returncode}")
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if not lines:
        sys.stderr.write(stdout[-3000:])
        raise SystemExit(f"{' '.join(command[:4])} ... printed no result")
    return ChildRun(json.loads(lines[-1]), usage.ru_maxrss / 1024)


def project_child(script: str, *args: str) -> list[str]:
    """A command running one of the bench scripts in this (the project's) interpreter."""
    return [sys.executable, str(BENCH_DIR / script), *args]


def feast_env() -> dict[str, str]:
    """The environment of a Feast child: nothing of the project's import path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["FEAST_USAGE"] = "False"
    return env


def emit(result: dict[str, Any]) -> None:
    """What a child prints last: the parent reads this line."""
    print(json.dumps(result), flush=True)


# -- reporting ----------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), nearest rank: p99 of 200 samples is the 198th smallest."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), -(-len(ordered) * q // 100)))
    return float(ordered[int(rank) - 1])


def machine(database_url: str, redis_url: str, feast: dict[str, str] | None = None) -> str:
    ram_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    client = redis.Redis.from_url(redis_url)
    redis_version = client.info("server")["redis_version"]
    client.close()
    parts = [
        f"{platform.machine()}, {os.cpu_count()} cores, {ram_gib:.1f} GiB RAM",
        f"Python {platform.python_version()}",
        f"PostgreSQL {str(row[0]).split()[0] if row else '?'}",
        f"Redis {redis_version}",
        f"redis-py {redis.__version__} (featurepipe, raw)",
    ]
    if feast:
        client_libs = ", ".join(f"{k} {v}" for k, v in feast.items() if k != "feast")
        parts.append(f"Feast {feast.get('feast', '?')} ({client_libs})")
    return "; ".join(parts)


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def now_utc() -> str:
    return f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC"


def write_section(path: Path, name: str, intro: str, key: str, block: str) -> None:
    """Put `block` (a `### key` subsection) into the section `name` of RESULTS.md, between its markers.

    Other sections (and anything outside the markers) are left as they are; inside the section, the
    subsection with the same `### key` heading is replaced and the others are kept (one per size).
    """
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    subsections: dict[str, str] = {}
    match = re.search(re.escape(start) + r"\n(.*?)" + re.escape(end), text, flags=re.S)
    if match:
        for part in re.split(r"^(?=### )", match.group(1), flags=re.M)[1:]:
            heading = part.splitlines()[0].removeprefix("### ").strip()
            subsections[heading] = part.rstrip() + "\n"
    subsections[key] = f"### {key}\n\n{block.rstrip()}\n"

    def size(heading: str) -> int:
        digits = re.sub(r"[^0-9]", "", heading.split(" ")[0])
        return int(digits) if digits else 0

    body = intro.rstrip() + "\n\n" + "\n".join(subsections[k] for k in sorted(subsections, key=size))
    section = f"{start}\n{body}{end}"
    text = text[: match.start()] + section + text[match.end() :] if match else f"{text.rstrip()}\n\n{section}\n"
    path.write_text(text)
    print(f"wrote the {name} section of {path}")
