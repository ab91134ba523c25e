"""The Feast side of the benchmarks; runs in bench/.feast-venv (Feast 0.67), never in the project's venv.

It imports Feast and the standard library only (not featurepipe, not bench/benchlib.py), and prints
one JSON object as its last stdout line for the parent to read.

    feast_worker.py init --repo DIR --database-url URL --redis-url URL   # write the repo, `feast apply` it
    feast_worker.py materialize --repo DIR --start ISO --end ISO         # time FeatureStore.materialize only
    feast_worker.py online-reads --repo DIR --ids FILE                   # time get_online_features per call
    feast_worker.py raw-reads --redis-url URL --key-format F --ids FILE  # pipelined HMGET, this venv's client

The generated repo (feature_store.yaml + features.py) is a plain Feast repo: `feast -c DIR materialize
START END` runs the same materialization from the command line.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

PROJECT = "fpbench_feast"
VIEW = "bench_group"
FEATURES = ("f1", "f2", "f3", "f4", "f5")
TTL_SECONDS = 86_400

FEATURE_STORE_YAML = """\
project: {project}
provider: local
registry:
  registry_type: file
  path: {registry}
  cache_ttl_seconds: 600
offline_store:
  type: postgres
  host: {host}
  port: {port}
  database: {database}
  db_schema: public
  user: {user}
  password: "{password}"
  sslmode: disable
online_store:
  type: redis
  connection_string: "{redis}"
  # featurepipe refreshes a TTL of the group's ttl_seconds on every key it writes; so does this.
  key_ttl_seconds: {ttl}
entity_key_serialization_version: 3
"""

FEATURES_PY = '''\
"""Feast definitions of the benchmark: the same source table featurepipe reads, the same 5 float features."""

from datetime import timedelta

from feast import Entity, FeatureView, Field, ValueType
from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import PostgreSQLSource
from feast.types import Float64, String

entity = Entity(name="entity", join_keys=["entity_id"], value_type=ValueType.STRING)

source = PostgreSQLSource(name="entity_stats", table="bench.entity_stats", timestamp_field="event_time")

bench_group = FeatureView(
    name="{view}",
    entities=[entity],
    ttl=timedelta(seconds={ttl}),
    schema=[Field(name="entity_id", dtype=String)] + [Field(name=f, dtype=Float64) for f in {features!r}],
    source=source,
    online=True,
)
'''


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _emit(result: dict[str, Any]) -> None:
    print(json.dumps(result), flush=True)


def init(repo: Path, database_url: str, redis_url: str) -> None:
    pg = urlparse(database_url)
    rd = urlparse(redis_url)
    db = (rd.path or "/0").lstrip("/") or "0"
    repo.mkdir(parents=True, exist_ok=True)
    (repo / "feature_store.yaml").write_text(
        FEATURE_STORE_YAML.format(
            project=PROJECT,
            registry=repo / "registry.db",
            host=pg.hostname or "127.0.0.1",
            port=pg.port or 5432,
            database=pg.path.lstrip("/"),
            user=pg.username or "postgres",
            password=pg.password or "",
            redis=f"{rd.hostname or '127.0.0.1'}:{rd.port or 6379},db={db}",
            ttl=TTL_SECONDS,
        )
    )
    (repo / "features.py").write_text(FEATURES_PY.format(view=VIEW, ttl=TTL_SECONDS, features=FEATURES))
    from feast import FeatureStore

    spec = importlib.util.spec_from_file_location("fpbench_feast_features", repo / "features.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    store = FeatureStore(repo_path=str(repo))
    store.apply([module.entity, module.source, module.bench_group])
    _emit({"applied": [VIEW], "feast": _feast_version()})


def materialize(repo: Path, start: datetime, end: datetime) -> None:
    from feast import FeatureStore

    store = FeatureStore(repo_path=str(repo))
    store.get_feature_view(VIEW)  # registry loaded before the clock starts
    rss_before = _rss_mb()
    started = time.perf_counter()
    store.materialize(start_date=start, end_date=end, feature_views=[VIEW])
    elapsed = time.perf_counter() - started
    _emit({"seconds": elapsed, "rss_before_mb": rss_before})


def _timed(read: Callable[[list[str]], Any], plan: dict[str, Any]) -> dict[str, list[float]]:
    latencies: dict[str, list[float]] = {}
    for size, calls in plan["batches"].items():
        for ids in calls["warmup"]:
            read(ids)
        samples = []
        for ids in calls["calls"]:
            started = time.perf_counter()
            read(ids)
            samples.append(time.perf_counter() - started)
        latencies[size] = samples
    return latencies


def online_reads(repo: Path, ids_file: Path) -> None:
    from feast import FeatureStore

    plan = json.loads(ids_file.read_text())
    store = FeatureStore(repo_path=str(repo))
    refs = [f"{VIEW}:{f}" for f in FEATURES]

    def read(ids: list[str]) -> dict[str, list[Any]]:
        response = store.get_online_features(features=refs, entity_rows=[{"entity_id": e} for e in ids])
        return dict(response.to_dict())

    latencies = _timed(read, plan)
    got = read(plan["sample"])
    sample = {e: [got[f][i] for f in FEATURES] for i, e in enumerate(got["entity_id"])}
    _emit({"latencies": latencies, "sample": sample, "rss_mb": _rss_mb()})


def raw_reads(redis_url: str, key_format: str, ids_file: Path) -> None:
    import redis

    plan = json.loads(ids_file.read_text())
    client = redis.Redis.from_url(redis_url)
    client.ping()

    def read(ids: Sequence[str]) -> list[Any]:
        pipe = client.pipeline(transaction=False)
        for entity_id in ids:
            pipe.hmget(key_format.format(entity_id), FEATURES)
        return list(pipe.execute())

    latencies = _timed(read, plan)
    _emit({"latencies": latencies, "hiredis": _has_hiredis(), "redis_py": redis.__version__})


def _has_hiredis() -> bool:
    try:
        from redis.utils import HIREDIS_AVAILABLE
    except ImportError:
        return False
    return bool(HIREDIS_AVAILABLE)


def _feast_version() -> str:
    import feast

    return str(feast.__version__)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_init = sub.add_parser("init")
    p_init.add_argument("--repo", type=Path, required=True)
    p_init.add_argument("--database-url", required=True)
    p_init.add_argument("--redis-url", required=True)
    p_mat = sub.add_parser("materialize")
    p_mat.add_argument("--repo", type=Path, required=True)
    p_mat.add_argument("--start", type=datetime.fromisoformat, required=True)
    p_mat.add_argument("--end", type=datetime.fromisoformat, required=True)
    p_reads = sub.add_parser("online-reads")
    p_reads.add_argument("--repo", type=Path, required=True)
    p_reads.add_argument("--ids", type=Path, required=True)
    p_raw = sub.add_parser("raw-reads")
    p_raw.add_argument("--redis-url", required=True)
    p_raw.add_argument("--key-format", required=True)
    p_raw.add_argument("--ids", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "init":
        init(args.repo, args.database_url, args.redis_url)
    elif args.command == "materialize":
        materialize(args.repo, args.start, args.end)
    elif args.command == "online-reads":
        online_reads(args.repo, args.ids)
    else:
        raw_reads(args.redis_url, args.key_format, args.ids)
    return 0


if __name__ == "__main__":
    sys.exit(main())
