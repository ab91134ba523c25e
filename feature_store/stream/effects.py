"""Turn validated events into their effects on stream features and apply them, exactly once, server-side.

`EventApplier.apply` takes events in the order they must be applied (per user: publish order), looks
up which stream features of the event's tenant each one updates (the repo's mapping), and runs one
Lua call (`apply_events.lua`) per batch on a standalone Redis, or one per hash tag on a Redis Cluster
(a script may only touch one slot). Each (event, hash tag) has its own dedupe marker written in the
same atomic step as its updates, so a redelivered or duplicated event changes nothing; an event
split over several tags (on a cluster) that dies half-applied is completed, not repeated, by its
redelivery; on a standalone Redis each event is one atomic part with one marker.
The resulting values are then logged to the offline store in one statement (see offline.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from importlib import resources
from typing import Any

import psycopg
import redis
from redis.cluster import RedisCluster

from feature_store.definitions.models import StreamOp, ValueType
from feature_store.stores.online.base import EPOCH
from feature_store.stores.online.redis import RedisOnlineStore
from feature_store.stream import offline
from feature_store.stream.events import AnyEvent
from feature_store.stream.mapping import MappingCache, StreamTarget

_SCRIPT = resources.files("feature_store.stream").joinpath("apply_events.lua").read_text(encoding="utf-8")

DEDUPE_SECONDS = 7 * 24 * 3600
"""How long an event id is remembered: a duplicate published later than that would be applied again."""


@dataclass
class ApplyResult:
    """What one batch did."""

    applied: int = 0
    """Events whose effects were applied now."""
    duplicates: int = 0
    """Events already applied before (every marker they touch existed)."""
    values: int = 0
    """Feature values written online."""
    offline_rows: int = 0
    """Offline rows written (when `apply` was given a connection)."""
    rows: dict[tuple[str, str, str, datetime], dict[str, object]] = field(default_factory=dict)
    """The values to log offline: (tenant, group, entity, event time) -> {feature: value}."""


@dataclass
class _Call:
    """One script call: its keys and the events' ops, by key index (1-based, as Lua counts)."""

    keys: list[str] = field(default_factory=list)
    index: dict[str, int] = field(default_factory=dict)
    events: list[list[Any]] = field(default_factory=list)
    # Per event in `events`: (event position in the batch, [(target, entity, value set)]).
    meta: list[tuple[int, list[tuple[StreamTarget, str, object]]]] = field(default_factory=list)

    def key_index(self, key: str) -> int:
        found = self.index.get(key)
        if found is None:
            self.keys.append(key)
            found = self.index[key] = len(self.keys)
        return found


class EventApplier:
    """Applies events to the stream features of a Redis (standalone or cluster) online store."""

    def __init__(
        self,
        store: RedisOnlineStore,
        mapping: MappingCache,
        *,
        prefix: str,
        dedupe_seconds: int = DEDUPE_SECONDS,
    ) -> None:
        self._store = store
        self._mapping = mapping
        self._prefix = prefix
        self._dedupe_ms = dedupe_seconds * 1000
        client = store.client
        self._cluster = isinstance(client, RedisCluster)
        self._sha = str(client.script_load(_SCRIPT))
        self._client = client

    def apply(self, events: Sequence[AnyEvent], *, conn: psycopg.Connection | None) -> ApplyResult:
        """Apply the events' effects (in order), then log their values offline on `conn` (if given; else the
        caller logs `result.rows` itself, see offline.log_values).

        Events of unknown or inactive tenants must have been filtered out by the caller.
        """
        result = ApplyResult()
        calls = self._plan(events)
        if not calls:
            return result
        try:
            replies = self._run(list(calls.values()), write_us=time.time_ns() // 1000)
        except redis.exceptions.NoScriptError:  # Redis restarted (scripts are not persisted): load it again
            self._sha = str(self._client.script_load(_SCRIPT))
            replies = self._run(list(calls.values()), write_us=time.time_ns() // 1000)
        rows = result.rows
        fresh: set[int] = set()
        seen: set[int] = set()
        for call, reply in zip(calls.values(), replies, strict=True):
            for (position, ops), encoded in zip(call.meta, reply, strict=True):
                seen.add(position)
                if encoded[:1] == b"1":
                    fresh.add(position)
                stored = json.loads(encoded[1:])
                event = events[position]
                for (target, entity, set_value), value in zip(ops, stored, strict=False):
                    if value != "" and position in fresh:
                        result.values += 1
                    if not target.offline:
                        continue
                    logged = set_value if target.op is StreamOp.SET else _decode(value, target.value_type)
                    if target.op is not StreamOp.SET and value == "":
                        continue
                    rows.setdefault((event.tenant_id, target.group_id, entity, event.timestamp), {})[target.feature] = (
                        logged
                    )
        result.applied = len(fresh)
        result.duplicates = len(seen - fresh)
        if conn is not None and rows:
            result.offline_rows = offline.log_values(conn, rows)
        return result

    def _plan(self, events: Sequence[AnyEvent]) -> dict[str, _Call]:
        """Script calls by hash tag (one for everything on a standalone Redis)."""
        calls: dict[str, _Call] = {}
        for position, event in enumerate(events):
            targets = self._mapping.targets(event.tenant_id, event.event_type)
            event_us = str((event.timestamp - EPOCH) // timedelta(microseconds=1))
            by_tag: dict[str, tuple[_Call, list[Any], list[tuple[StreamTarget, str, object]]]] = {}
            for target in targets:
                entity = getattr(event, target.entity_field, None)
                if entity is None:
                    continue  # e.g. feedback without a message id: nothing of that message to update
                key = self._store.key(event.tenant_id, target.group_id, str(entity))
                # A standalone Redis takes all of an event in one atomic part with one marker; a cluster
                # one part (and marker) per hash tag, as a script may only touch one slot.
                tag = key[len(self._prefix) + 1 : key.index("}") + 1] if self._cluster else ""
                if tag not in by_tag:
                    call = calls.setdefault(tag, _Call())
                    marker = call.key_index(f"{self._prefix}~e:{tag}:{event.event_id}")
                    ops: list[Any] = []
                    call.events.append([marker, event_us, ops])
                    meta: list[tuple[StreamTarget, str, object]] = []
                    call.meta.append((position, meta))
                    by_tag[tag] = (call, ops, meta)
                call, ops, meta = by_tag[tag]
                op, set_value = _op(target, event, call.key_index(key))
                ops.append(op)
                meta.append((target, str(entity), set_value))
        return calls

    def _run(self, calls: list[_Call], *, write_us: int) -> list[list[bytes]]:
        pipe = self._client.pipeline(transaction=False) if not self._cluster else self._client.pipeline()
        for call in calls:
            args = [str(write_us), str(self._dedupe_ms), json.dumps(call.events)]
            pipe.execute_command("EVALSHA", self._sha, len(call.keys), *call.keys, *args)
        replies: list[list[bytes]] = pipe.execute()
        return replies


def _op(target: StreamTarget, event: AnyEvent, key_index: int) -> tuple[list[Any], object]:
    """The script op for one target, and (for set) the value it sets."""
    ttl_ms = (target.ttl_seconds or 0) * 1000
    number_format = "i" if target.value_type is ValueType.INT64 else "f"
    payload = event.payload
    if target.op is StreamOp.COUNT:
        delta = getattr(payload, target.payload_field) if target.payload_field else 1
        return [key_index, target.feature, "c", repr(delta), 0, ttl_ms, number_format], None
    if target.op is StreamOp.EWMA:
        x = float(getattr(payload, target.payload_field or ""))
        return [key_index, target.feature, "e", repr(x), target.alpha, ttl_ms, number_format], None
    value = getattr(payload, target.payload_field or "", None)
    if value is None:
        value = target.default
    return [key_index, target.feature, "s", json.dumps(value), 0, ttl_ms, number_format], value


def _decode(value: str, value_type: ValueType) -> object:
    if value_type is ValueType.INT64:
        return int(value)
    if value_type is ValueType.FLOAT64:
        return float(value)
    return json.loads(value)
