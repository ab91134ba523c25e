"""Benchmark: online read latency, featurepipe against a raw pipelined HMGET and against Feast 0.67.

After materializing the same N entities x 5 float features with featurepipe and with Feast, the
readers make 20 warm-up calls, then 200 timed calls, of random entity ids (the same ids for every
reader in a round), for 1 entity x 5 features and for 100 entities x 5 features:

- featurepipe:       `FeatureStore.get_online_features(tenant, entity_type, ids, ["group:feature", ...])`;
- raw HMGET:         one pipelined HMGET per entity of featurepipe's hashes, redis-py, nothing decoded
                     (one round trip);
- raw read script:   featurepipe's read script (one call, an HMGET of each key inside Redis), nothing
                     decoded: the least work for a batch;
- raw HMGET 7.4:     the raw HMGET in Feast's venv (redis-py 7.4 with hiredis, as Feast reads);
- Feast 0.67:        `FeatureStore.get_online_features(features, entity_rows).to_dict()` in bench/.feast-venv.

featurepipe and the two raw readers share one child process and take turns call by call (the same
ids, the order reversed every call), so they meet the same moments of this noisy machine; the others
run in a child process each. --repeat rounds run in alternating order; p50/p99 are over all timed
calls of all rounds.

    python bench/online_reads.py --entities 100000 --repeat 3
    python bench/online_reads.py --entities 10000 --repeat 1 --no-feast --no-results
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import benchlib as bl
import redis

from feature_store import FeatureStore, PipelineConfig, Settings
from feature_store.stores.online.redis import READ_SCRIPT, RedisOnlineStore

SIZES = (1, 100)
WARMUP = 20
CALLS = 200
SAMPLE = 20  # entities whose values every reader returns, compared with the source rows


@dataclass(frozen=True)
class Reader:
    name: str
    label: str
    does: str


READERS = {
    r.name: r
    for r in (
        Reader("featurepipe", "featurepipe", "`FeatureStore.get_online_features`"),
        Reader("raw", "raw HMGET", "pipelined HMGET per entity, redis-py, no decoding"),
        Reader("raw-script", "raw read script", "featurepipe's read script called with redis-py, no decoding"),
        Reader("raw-hiredis", "raw HMGET, redis-py 7.4", "the same, in Feast's venv (redis-py 7.4 + hiredis)"),
        Reader("feast", "Feast 0.67", "`get_online_features(...).to_dict()`"),
    )
}
FEAST_READERS = ("raw-hiredis", "feast")


def plan(entities: int, seed: int) -> dict[str, Any]:
    """The entity ids of every call of one round: warm-up and timed calls per batch size, and a sample."""
    rng = random.Random(seed)

    def ids(size: int) -> list[str]:
        return [f"e{n}" for n in rng.sample(range(1, entities + 1), size)]

    return {
        "batches": {
            str(size): {"warmup": [ids(size) for _ in range(WARMUP)], "calls": [ids(size) for _ in range(CALLS)]}
            for size in SIZES
        },
        "sample": ids(SAMPLE),
    }


def timed_calls(readers: dict[str, Callable[[list[str]], object]], calls: dict[str, Any]) -> dict[str, Any]:
    """Seconds of each timed call per reader and batch size, after the warm-up calls.

    Several readers take turns call by call, the order reversed every call, so that they share whatever
    else the machine is doing (readers timed one after the other drift apart on a noisy machine).
    """
    names = list(readers)
    latencies: dict[str, dict[str, list[float]]] = {name: {} for name in names}
    for size, batch in calls["batches"].items():
        for ids in batch["warmup"]:
            for name in names:
                readers[name](ids)
        samples: dict[str, list[float]] = {name: [] for name in names}
        for i, ids in enumerate(batch["calls"]):
            for name in names if i % 2 == 0 else names[::-1]:
                started = time.perf_counter()
                readers[name](ids)
                samples[name].append(time.perf_counter() - started)
        for name in names:
            latencies[name][size] = samples[name]
    return latencies


# -- the child ----------------------------------------------------------------------------------------


def child_featurepipe_and_raw(config: Settings, calls: dict[str, Any]) -> dict[str, Any]:
    """featurepipe and the raw readers (HMGET, the read script), timed call by call in turn."""
    refs = [f"{bl.GROUP}:{f}" for f in bl.FEATURES]
    client = redis.Redis.from_url(config.redis_url)
    client.ping()
    # featurepipe's own keys (its hash-tagged layout), read with nothing else around them.
    layout = RedisOnlineStore(client, prefix=bl.FP_PREFIX)

    def raw(ids: Sequence[str]) -> list[Any]:
        pipe = client.pipeline(transaction=False)
        for entity_id in ids:
            pipe.hmget(layout.key(bl.TENANT, bl.GROUP, entity_id), bl.FEATURES)
        return list(pipe.execute())

    script = client.register_script(READ_SCRIPT)

    def raw_script(ids: Sequence[str]) -> list[Any]:
        keys = [layout.key(bl.TENANT, bl.GROUP, entity_id) for entity_id in ids]
        return list(script(keys=keys, args=bl.FEATURES))

    with FeatureStore(settings=config) as store:

        def featurepipe(ids: list[str]) -> Any:
            return store.get_online_features(bl.TENANT, bl.ENTITY_TYPE, ids, refs)

        latencies = timed_calls({"featurepipe": featurepipe, "raw": raw, "raw-script": raw_script}, calls)
        rows = featurepipe(calls["sample"])
    if raw(calls["sample"]) != raw_script(calls["sample"]) or any(v is None for r in raw(calls["sample"]) for v in r):
        raise SystemExit("raw HMGET found no value for a sampled entity, or the read script another one")
    client.close()
    sample = {row.entity_id: [row.features[ref].value for ref in refs] for row in rows}
    statuses = {v.status.value for row in rows for v in row.features.values()}
    if statuses != {"present"}:
        raise SystemExit(f"featurepipe served values with status {sorted(statuses)}")
    return {"readers": latencies, "samples": {"featurepipe": sample}}


# -- the parent ---------------------------------------------------------------------------------------


@dataclass
class Result:
    entities: int
    repeat: int
    latencies: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    round_p99s: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    """Each round's p99 per reader and size (featurepipe's and raw's come from the same child)."""
    peak_rss_mb: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, latencies: dict[str, list[float]], peak_rss_mb: float) -> None:
        for size, samples in latencies.items():
            self.latencies.setdefault(name, {}).setdefault(size, []).extend(float(s) for s in samples)
            self.round_p99s.setdefault(name, {}).setdefault(size, []).append(bl.percentile(samples, 99))
        self.peak_rss_mb[name] = max(self.peak_rss_mb.get(name, 0.0), peak_rss_mb)

    def round_ratios(self, name: str, size: int) -> list[float]:
        """`name`'s p99 over raw's in each round (the two took turns in one child)."""
        ours, raw = self.round_p99s[name][str(size)], self.round_p99s["raw"][str(size)]
        return [a / b for a, b in zip(ours, raw, strict=True)]

    def p(self, name: str, size: int, q: float) -> float:
        return bl.percentile(self.latencies[name][str(size)], q)


def readings(name: str, result: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A child's latencies and sampled values per reader (a child of several readers names them)."""
    if "readers" in result:
        return result["readers"], result["samples"]
    return {name: result["latencies"]}, ({name: result["sample"]} if "sample" in result else {})


def check_sample(name: str, served: dict[str, list[float]], source: dict[str, list[float]]) -> None:
    for entity_id, values in source.items():
        got = served.get(entity_id)
        if got is None or any(abs(float(a) - b) > 1e-9 for a, b in zip(got, values, strict=True)):
            raise SystemExit(f"{name} served {got} for {entity_id}, the source has {values}")


def materialize_featurepipe(config: Settings, window: bl.Window, entities: int) -> None:
    job = PipelineConfig(tenant_id=bl.TENANT, feature_group_id=bl.GROUP, start_time=window.start, end_time=window.end)
    with FeatureStore(settings=config) as store:
        result = store.materialize(job)
    if result.status.value != "completed" or result.rows_processed != entities * len(bl.FEATURES):
        raise SystemExit(
            f"featurepipe materialize: {result.status.value}, {result.rows_processed} rows, {result.errors}"
        )


def bench(args: argparse.Namespace, config: Settings) -> tuple[Result, dict[str, str] | None]:
    window = bl.Window.last_complete_hour()
    print(f"preparing and materializing {args.entities:,} entities x {len(bl.FEATURES)} features")
    bl.prepare(config, args.entities, window)
    bl.reset(config)
    materialize_featurepipe(config, window, args.entities)
    result = Result(args.entities, args.repeat)
    feast_versions = None
    with tempfile.TemporaryDirectory(prefix="fpbench-reads-") as tmp:
        ids_file = Path(tmp) / "ids.json"
        # A child's name, or names joined by "+" for readers that share a child and take turns.
        own = bl.project_child("online_reads.py", "--child", "featurepipe+raw", "--ids", str(ids_file), *_urls(config))
        commands: dict[str, tuple[list[str], dict[str, str] | None]] = {"featurepipe+raw": (own, None)}
        if not args.no_feast:
            import feast_env

            repo = Path(tmp) / "repo"
            worker = [str(feast_env.ensure_feast_venv()), str(feast_env.WORKER)]
            init = [*worker, "init", "--repo", str(repo), "--database-url", config.database_url]
            bl.run_child([*init, "--redis-url", config.redis_url], env=bl.feast_env())
            materialize = ["materialize", "--repo", str(repo), "--start", window.start.isoformat()]
            bl.run_child([*worker, *materialize, "--end", window.end.isoformat()], env=bl.feast_env())
            feast_versions = feast_env.feast_versions()
            key_format = f"{bl.FP_PREFIX}:{bl.TENANT}:{bl.GROUP}:{{}}"
            raw = ["raw-reads", "--redis-url", config.redis_url, "--key-format", key_format, "--ids", str(ids_file)]
            commands["raw-hiredis"] = ([*worker, *raw], bl.feast_env())
            commands["feast"] = ([*worker, "online-reads", "--repo", str(repo), "--ids", str(ids_file)], bl.feast_env())
        names = list(commands)
        for i in range(args.repeat):
            calls = plan(args.entities, args.seed + i)
            ids_file.write_text(json.dumps(calls))
            source = bl.source_values(config.database_url, calls["sample"])
            for name in names if i % 2 == 0 else names[::-1]:
                command, env = commands[name]
                child = bl.run_child(command, env=env)
                readers, samples = readings(name, child.result)
                for reader, served in samples.items():
                    check_sample(reader, served, source)
                for reader, lat in readers.items():
                    result.add(reader, lat, child.peak_rss_mb)
                    line = "".join(f"  {s:>3} x5: p50 {_ms(_p(lat, s, 50))} p99 {_ms(_p(lat, s, 99))}" for s in SIZES)
                    print(f"  round {i + 1}/{args.repeat} {READERS[reader].label:24s}{line}", flush=True)
    bl.reset(config)
    return result, feast_versions


def _urls(config: Settings) -> list[str]:
    return ["--database-url", config.database_url, "--redis-url", config.redis_url]


def _p(latencies: dict[str, list[float]], size: int, q: float) -> float:
    return bl.percentile(latencies[str(size)], q)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.3g} ms"


def report(result: Result) -> str:
    head = "| reader | what it does |"
    rule = "|---|---|"
    for size in SIZES:
        label = f"{size} entit{'y' if size == 1 else 'ies'} x 5"
        head += f" {label}: p50 | p99 | p50 / raw | p99 / raw |"
        rule += "---:|---:|---:|---:|"
    lines = [head + " peak RSS |", rule + "---:|"]
    for name in result.latencies:
        reader = READERS[name]
        row = f"| {reader.label} | {reader.does} |"
        for size in SIZES:
            p50, p99 = result.p(name, size, 50), result.p(name, size, 99)
            r50, r99 = p50 / result.p("raw", size, 50), p99 / result.p("raw", size, 99)
            row += f" {_ms(p50)} | {_ms(p99)} | **{r50:.2f}** | {r99:.2f} |"
        lines.append(row + f" {result.peak_rss_mb[name]:.0f} MB |")
    paired = []
    for size in SIZES:
        ratios = result.round_ratios("featurepipe", size)
        paired.append(f"{size} x 5 **{bl.median(ratios):.2f}** ({min(ratios):.2f}-{max(ratios):.2f})")
    lines += [
        "",
        "featurepipe's p99 / raw HMGET's p99 in each round (the same child, taking turns), median (range): "
        + ", ".join(paired)
        + ".",
    ]
    return "\n".join(lines)


INTRO = f"""\
## Online reads: featurepipe vs a raw HMGET vs Feast 0.67

`python bench/online_reads.py --entities N --repeat R` materializes N entities x 5 float features with
featurepipe and with Feast 0.67 (the same rows as bench/materialize.py, same Redis), then times reads:
per round, each reader makes {WARMUP} warm-up calls and {CALLS} timed calls of random entity ids (the same ids
for every reader of a round), for 1 entity x 5 features and for 100 entities x 5 features. featurepipe
and the raw readers of its venv share a child process and take turns call by call (the order reversed
every call), so that they meet the same moments of this noisy machine; the readers in Feast's venv run
in a child process each. Rounds alternate the children's order; p50/p99 are over every timed call of every round
(nearest rank); ratios are to the raw HMGET with redis-py. Below the table, featurepipe's p99 over the
raw HMGET's in each round (both from the same child): a pooled p99 of ~0.1 ms calls is their tenth
slowest of a thousand, which one noisy moment of one round can decide.

- **featurepipe**: `FeatureStore.get_online_features(tenant, entity_type, ids, ["bench_group:f1", ...])`
  (tenant and refs checked against the cached registry, one call of its read script, or one HMGET for a
  single entity; values decoded and TTL-checked into columns);
- **raw HMGET**: one pipelined `HMGET` per entity of featurepipe's own hashes with redis-py, replies
  left as bytes, one round trip;
- **raw read script**: featurepipe's read script (online_read.lua: one call, HMGET of each key inside
  Redis) with redis-py, replies left as bytes: the least work featurepipe's way (one HMGET for a single
  entity is less);
- **raw HMGET, redis-py 7.4**: the raw HMGET from Feast's venv (redis-py 7.4 with hiredis), alone in
  its child: not taking turns with the others, it shows what that client does on a quiet process and
  compares with nothing else here;
- **Feast 0.67**: `FeatureStore.get_online_features(features=[...], entity_rows=[...]).to_dict()` in
  bench/.feast-venv on what its own materialize wrote (protobuf values, `_ts` field, mmh3 field names).

A sample of entities is read back by featurepipe and Feast and compared with the source rows."""


def write(path: Path, result: Result, config: Settings, feast: dict[str, str] | None, load: str) -> None:
    machine = bl.machine(config.database_url, config.redis_url, feast)
    calls = result.repeat * CALLS
    block = (
        f"{bl.now_utc()}, {result.repeat} round(s), {calls} timed calls per reader and size. Machine: {machine}."
        f" Load average (1, 5, 15 min): {load}.\n\n" + report(result)
    )
    bl.write_section(path, "online-reads", INTRO, f"{result.entities:,} entities", block)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entities", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--database-url", default=bl.DEFAULT_DATABASE_URL)
    parser.add_argument("--redis-url", default=bl.DEFAULT_REDIS_URL)
    parser.add_argument("--results", type=Path, default=bl.RESULTS)
    parser.add_argument("--no-results", action="store_true", help="Print only; do not touch RESULTS.md.")
    parser.add_argument("--no-feast", action="store_true", help="Leave Feast out (no venv needed).")
    parser.add_argument("--child", choices=["featurepipe+raw"], help=argparse.SUPPRESS)
    parser.add_argument("--ids", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    config = bl.settings(args.database_url, args.redis_url)
    if args.child:
        calls = json.loads(args.ids.read_text())
        bl.emit(child_featurepipe_and_raw(config, calls))
        return 0
    load_before = bl.load_average()
    result, feast = bench(args, config)
    print(report(result))
    if not args.no_results:
        write(args.results, result, config, feast, f"{load_before} before, {bl.load_average()} after")
    return 0


if __name__ == "__main__":
    sys.exit(main())
