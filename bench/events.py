"""Benchmark: event consumption (events/s) of one and two `feature-store events consume` processes, a raw
Redis consumer as the floor, and end-to-end freshness (publish -> value served) p99.

    python bench/events.py --events 100000 --repeat 3
    python bench/events.py --events 20000 --repeat 1 --no-results

Paths, each on the same N events (15% conversation.created, 60% message.created, 25% feedback.received
over 3 tenants x 3 000 users, ~5% duplicates), published to the 16 partitions once the consumers are up
and own every partition; the clock runs from the first publish until every entry is acknowledged:

- featurepipe, 1 consumer / 2 consumers: the CLI consumer (validate, dead-letter, Lua apply with dedupe,
  offline logging of every value in PostgreSQL, XACK), in processes of their own;
- raw floor: one Python process reading the same streams (XREADGROUP, 2 000 a batch), one pipelined
  HINCRBY/HSET per effect and XACK: no validation, no dedupe, no ordering guarantee, no offline copy.

Freshness: with one consumer running, events of new users are published one at a time and each is
read back with `get_online_features` until it shows; p50/p99 over the samples.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import benchlib as bl
import redis

from feature_store import FeatureStore, Settings
from feature_store.stream import streams
from featurepipe_demo import create_sources, demo_repo_path

DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/featurepipe_bench_events"
PREFIX = "fpbenchev"
TENANTS = ("acme", "globex", "initech")
FRESHNESS_SAMPLES = 300


def build_events(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    users = [(t, f"u{i}") for t in TENANTS for i in range(3000)]
    convs: dict[tuple[str, str], list[str]] = {}
    sent: list[str] = []
    for seq in range(n):
        if sent and rng.random() < 0.05:
            sent.append(rng.choice(sent[-2000:]))
            continue
        tenant, user = rng.choice(users)
        base = {
            "event_id": f"b{seed}-{seq}",
            "tenant_id": tenant,
            "user_id": user,
            "timestamp": f"2026-11-25T10:{seq // 60000 % 60:02d}:{seq // 1000 % 60:02d}.{seq % 1000:03d}Z",
        }
        mine = convs.setdefault((tenant, user), [])
        kind = rng.random()
        if kind < 0.15 or not mine:
            mine.append(f"{user}-c{len(mine)}")
            event = {**base, "event_type": "conversation.created", "conversation_id": mine[-1]}
        elif kind < 0.75:
            event = {
                **base,
                "event_type": "message.created",
                "conversation_id": rng.choice(mine),
                "message_id": f"m{seed}-{seq}",
                "payload": {
                    "length": rng.randint(1, 400),
                    "token_count": rng.randint(1, 90),
                    "detected_intent": "billing",
                },
            }
        else:
            event = {**base, "event_type": "feedback.received", "payload": {"rating": rng.randint(1, 5)}}
        sent.append(json.dumps(event))
    return sent


def config(redis_url: str) -> Settings:
    return Settings(database_url=DATABASE_URL, redis_url=redis_url, redis_prefix=PREFIX)


def prepare(settings: Settings) -> None:
    with FeatureStore(settings=settings) as store:
        store.init()
        create_sources(store.conn)
        store.apply(demo_repo_path())


def reset(settings: Settings) -> None:
    client = redis.Redis.from_url(settings.redis_url)
    for pattern in (f"{PREFIX}:*", f"{PREFIX}~*"):
        bl.unlink_matching(client, pattern)
    client.close()
    with FeatureStore(settings=settings) as store:
        store.conn.execute("DELETE FROM feature_store.offline_rows WHERE job_id IS NULL")
        store.conn.execute("CHECKPOINT")


def wait_for(what: str, check: Callable[[], bool], timeout: float = 600.0, every: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(every)


def leases(client: Any, partitions: int) -> dict[str, int]:
    held: dict[str, int] = {}
    for p in range(partitions):
        owner = client.get(streams.lease_key(PREFIX, p))
        if owner:
            held[owner.decode()] = held.get(owner.decode(), 0) + 1
    return held


def publish_all(client: Any, events: list[str], partitions: int) -> None:
    for i in range(0, len(events), 10_000):
        streams.publish(client, prefix=PREFIX, partitions=partitions, events=events[i : i + 10_000])


def run_featurepipe(settings: Settings, events: list[str], consumers: int, *, backlog: bool = False) -> dict[str, Any]:
    """Consumers up first, then publish (the clock from the first publish); or, with `backlog`, the events
    published first and the clock from the first acknowledgement (consumption alone, no publisher around)."""
    env = {
        **os.environ,
        "FEATURE_STORE_DATABASE_URL": settings.database_url,
        "FEATURE_STORE_REDIS_URL": settings.redis_url,
        "FEATURE_STORE_REDIS_PREFIX": PREFIX,
    }
    exe = str(Path(sys.executable).parent / "feature-store")
    if backlog:
        return _drain_backlog(settings, events, consumers, env, exe)
    procs = start_consumers(exe, env, consumers)
    client = redis.Redis.from_url(settings.redis_url)
    share = -(-settings.event_partitions // consumers)
    wait_for(
        "consumers to share the partitions",
        lambda: (
            sorted(leases(client, settings.event_partitions).values())
            == sorted(
                [share] * (settings.event_partitions // share)
                + ([settings.event_partitions % share] if settings.event_partitions % share else [])
            )
        ),
        every=0.05,
    )
    with FeatureStore(settings=settings) as store:
        started = time.perf_counter()
        publish_all(client, events, settings.event_partitions)
        wait_for("the backlog to drain", lambda: store.event_backlog() == 0)
        elapsed = time.perf_counter() - started
    stats = stop_consumers(procs)
    client.close()
    return {
        "seconds": elapsed,
        "applied": sum(s["applied"] for s in stats),
        "duplicates": sum(s["duplicates"] for s in stats),
        "read": sum(s["read"] for s in stats),
    }


def start_consumers(exe: str, env: dict[str, str], consumers: int) -> list[subprocess.Popen[str]]:
    """`consumers` real `feature-store events consume` processes, each in its own session."""
    return [
        subprocess.Popen(
            [exe, "events", "consume", "--json", "--consumer-id", f"bench{i}"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        for i in range(consumers)
    ]


def stop_consumers(procs: list[subprocess.Popen[str]]) -> list[dict[str, Any]]:
    """Stop the consumers (SIGTERM: they finish their batch) and return the stats each printed."""
    stats = []
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        stats.append(json.loads(out))
    return stats


def _drain_backlog(
    settings: Settings, events: list[str], consumers: int, env: dict[str, str], exe: str
) -> dict[str, Any]:
    client = redis.Redis.from_url(settings.redis_url)
    publish_all(client, events, settings.event_partitions)
    with FeatureStore(settings=settings) as store:
        total = store.event_backlog()
        procs = start_consumers(exe, env, consumers)
        wait_for("the first acknowledgements", lambda: store.event_backlog() < total, every=0.005)
        started, acked = time.perf_counter(), total - store.event_backlog()
        wait_for("the backlog to drain", lambda: store.event_backlog() == 0)
        elapsed = time.perf_counter() - started
    stats = stop_consumers(procs)
    client.close()
    # events/s over what was acknowledged while the clock ran
    return {"seconds": elapsed * len(events) / (len(events) - acked), "applied": sum(s["applied"] for s in stats)}


def run_raw(settings: Settings, events: list[str]) -> dict[str, Any]:
    """The floor: read, one pipelined HINCRBY/HSET per effect, XACK; nothing checked, nothing deduped."""
    client = redis.Redis.from_url(settings.redis_url)
    parts = settings.event_partitions
    for p in range(parts):
        with contextlib.suppress(redis.ResponseError):  # the group exists already
            client.xgroup_create(streams.stream_key(PREFIX, p), "raw", id="0", mkstream=True)
    started = time.perf_counter()
    publish_all(client, events, parts)
    done = 0
    while done < len(events):
        pipe = client.pipeline(transaction=False)
        for p in range(parts):
            pipe.xreadgroup("raw", "raw", {streams.stream_key(PREFIX, p): ">"}, count=2000 // parts)
        replies = pipe.execute()
        pipe = client.pipeline(transaction=False)
        for p, reply in enumerate(replies):
            ids = []
            for _, items in reply or []:
                for entry_id, fields in items:
                    ids.append(entry_id)
                    e = json.loads(fields[b"e"])
                    tenant = e["tenant_id"]
                    if e["event_type"] == "conversation.created":
                        pipe.hincrby(f"{PREFIX}raw:{tenant}:u:{e['user_id']}", "conversation_count", 1)
                    elif e["event_type"] == "message.created":
                        pipe.hincrby(f"{PREFIX}raw:{tenant}:c:{e['conversation_id']}", "message_count", 1)
                        pipe.hset(f"{PREFIX}raw:{tenant}:m:{e['message_id']}", mapping=e["payload"])
                    else:
                        pipe.hset(f"{PREFIX}raw:{tenant}:u:{e['user_id']}", "last_rating", e["payload"]["rating"])
            if ids:
                pipe.xack(streams.stream_key(PREFIX, p), "raw", *ids)
                done += len(ids)
        pipe.execute()
    elapsed = time.perf_counter() - started
    client.close()
    return {"seconds": elapsed, "applied": len(events)}


def freshness(settings: Settings, samples: int) -> list[float]:
    env = {
        **os.environ,
        "FEATURE_STORE_DATABASE_URL": settings.database_url,
        "FEATURE_STORE_REDIS_URL": settings.redis_url,
        "FEATURE_STORE_REDIS_PREFIX": PREFIX,
    }
    exe = str(Path(sys.executable).parent / "feature-store")
    proc = subprocess.Popen(
        [exe, "events", "consume", "--consumer-id", "fresh"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    client = redis.Redis.from_url(settings.redis_url)
    wait_for(
        "the consumer to own every partition",
        lambda: leases(client, settings.event_partitions).get("fresh") == settings.event_partitions,
        every=0.05,
    )
    latencies = []
    with FeatureStore(settings=settings) as store:
        for i in range(samples):
            user = f"fresh-{i}"
            event = {
                "event_type": "conversation.created",
                "event_id": f"fresh-{i}",
                "tenant_id": "acme",
                "user_id": user,
                "conversation_id": f"{user}-c",
                "timestamp": "2026-11-25T10:00:00Z",
            }
            started = time.perf_counter()
            store.publish_events([event])
            while store.get_online_features("acme", "user", [user], ["user_realtime:conversation_count"]).values(
                "user_realtime:conversation_count"
            ) != [1]:
                pass
            latencies.append(time.perf_counter() - started)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    client.close()
    return latencies


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--redis-url", default=bl.DEFAULT_REDIS_URL)
    parser.add_argument("--results", type=Path, default=bl.RESULTS)
    parser.add_argument("--no-results", action="store_true")
    args = parser.parse_args(argv)
    settings = config(args.redis_url)
    load_before = bl.load_average()
    prepare(settings)
    paths: dict[str, Callable[[list[str]], dict[str, Any]]] = {
        "featurepipe, 1 consumer": lambda ev: run_featurepipe(settings, ev, 1),
        "featurepipe, 2 consumers": lambda ev: run_featurepipe(settings, ev, 2),
        "featurepipe, 1 consumer, backlog": lambda ev: run_featurepipe(settings, ev, 1, backlog=True),
        "featurepipe, 2 consumers, backlog": lambda ev: run_featurepipe(settings, ev, 2, backlog=True),
        "raw floor": lambda ev: run_raw(settings, ev),
    }
    runs: dict[str, list[float]] = {name: [] for name in paths}
    for i in range(args.repeat):
        events = build_events(args.events, seed=i)
        distinct = len(set(events))
        order = list(paths) if i % 2 == 0 else list(paths)[::-1]
        for name in order:
            reset(settings)
            result = paths[name](events)
            if name != "raw floor" and result["applied"] != distinct:
                raise SystemExit(f"{name}: applied {result['applied']} events, expected {distinct}")
            runs[name].append(result["seconds"])
            print(
                f"  round {i + 1}/{args.repeat} {name:26s} {args.events / result['seconds']:10,.0f} events/s"
                f" ({result['seconds']:.2f} s)",
                flush=True,
            )
    reset(settings)
    fresh = freshness(settings, FRESHNESS_SAMPLES)
    reset(settings)
    lines = ["| path | wall, median (range) | events/s | vs raw floor |", "|---|---:|---:|---:|"]
    raw = bl.median(runs["raw floor"])
    for name, walls in runs.items():
        wall = bl.median(walls)
        lines.append(
            f"| {name} | {wall:.2f} s ({min(walls):.2f}-{max(walls):.2f}) | {args.events / wall:,.0f} |"
            f" {raw / wall:.2f} |"
        )
    lines.append("")
    lines.append(
        f"Freshness, publish -> `get_online_features` shows it ({len(fresh)} events, one consumer):"
        f" p50 {bl.percentile(fresh, 50) * 1000:.1f} ms, p99 {bl.percentile(fresh, 99) * 1000:.1f} ms."
    )
    table = "\n".join(lines)
    print(table)
    if not args.no_results:
        machine = bl.machine(settings.database_url, settings.redis_url)
        block = (
            f"{bl.now_utc()}, {args.repeat} round(s). Machine: {machine}. Load average (1, 5, 15 min):"
            f" {load_before} before, {bl.load_average()} after.\n\n{table}"
        )
        bl.write_section(args.results, "events", INTRO, f"{args.events:,} events", block)
    return 0


INTRO = """\
## Events: consumers vs a raw Redis consumer; freshness

`python bench/events.py --events N --repeat R`: N events (15% conversation.created, 60% message.created,
25% feedback.received, 3 tenants x 3 000 users, ~5% duplicate deliveries) published to the 16 partitions
once the consumers are up and own every partition; wall = from the first publish until every entry is
acknowledged (publishing overlaps consuming; the publisher shares the machine's 2 cores).

- **featurepipe, 1 / 2 consumers**: `feature-store events consume` processes: validation (pydantic),
  dead letters, one Lua call per batch that applies every effect with its dedupe marker (counters,
  EWMA, newer-only sets), the values logged to the offline store (PostgreSQL) in one statement, XACK;
  checked afterwards: every distinct event applied exactly once;
- **..., backlog**: the same consumers started after all N events were published; the clock runs from
  the first acknowledgement until the last, scaled to N (consumption alone, no publisher sharing the
  cores, process start-up not timed);
- **raw floor**: one Python process, XREADGROUP of the same streams, one pipelined HINCRBY/HSET per
  effect, XACK: no validation, no dedupe, no ordering or lease, no offline copy.

Freshness: one consumer running; an event of a new user is published and read back with
`get_online_features` in a loop until it shows, one event at a time."""


if __name__ == "__main__":
    sys.exit(main())
