"""Benchmark: materialize N entities x 5 features of one group, offline + online, against the raw limit.

The raw limit is measured in the same run on the same machine: an `INSERT ... SELECT` of the same
rows into a table shaped like the offline store, plus one pipelined HSET per entity (5 fields and a
timestamp, batches of 10 000) with redis-py. Each path runs in its own child process so peak RSS is
its own. Reports medians over --repeat runs and writes bench/RESULTS.md.

    python bench/materialize.py --entities 100000 --repeat 3
    python bench/materialize.py --entities 1000000 --repeat 1 --append
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import platform
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
import redis
from psycopg import sql

from feature_store import FeatureStore, PipelineConfig, Settings
from feature_store.db import ensure_database

FEATURES = ("f1", "f2", "f3", "f4", "f5")
TENANT = "bench"
GROUP = "bench_group"
WINDOW_END = datetime(2026, 1, 1, 1, tzinfo=timezone.utc)
WINDOW_START = WINDOW_END - timedelta(hours=1)
RAW_BATCH = 10_000

REPO = """\
source_schemas: [bench]
tenants: [{id: bench, name: Benchmark}]
feature_groups:
  - id: bench_group
    entity_type: entity
    ttl_seconds: 86400
    features:
""" + "".join(
    f"""      - name: {f}
        value_type: float64
        validation: {{not_null: true, min: 0}}
        transformation_sql: |
          SELECT s.entity_id, s.{f} AS value FROM bench.entity_stats s WHERE s.tenant_id = %(tenant_id)s
"""
    for f in FEATURES
)


@dataclass
class Run:
    seconds: float
    max_rss_mb: float


def prepare(settings: Settings, entities: int) -> None:
    ensure_database(settings.database_url)
    with FeatureStore(settings=settings) as store:
        store.init()
        conn = store.conn
        conn.execute("DROP SCHEMA IF EXISTS bench CASCADE")
        conn.execute("CREATE SCHEMA bench")
        conn.execute(
            "CREATE TABLE bench.entity_stats (tenant_id text NOT NULL, entity_id text NOT NULL,"
            + ", ".join(f"{f} double precision NOT NULL" for f in FEATURES)
            + ", PRIMARY KEY (tenant_id, entity_id))"
        )
        conn.execute(
            "INSERT INTO bench.entity_stats SELECT %s, 'e' || n, "
            + ", ".join(f"round((random() * {i + 1} * 100)::numeric, 3)::float8" for i in range(len(FEATURES)))
            + " FROM generate_series(1, %s) n",
            (TENANT, entities),
        )
        conn.execute("CREATE TABLE bench.raw_values (LIKE feature_store.feature_values INCLUDING ALL)")
        conn.execute("VACUUM ANALYZE bench.entity_stats")
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "repo.yaml").write_text(REPO)
            store.apply(tmp)


def _reset(settings: Settings) -> None:
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        conn.execute("TRUNCATE feature_store.feature_values, bench.raw_values")
        conn.execute("CHECKPOINT")
    client = redis.Redis.from_url(settings.redis_url)
    for prefix in (settings.redis_prefix, f"{settings.redis_prefix}raw"):
        batch = list(client.scan_iter(match=f"{prefix}:*", count=10_000))
        for i in range(0, len(batch), 10_000):
            client.unlink(*batch[i : i + 10_000])
    client.close()


def _pipeline_child(settings: Settings, queue: mp.Queue) -> None:  # type: ignore[type-arg]
    config = PipelineConfig(tenant_id=TENANT, feature_group_id=GROUP, start_time=WINDOW_START, end_time=WINDOW_END)
    with FeatureStore(settings=settings) as store:
        store.conn  # noqa: B018 - connect before the clock starts, as the raw path does
        store.online  # noqa: B018
        started = time.perf_counter()
        result = store.materialize(config)
        elapsed = time.perf_counter() - started
    if result.status.value != "completed":
        raise SystemExit(f"pipeline job failed: {result.errors}")
    expected = len(FEATURES) * _entities(settings)
    if result.rows_processed != expected:
        raise SystemExit(f"pipeline processed {result.rows_processed} rows, expected {expected}")
    queue.put(Run(elapsed, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


def _raw_child(settings: Settings, queue: mp.Queue) -> None:  # type: ignore[type-arg]
    conn = psycopg.connect(settings.database_url, autocommit=True)
    client = redis.Redis.from_url(settings.redis_url)
    client.ping()
    started = time.perf_counter()
    conn.execute(
        "INSERT INTO bench.raw_values (tenant_id, feature_group_id, feature_name, entity_id, event_time, value)"
        " SELECT s.tenant_id, %s, f.name, s.entity_id, %s, to_jsonb(CASE f.name "
        + " ".join(f"WHEN '{f}' THEN s.{f}" for f in FEATURES)
        + " END) FROM bench.entity_stats s CROSS JOIN unnest(%s::text[]) AS f(name) WHERE s.tenant_id = %s",
        (GROUP, WINDOW_END, list(FEATURES), TENANT),
    )
    ts = str(int(WINDOW_END.timestamp()))
    prefix = f"{settings.redis_prefix}raw:{TENANT}:{GROUP}:"
    with conn.transaction(), conn.cursor(name="raw") as cur:
        cur.execute(
            sql.SQL("SELECT entity_id, {} FROM bench.entity_stats WHERE tenant_id = %s").format(
                sql.SQL(", ").join(sql.Identifier(f) for f in FEATURES)
            ),
            (TENANT,),
        )
        while rows := cur.fetchmany(RAW_BATCH):
            pipe = client.pipeline(transaction=False)
            for row in rows:
                mapping = dict(zip(FEATURES, row[1:], strict=True))
                mapping["ts"] = ts
                pipe.hset(prefix + row[0], mapping=mapping)
            pipe.execute()
    elapsed = time.perf_counter() - started
    conn.close()
    queue.put(Run(elapsed, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


def _entities(settings: Settings) -> int:
    with psycopg.connect(settings.database_url) as conn:
        row = conn.execute("SELECT count(*) FROM bench.entity_stats").fetchone()
        return int(row[0]) if row else 0


def _in_child(target: object, settings: Settings) -> Run:
    ctx = mp.get_context("spawn")
    queue: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    process = ctx.Process(target=target, args=(settings, queue))
    process.start()
    process.join()
    if process.exitcode != 0:
        raise SystemExit(f"{getattr(target, '__name__', target)} exited with {process.exitcode}")
    return queue.get(timeout=5)  # type: ignore[no-any-return]


@dataclass
class Result:
    entities: int
    repeat: int
    pipeline: list[Run]
    raw: list[Run]

    @property
    def values(self) -> int:
        return self.entities * len(FEATURES)

    def median(self, runs: list[Run]) -> float:
        return statistics.median(r.seconds for r in runs)

    @property
    def ratio(self) -> float:
        return self.median(self.pipeline) / self.median(self.raw)

    def row(self) -> str:
        p, r = self.median(self.pipeline), self.median(self.raw)
        return (
            f"| {self.entities:,} | {self.repeat} | {p:.2f} s | {self.values / p:,.0f} | "
            f"{max(x.max_rss_mb for x in self.pipeline):.0f} MB | {r:.2f} s | {self.values / r:,.0f} | "
            f"{max(x.max_rss_mb for x in self.raw):.0f} MB | **{self.ratio:.2f}** |"
        )


def bench(settings: Settings, entities: int, repeat: int) -> Result:
    prepare(settings, entities)
    result = Result(entities, repeat, [], [])
    for i in range(repeat):
        # Alternate the order so neither path always runs on a warmer cache.
        order = [("pipeline", _pipeline_child), ("raw", _raw_child)]
        if i % 2:
            order.reverse()
        for name, target in order:
            _reset(settings)
            run = _in_child(target, settings)
            getattr(result, name).append(run)
            print(
                f"  run {i + 1}/{repeat} {name:8s} {run.seconds:7.2f} s  peak RSS {run.max_rss_mb:6.0f} MB", flush=True
            )
    _reset(settings)
    return result


HEADER = """\
| entities | runs | pipeline (median) | values/s | peak RSS | raw limit (median) | values/s | peak RSS | ratio |
|---:|---:|---:|---:|---:|---:|---:|---:|---:|"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entities", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/featurepipe_bench")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--results", type=Path, default=Path(__file__).with_name("RESULTS.md"))
    parser.add_argument("--append", action="store_true", help="Add a row to RESULTS.md instead of rewriting it.")
    parser.add_argument("--no-results", action="store_true", help="Print only; do not touch RESULTS.md.")
    args = parser.parse_args(argv)
    settings = Settings(database_url=args.database_url, redis_url=args.redis_url, redis_prefix="fpbench")
    print(f"materializing {args.entities:,} entities x {len(FEATURES)} features, {args.repeat} run(s) each")
    result = bench(settings, args.entities, args.repeat)
    print(HEADER)
    print(result.row())
    if not args.no_results:
        write_results(args.results, result, append=args.append)
    return 0


def write_results(path: Path, result: Result, *, append: bool) -> None:
    rows = []
    if append and path.exists():
        rows = [line for line in path.read_text().splitlines() if line.startswith("| ") and line[2].isdigit()]
    rows.append(result.row())
    machine = f"{platform.machine()}, {mp.cpu_count()} cores, Python {platform.python_version()}"
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres") as conn:
        pg = conn.execute("SHOW server_version").fetchone()
    redis_version = redis.Redis().info("server")["redis_version"]
    path.write_text(
        "# Benchmark results\n\n"
        "`python bench/materialize.py` materializes N entities x 5 float features of one group for one tenant\n"
        "(transform -> validate -> offline write -> online publish, through `FeatureStore.materialize`) and,\n"
        "in the same run, the raw limit: `INSERT ... SELECT` of the same rows into a table shaped like\n"
        "`feature_store.feature_values` plus one pipelined HSET per entity (5 fields + timestamp, batches of\n"
        "10 000) with redis-py. Times are medians; ratio = pipeline time / raw time (target <= 2.0).\n\n"
        f"Machine: {machine}; PostgreSQL {pg[0] if pg else '?'}; Redis {redis_version}. "
        f"Last written {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.\n\n" + HEADER + "\n" + "\n".join(rows) + "\n"
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
