"""Benchmark: materialize N entities x 5 float features, featurepipe against the raw limit and against Feast 0.67.

Every path reads the same source rows (N entities x 5 float features in one hour, one tenant, in a
tenant-isolated table) in the same run, each in a child process of its own (peak RSS is its own),
with the order of the paths reversed on every other repeat and every offline copy and online key
removed before each run:

- featurepipe:         `FeatureStore.materialize` (transform, validate, offline write, online publish);
- featurepipe online:  the same with `write_offline=False` (what Feast's materialize does: online only);
- featurepipe, group SQL: the same features of a group whose one SQL returns all five columns (what
                       Feast's feature view reads: one source), instead of a SQL per feature;
- raw PG -> Redis:     server-side cursor over the rows, one pipelined HSET per entity (5 fields and a
                       timestamp), batches of 10 000: the least work to get the values online;
- raw INSERT:          `INSERT ... SELECT` of the N wide rows into a table keyed by (tenant, entity,
                       event_time): the least work to keep an offline copy;
- Feast 0.67:          `FeatureStore.materialize` (PostgreSQL offline store -> Redis online store) in
                       bench/.feast-venv, on a Feast repo generated in a temporary directory; only the
                       materialize call is timed (registry apply is not).

Reports medians and ratios, and writes its section of bench/RESULTS.md.

    python bench/materialize.py --entities 100000 --repeat 3
    python bench/materialize.py --entities 10000 --repeat 3 --no-feast --no-results
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import benchlib as bl
import psycopg
import redis
from psycopg import sql
from redis.typing import EncodableT, FieldT

from feature_store import FeatureStore, PipelineConfig, Settings


@dataclass(frozen=True)
class PathSpec:
    name: str
    label: str
    does: str


PATHS = {
    p.name: p
    for p in (
        PathSpec("featurepipe", "featurepipe", "`FeatureStore.materialize`: offline + online"),
        PathSpec("featurepipe-online", "featurepipe, online only", "the same, `write_offline=False`"),
        PathSpec("featurepipe-group-sql", "featurepipe, group SQL", "offline + online, one SQL for the group"),
        PathSpec(
            "featurepipe-group-sql-online",
            "featurepipe, group SQL, online only",
            "the same, `write_offline=False`: Feast's work, and validation",
        ),
        PathSpec("raw-redis", "raw PG → Redis", "server-side cursor + pipelined HSET per entity"),
        PathSpec("raw-insert", "raw INSERT", "`INSERT … SELECT` of the wide rows, PK (tenant, entity, time)"),
        PathSpec("feast", "Feast 0.67", "`FeatureStore.materialize`: PostgreSQL offline → Redis online"),
    )
}


# -- the children: each times its own work only, after connecting ------------------------------------


class StageClock:
    """Where featurepipe's time goes, from its progress messages (one at the start of each stage).

    A feature's transform lasts until its validate starts and its validate until its write starts, on
    the same thread; the publish lasts from its message to the end (the offline write runs inside it,
    beside the publish of the wide rows). Transform and validate are summed over the features
    (thread-seconds: several features run at once).
    """

    def __init__(self) -> None:
        self.events: list[tuple[float, str, str]] = []
        self.started = time.perf_counter()

    def __call__(self, message: str) -> None:
        self.events.append((time.perf_counter(), threading.current_thread().name, message))

    def stages(self, ended: float) -> dict[str, float]:
        publish = next((t for t, _, m in self.events if m.startswith("publish ")), ended)
        totals = {
            "transform": 0.0,
            "validate": 0.0,
            "until_publish": publish - self.started,
            "publish": ended - publish,
        }
        for i, (at, thread, message) in enumerate(self.events):
            stage, _, feature = message.partition(" ")
            if stage not in ("transform", "validate"):
                continue
            following = next((t for t, th, m in self.events[i + 1 :] if th == thread and m.endswith(" " + feature)), at)
            totals[stage] += following - at
        return totals


def child_featurepipe(
    config: Settings, window: bl.Window, entities: int, *, offline: bool, group: str = bl.GROUP
) -> dict[str, Any]:
    job = PipelineConfig(
        tenant_id=bl.TENANT,
        feature_group_id=group,
        start_time=window.start,
        end_time=window.end,
        write_offline=offline,
    )
    with FeatureStore(settings=config) as store:
        store.conn  # noqa: B018 - connect before the clock starts, as the raw paths do
        store.online  # noqa: B018
        rss_before = _rss_mb()
        clock = StageClock()
        result = store.materialize(job, progress=clock)
        ended = time.perf_counter()
    if result.status.value != "completed":
        raise SystemExit(f"featurepipe job failed: {result.errors}")
    expected = len(bl.FEATURES) * entities
    if result.rows_processed != expected or result.rows_failed:
        raise SystemExit(
            f"featurepipe processed {result.rows_processed} rows ({result.rows_failed} failed), {expected=}"
        )
    return {"seconds": ended - clock.started, "rss_before_mb": rss_before, "stages": clock.stages(ended)}


def child_raw_redis(config: Settings, window: bl.Window, entities: int) -> dict[str, float]:
    conn = psycopg.connect(config.database_url, autocommit=True)
    client = redis.Redis.from_url(config.redis_url)
    client.ping()
    prefix = f"{bl.RAW_PREFIX}:{bl.TENANT}:{bl.GROUP}:"
    # The server renders values and the timestamp as text: nothing to convert in Python.
    query = sql.SQL(
        "SELECT entity_id, (extract(epoch FROM event_time) * 1000000)::int8::text, {} FROM {}"
        " WHERE tenant_id = %s AND event_time > %s AND event_time <= %s"
    ).format(
        sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(f)) for f in bl.FEATURES), sql.SQL(bl.SOURCE_TABLE)
    )
    rss_before = _rss_mb()
    started = time.perf_counter()
    written = 0
    with conn.transaction(), conn.cursor(name="raw") as cur:
        cur.execute(query, (bl.TENANT, window.start, window.end))
        while rows := cur.fetchmany(bl.RAW_BATCH):
            pipe = client.pipeline(transaction=False)
            for entity_id, ts, *values in rows:
                mapping: dict[FieldT, EncodableT] = dict(zip(bl.FEATURES, values, strict=True))
                mapping["ts"] = ts
                pipe.hset(prefix + entity_id, mapping=mapping)
            pipe.execute()
            written += len(rows)
    elapsed = time.perf_counter() - started
    conn.close()
    if written != entities:
        raise SystemExit(f"raw PG -> Redis wrote {written} entities, expected {entities}")
    return {"seconds": elapsed, "rss_before_mb": rss_before}


def child_raw_insert(config: Settings, window: bl.Window, entities: int) -> dict[str, float]:
    conn = psycopg.connect(config.database_url, autocommit=True)
    columns = sql.SQL(", ").join(sql.Identifier(c) for c in ("tenant_id", "entity_id", "event_time", *bl.FEATURES))
    query = sql.SQL(
        "INSERT INTO {target} ({columns}) SELECT {columns} FROM {source}"
        " WHERE tenant_id = %s AND event_time > %s AND event_time <= %s"
    ).format(target=sql.SQL(bl.RAW_OFFLINE_TABLE), columns=columns, source=sql.SQL(bl.SOURCE_TABLE))
    rss_before = _rss_mb()
    started = time.perf_counter()
    rows = conn.execute(query, (bl.TENANT, window.start, window.end)).rowcount
    elapsed = time.perf_counter() - started
    conn.close()
    if rows != entities:
        raise SystemExit(f"raw INSERT wrote {rows} rows, expected {entities}")
    return {"seconds": elapsed, "rss_before_mb": rss_before}


def _rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(name: str, config: Settings, window: bl.Window, entities: int) -> None:
    children: dict[str, Callable[[], dict[str, Any]]] = {
        "featurepipe": lambda: child_featurepipe(config, window, entities, offline=True),
        "featurepipe-online": lambda: child_featurepipe(config, window, entities, offline=False),
        "featurepipe-group-sql": lambda: child_featurepipe(config, window, entities, offline=True, group=bl.GROUP_SQL),
        "featurepipe-group-sql-online": lambda: child_featurepipe(
            config, window, entities, offline=False, group=bl.GROUP_SQL
        ),
        "raw-redis": lambda: child_raw_redis(config, window, entities),
        "raw-insert": lambda: child_raw_insert(config, window, entities),
    }
    bl.emit(children[name]())


# -- the parent ---------------------------------------------------------------------------------------


@dataclass
class Run:
    seconds: float
    peak_rss_mb: float
    rss_before_mb: float
    stages: dict[str, float] = field(default_factory=dict)


@dataclass
class Result:
    entities: int
    repeat: int
    runs: dict[str, list[Run]] = field(default_factory=dict)

    @property
    def values(self) -> int:
        return self.entities * len(bl.FEATURES)

    def median(self, name: str) -> float:
        return bl.median([r.seconds for r in self.runs[name]])

    def ratio(self, numerator: list[str], denominator: list[str]) -> float | None:
        if not all(n in self.runs for n in numerator + denominator):
            return None
        return sum(self.median(n) for n in numerator) / sum(self.median(d) for d in denominator)

    def paired_ratio(self, numerator: list[str], denominator: list[str]) -> float | None:
        """The median over repeats of each repeat's own ratio: steadier when the machine's load drifts."""
        if not all(n in self.runs for n in numerator + denominator):
            return None
        ratios = [
            sum(self.runs[n][i].seconds for n in numerator) / sum(self.runs[d][i].seconds for d in denominator)
            for i in range(self.repeat)
        ]
        return bl.median(ratios)


def check(name: str, config: Settings, entities: int) -> None:
    """What the path left behind, outside the clock: every entity online, every value offline."""
    # Offline values one row per value (the view over featurepipe's wide rows).
    offline = bl.count_rows(config.database_url, "feature_store.feature_values")
    values = entities * len(bl.FEATURES)
    expected: dict[str, list[tuple[str, int, int]]] = {
        "featurepipe": [
            ("featurepipe offline rows", offline, values),
            ("featurepipe keys", _keys(config, bl.FP_PREFIX + ":*"), entities),
        ],
        "featurepipe-online": [
            ("featurepipe offline rows", offline, 0),
            ("featurepipe keys", _keys(config, bl.FP_PREFIX + ":*"), entities),
        ],
        "featurepipe-group-sql": [
            ("featurepipe offline rows", offline, values),
            ("featurepipe keys", _keys(config, bl.FP_PREFIX + ":*"), entities),
        ],
        "featurepipe-group-sql-online": [
            ("featurepipe offline rows", offline, 0),
            ("featurepipe keys", _keys(config, bl.FP_PREFIX + ":*"), entities),
        ],
        "raw-redis": [("raw keys", _keys(config, bl.RAW_PREFIX + ":*"), entities)],
        "raw-insert": [("raw offline rows", bl.count_rows(config.database_url, bl.RAW_OFFLINE_TABLE), entities)],
        "feast": [("Feast keys", _keys(config, "*" + bl.FEAST_PROJECT), entities)],
    }
    for what, got, want in expected[name]:
        if got != want:
            raise SystemExit(f"after {name}: {what} = {got}, expected {want}")


def _keys(config: Settings, pattern: str) -> int:
    return bl.count_keys(config.redis_url, pattern)


def feast_setup(repo: Path, config: Settings) -> tuple[list[str], dict[str, str]]:
    """Create the Feast venv if missing, generate and apply the Feast repo; the worker's command prefix."""
    import feast_env

    command = [str(feast_env.ensure_feast_venv()), str(feast_env.WORKER)]
    init = [*command, "init", "--repo", str(repo), "--database-url", config.database_url]
    bl.run_child([*init, "--redis-url", config.redis_url], env=bl.feast_env())
    return command, feast_env.feast_versions()


def bench(args: argparse.Namespace, config: Settings) -> tuple[Result, dict[str, str] | None]:
    window = bl.Window.last_complete_hour()
    print(f"preparing {args.entities:,} entities x {len(bl.FEATURES)} features in {window.start:%Y-%m-%d %H:%M}+1h")
    bl.prepare(config, args.entities, window)
    result = Result(args.entities, args.repeat)
    common = ["--database-url", config.database_url, "--redis-url", config.redis_url]
    common += ["--window-end", window.end.isoformat(), "--entities", str(args.entities)]
    commands: dict[str, tuple[list[str], dict[str, str] | None]] = {
        name: (bl.project_child("materialize.py", "--child", name, *common), None) for name in PATHS if name != "feast"
    }
    feast_versions = None
    with tempfile.TemporaryDirectory(prefix="fpbench-feast-") as tmp:
        if not args.no_feast:
            repo = Path(tmp) / "repo"
            worker, feast_versions = feast_setup(repo, config)
            materialize = ["materialize", "--repo", str(repo), "--start", window.start.isoformat()]
            commands["feast"] = ([*worker, *materialize, "--end", window.end.isoformat()], bl.feast_env())
        names = [n for n in PATHS if n in commands]
        for i in range(args.repeat):
            order = names if i % 2 == 0 else names[::-1]  # neither path always runs first, on a colder cache
            for name in order:
                bl.reset(config)
                command, env = commands[name]
                child = bl.run_child(command, env=env)
                check(name, config, args.entities)
                stages = {k: float(v) for k, v in child.result.get("stages", {}).items()}
                run = Run(
                    float(child.result["seconds"]), child.peak_rss_mb, float(child.result["rss_before_mb"]), stages
                )
                result.runs.setdefault(name, []).append(run)
                print(
                    f"  run {i + 1}/{args.repeat} {PATHS[name].label:26s} {run.seconds:7.2f} s"
                    f"  peak RSS {run.peak_rss_mb:5.0f} MB (at start {run.rss_before_mb:4.0f} MB)",
                    flush=True,
                )
    bl.reset(config)
    return result, feast_versions


def report(result: Result) -> str:
    lines = [
        "| path | what it does | wall, median (range) | values/s | peak RSS (at clock start) |",
        "|---|---|---:|---:|---:|",
    ]
    for name, runs in result.runs.items():
        spec = PATHS[name]
        seconds = [r.seconds for r in runs]
        med = bl.median(seconds)
        lines.append(
            f"| {spec.label} | {spec.does} | {med:.2f} s ({min(seconds):.2f}-{max(seconds):.2f}) |"
            f" {result.values / med:,.0f} | {max(r.peak_rss_mb for r in runs):.0f} MB"
            f" ({max(r.rss_before_mb for r in runs):.0f} MB) |"
        )
    ratios = [
        ("featurepipe / raw PG → Redis", ["featurepipe"], ["raw-redis"]),
        ("featurepipe / (raw PG → Redis + raw INSERT)", ["featurepipe"], ["raw-redis", "raw-insert"]),
        ("featurepipe online only / raw PG → Redis", ["featurepipe-online"], ["raw-redis"]),
        ("featurepipe, group SQL / raw PG → Redis", ["featurepipe-group-sql"], ["raw-redis"]),
        ("featurepipe, group SQL, online only / raw PG → Redis", ["featurepipe-group-sql-online"], ["raw-redis"]),
        ("Feast / featurepipe", ["feast"], ["featurepipe"]),
        ("Feast / featurepipe online only", ["feast"], ["featurepipe-online"]),
        ("Feast / featurepipe, group SQL", ["feast"], ["featurepipe-group-sql"]),
        ("Feast / featurepipe, group SQL, online only", ["feast"], ["featurepipe-group-sql-online"]),
        ("Feast / raw PG → Redis", ["feast"], ["raw-redis"]),
    ]
    lines += ["", "| ratio | of the median walls | median of each repeat's ratio |", "|---|---:|---:|"]
    for label, numerator, denominator in ratios:
        value, paired = result.ratio(numerator, denominator), result.paired_ratio(numerator, denominator)
        if value is not None and paired is not None:
            lines.append(f"| {label} | **{value:.2f}** | {paired:.2f} |")
    stage_rows = [n for n in PATHS if n.startswith("featurepipe") and n in result.runs]
    if stage_rows:
        lines += [
            "",
            "| featurepipe stages (median s) | until publish (wall) | transform (thread-s) |"
            " validate (thread-s) | online publish (wall) |",
            "|---|---:|---:|---:|---:|",
        ]
        for name in stage_rows:
            runs = result.runs[name]
            cells = [
                bl.median([r.stages[k] for r in runs]) for k in ("until_publish", "transform", "validate", "publish")
            ]
            lines.append(f"| {PATHS[name].label} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")
    return "\n".join(lines)


INTRO = """\
## Materialize: featurepipe vs the raw limit vs Feast 0.67

`python bench/materialize.py --entities N --repeat R` materializes one hour of N entities x 5 float
features for one tenant from one tenant-isolated source table (row-level security, the
`featurepipe_tenant` policy) along seven paths, each in its own child process, R times in alternating
order, every offline copy and online key removed before each run; all paths read the same rows and
every run is checked afterwards (all N entities online, all values offline):

- **featurepipe**: `FeatureStore.materialize` with its default parallelism (every feature of the job
  at once, up to 8): transform in the sandbox, validate, offline write into `feature_store.feature_values`, online
  publish through the newer-only Lua script, TTL refreshed;
- **featurepipe, online only**: the same job with `write_offline=False`, the work Feast's materialize does;
- **featurepipe, group SQL**: the same 5 features in a group whose one `transformation_sql` returns all
  five columns (the shape of Feast's feature view over one source), instead of a SQL per feature: the
  group's SQL runs once per job, each feature reads its column of them inside PostgreSQL;
- **featurepipe, group SQL, online only**: that job with `write_offline=False`: the same work as Feast's
  materialize (source → Redis), plus what Feast does not do: the sandbox, validation and statistics;
- **raw PG → Redis**: a server-side cursor over the rows and one pipelined `HSET` per entity (5 fields and
  a timestamp, values rendered as text by PostgreSQL), batches of 10 000, redis-py: the least work to get
  the values online;
- **raw INSERT**: `INSERT … SELECT` of the N wide rows (tenant, entity, event time, 5 values) into a table
  with a primary key on (tenant, entity, event_time): the least work to keep an offline copy;
- **Feast 0.67**: `FeatureStore.materialize(start, end)` in its own venv (bench/.feast-venv, see
  bench/feast_env.py) on a generated repo: `PostgreSQLSource` on the same table (`event_time` as the
  timestamp field), a `FeatureView` of the 5 `Float64` fields, ttl 1 day, `RedisOnlineStore` with
  `key_ttl_seconds` 86 400, the default local compute engine and file registry. Only the materialize
  call is timed (not `apply`, not importing Feast). Feast keeps no offline copy: its offline store is
  the source table.

Wall = the timed call in the child, median over the runs; values/s = N x 5 / wall; peak RSS = the
child's peak resident set (from wait4), with its RSS when the clock started (imports, connections)
in parentheses. Ratios are of the median walls (> 1: the numerator is slower), and beside them the
median of each repeat's own ratio, steadier while the load of this shared machine drifts: compare
ratios of one run rather than walls across runs. featurepipe's stages come from its progress messages:
until publish = planning, transform and validate of every feature and building the wide rows (wall);
transform and validate summed over the 5 features (several run at once); online publish = from the
start of the publish to the end of the job (wall), which includes the offline write: the wide rows go
online while it runs, the fallbacks after its commit."""


def write(path: Path, result: Result, config: Settings, feast: dict[str, str] | None, load: str) -> None:
    machine = bl.machine(config.database_url, config.redis_url, feast)
    block = (
        f"{bl.now_utc()}, {result.repeat} run(s) per path. Machine: {machine}."
        f" Load average (1, 5, 15 min): {load}.\n\n" + report(result)
    )
    bl.write_section(path, "materialize", INTRO, f"{result.entities:,} entities", block)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entities", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--database-url", default=bl.DEFAULT_DATABASE_URL)
    parser.add_argument("--redis-url", default=bl.DEFAULT_REDIS_URL)
    parser.add_argument("--results", type=Path, default=bl.RESULTS)
    parser.add_argument("--no-results", action="store_true", help="Print only; do not touch RESULTS.md.")
    parser.add_argument("--no-feast", action="store_true", help="Leave Feast out (no venv needed).")
    parser.add_argument("--child", choices=[n for n in PATHS if n != "feast"], help=argparse.SUPPRESS)
    parser.add_argument("--window-end", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    config = bl.settings(args.database_url, args.redis_url)
    if args.child:
        run_child(args.child, config, bl.Window.ending(args.window_end), args.entities)
        return 0
    load_before = bl.load_average()
    result, feast = bench(args, config)
    print(report(result))
    if not args.no_results:
        write(args.results, result, config, feast, f"{load_before} before, {bl.load_average()} after")
    return 0


if __name__ == "__main__":
    sys.exit(main())
