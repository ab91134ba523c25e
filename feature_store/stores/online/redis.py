"""Online store: the latest value of each feature per entity in Redis, for low-latency serving.

Layout: one hash per (tenant, group, entity) at `{prefix}:{tenant}:{group}:{entity}`, one field per
feature holding `event_time_us|write_time_us|value_json`. Writes go through a Lua script that keeps
only newer values (event time, then write time) and refreshes the group's TTL, server-side and
atomically, so concurrent writers cannot race the way a read-then-write from Python would."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from importlib import resources

import redis

from feature_store.config import check_redis_prefix
from feature_store.serving.models import OnlineValue, OnlineValueStatus
from feature_store.stores.online.base import EPOCH, FeatureSpec, OnlineStore
from feature_store.values import coerce
from feature_store.windows import TimeWindow


class RedisOnlineStore(OnlineStore):
    """Online store on a standalone Redis.

    One Lua call writes a batch of keys, so on Redis Cluster a batch would have to be split by hash
    slot first (not done yet); reads are plain pipelined HMGETs and would work there as they are.
    """

    def __init__(self, client: redis.Redis, *, prefix: str = "fs") -> None:
        check_redis_prefix(prefix)  # no `:` or glob characters: teardown's SCAN pattern stays in this store
        self._client = client
        self._prefix = prefix
        self._script = client.register_script(
            resources.files("feature_store.stores.online").joinpath("online_write.lua").read_text(encoding="utf-8")
        )

    @property
    def client(self) -> redis.Redis:
        return self._client

    def key(self, tenant_id: str, group_id: str, entity_id: str) -> str:
        return f"{self._prefix}:{tenant_id}:{group_id}:{_escape(entity_id)}"

    def write_batch(
        self,
        *,
        tenant_id: str,
        group_id: str,
        rows: Sequence[tuple[str, str]],
        ttl_seconds: int | None,
        write_time_us: int,
        replaces: TimeWindow | None = None,
        force: bool = False,
    ) -> int:
        if not rows:
            return 0
        keys = [self.key(tenant_id, group_id, entity_id) for entity_id, _ in rows]
        payload = "[" + ",".join(fields for _, fields in rows) + "]"
        ttl_ms = (ttl_seconds or 0) * 1000
        window = [str(_epoch_us(replaces.start)), str(_epoch_us(replaces.end))] if replaces else ["", ""]
        args = [str(write_time_us), str(ttl_ms), *window, "1" if force else "0", payload]
        return int(self._script(keys=keys, args=args))

    def instance_id(self) -> str:
        return str(self._client.info("server")["run_id"])

    def count_present(self, *, tenant_id: str, group_id: str, entity_ids: Sequence[str]) -> int:
        if not entity_ids:
            return 0
        return int(self._client.exists(*(self.key(tenant_id, group_id, e) for e in entity_ids)))

    def read(
        self, *, tenant_id: str, entity_ids: Sequence[str], features: Sequence[FeatureSpec]
    ) -> list[dict[str, OnlineValue]]:
        by_group: dict[str, list[FeatureSpec]] = {}
        for spec in features:
            by_group.setdefault(spec.group_id, []).append(spec)
        pipe = self._client.pipeline(transaction=False)
        for entity_id in entity_ids:
            for group_id, specs in by_group.items():
                pipe.hmget(self.key(tenant_id, group_id, entity_id), [s.name for s in specs])
        replies = iter(pipe.execute())
        now_us = time.time_ns() // 1000
        result: list[dict[str, OnlineValue]] = []
        for _ in entity_ids:
            row: dict[str, OnlineValue] = {}
            for group_id, specs in by_group.items():
                for spec, raw in zip(specs, next(replies), strict=True):
                    row[f"{group_id}:{spec.name}"] = _decode(raw, spec, now_us)
            result.append(row)
        return result

    def teardown(self, *, tenant_id: str | None = None) -> int:
        # Escaped, so a tenant id like `a*` clears tenant `a*` and never `ab`.
        pattern = _glob_escape(f"{self._prefix}:{tenant_id}:" if tenant_id is not None else f"{self._prefix}:") + "*"
        removed = 0
        batch: list[str] = []
        for key in self._client.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                removed += int(self._client.unlink(*batch))
                batch.clear()
        if batch:
            removed += int(self._client.unlink(*batch))
        return removed


def _epoch_us(value: datetime) -> int:
    return (value - EPOCH) // timedelta(microseconds=1)


def _decode(raw: bytes | None, spec: FeatureSpec, now_us: int) -> OnlineValue:
    if raw is None:
        return OnlineValue()
    event_us, write_us, value_json = raw.decode().split("|", 2)
    event_time = EPOCH + timedelta(microseconds=int(event_us))
    if spec.ttl_seconds and now_us - int(write_us) > spec.ttl_seconds * 1_000_000:
        return OnlineValue(event_time=event_time, status=OnlineValueStatus.EXPIRED)
    value = coerce(json.loads(value_json), spec.value_type)
    return OnlineValue(value=value, event_time=event_time, status=OnlineValueStatus.PRESENT)


def _glob_escape(text: str) -> str:
    """`text` as a literal in a Redis MATCH pattern (`*`, `?`, `[`, `]` and `\\` escaped)."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def _escape(entity_id: str) -> str:
    """Keep the key's `:` separators unambiguous whatever an entity id contains."""
    return entity_id.replace("%", "%25").replace(":", "%3A")
