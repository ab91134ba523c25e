"""Where events live in Redis: partitioned streams, leases, the consumer roster and the dead-letter stream.

Partition = crc32(tenant, user) mod `event_partitions`, so one user's events stay in one stream, in
publish order. Every key has its own hash tag, so the same layout works on a Redis Cluster (each
partition a slot of its own; nothing here needs two keys in one command).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from redis.cluster import RedisCluster

from feature_store.stream.events import AnyEvent

GROUP = "featurepipe"
"""The consumer group every consumer of a store joins."""

DEAD_LETTER_FIELDS = ("reason", "partition", "entry_id", "event")


def partition_of(tenant_id: str, user_id: str, partitions: int) -> int:
    return zlib.crc32(f"{tenant_id}\x1f{user_id}".encode()) % partitions


def stream_key(prefix: str, partition: int) -> str:
    return f"{prefix}~events:{{p{partition}}}"


def lease_key(prefix: str, partition: int) -> str:
    return f"{prefix}~lease:{{p{partition}}}"


def dead_letter_key(prefix: str) -> str:
    return f"{prefix}~events:dead"


def consumers_key(prefix: str) -> str:
    return f"{prefix}~consumers"


def pipeline(client: Any) -> Any:
    """A non-transactional pipeline on a standalone client or a cluster client alike."""
    return client.pipeline() if isinstance(client, RedisCluster) else client.pipeline(transaction=False)


def publish(client: Any, *, prefix: str, partitions: int, events: Sequence[AnyEvent | str]) -> list[str]:
    """Append events (validated models, or raw JSON for a producer outside this library) in one pipeline.

    Returns the stream entry ids, in order.
    """
    pipe = pipeline(client)
    for event in events:
        if isinstance(event, str):
            try:
                data = json.loads(event)
            except ValueError:
                data = None  # malformed: any partition will do, its consumer dead-letters it
            if not isinstance(data, dict):
                data = {}
            body = event
            tenant, user = str(data.get("tenant_id", "")), str(data.get("user_id", ""))
        else:
            body = event.model_dump_json()
            tenant, user = event.tenant_id, event.user_id
        pipe.xadd(stream_key(prefix, partition_of(tenant, user, partitions)), {"e": body})
    return [i.decode() if isinstance(i, bytes) else str(i) for i in pipe.execute()]


@dataclass(frozen=True)
class DeadLetter:
    """An event a consumer could not apply, with why."""

    reason: str
    partition: int
    entry_id: str
    event: str
    dead_lettered_at: datetime | None = None


def dead_letters(client: Any, *, prefix: str, count: int = 100) -> list[DeadLetter]:
    """The oldest `count` dead-lettered events."""
    found = []
    for entry_id, fields in client.xrange(dead_letter_key(prefix), count=count):
        f = {k.decode(): v.decode() for k, v in fields.items()}
        ms = int(entry_id.decode().split("-")[0])
        found.append(
            DeadLetter(
                reason=f["reason"],
                partition=int(f["partition"]),
                entry_id=f["entry_id"],
                event=f["event"],
                dead_lettered_at=datetime.fromtimestamp(ms / 1000).astimezone(),
            )
        )
    return found


def backlog(client: Any, *, prefix: str, partitions: int) -> int:
    """Entries not acknowledged yet, over every partition (unread + pending): 0 when consumers are done."""
    pipe = pipeline(client)
    for p in range(partitions):
        pipe.xlen(stream_key(prefix, p))
    lengths = pipe.execute()
    total = 0
    for p, length in enumerate(lengths):
        if not length:
            continue
        groups = {g["name"].decode(): g for g in client.xinfo_groups(stream_key(prefix, p))}
        group = groups.get(GROUP)
        if group is None:
            total += int(length)
            continue
        lag = group.get("lag")
        total += int(group["pending"]) + (int(lag) if lag is not None else int(length))
    return total
