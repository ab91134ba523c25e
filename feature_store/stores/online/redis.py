"""Online store on a standalone Redis: the latest value of each feature per entity, for low-latency serving.

Layout: one hash per (tenant, group, entity) at `{prefix}:{{tenant}:{group}:{bucket}}:{entity}`, one
field per feature holding `event_time_us|write_time_us|value_json`, and a field `~` summarising the
latest event and write times in the hash. The `{...}` part is a Redis Cluster hash tag: keys of one
bucket (a hash of the entity id, `BUCKETS` per group) share a slot, so the cluster backend can write a
bucket's keys in one script call while a group still spreads over every node.

Writes go through a Lua script that keeps only newer values (see online_write.lua), server-side and
atomically, so concurrent writers cannot race the way a read-then-write from Python would.
"""

from __future__ import annotations

import json
import re
import time
import zlib
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timedelta
from importlib import resources
from typing import Any

import msgpack
import redis
from psycopg import sql

from feature_store.config import Settings, check_redis_prefix
from feature_store.serving.models import OnlineFeatures, OnlineValueStatus
from feature_store.stores.online.base import (
    EPOCH,
    FIELD_SEPARATOR,
    REMOVE,
    VALUE_MARK,
    FeatureSpec,
    OnlineStore,
    OnlineWrite,
    Payload,
    StampedValues,
)
from feature_store.types import FeatureValue
from feature_store.values import PARSERS
from feature_store.windows import TimeWindow

BUCKETS = 256
"""Hash-tag buckets per (tenant, group): how many slots (of 16 384) one group's keys spread over."""

READ_SCRIPT_KEYS = 200
"""Keys per call of the read script: ~1 ms of the server's time (~5 us a key), which no other client
gets meanwhile (pipelined commands interleave with theirs)."""

_SCRIPTS = resources.files("feature_store.stores.online")
_SCRIPT = _SCRIPTS.joinpath("online_write.lua").read_text(encoding="utf-8")
READ_SCRIPT = _SCRIPTS.joinpath("online_read.lua").read_text(encoding="utf-8")

Replies = list[list[bytes | None]]
"""Per key read, its fields' stored texts in the order asked for (None: not stored)."""


class RedisOnlineStore(OnlineStore):
    """Online store on one Redis server (or any client speaking to one keyspace)."""

    def __init__(self, client: redis.Redis, *, prefix: str = "fs", owns_client: bool = False) -> None:
        check_redis_prefix(prefix)  # no `:` or glob characters: teardown's SCAN pattern stays in this store
        self._client = client
        self._prefix = prefix
        self._owns_client = owns_client
        self._script = client.register_script(_SCRIPT)
        self._read_script = client.register_script(READ_SCRIPT)

    @classmethod
    def from_settings(cls, settings: Settings, client: Any = None) -> RedisOnlineStore:
        from feature_store.db import connect_redis

        if client is not None:
            return cls(client, prefix=settings.redis_prefix)
        return cls(connect_redis(settings.redis_url), prefix=settings.redis_prefix, owns_client=True)

    @property
    def client(self) -> Any:
        return self._client

    def key(self, tenant_id: str, group_id: str, entity_id: str) -> str:
        bucket = zlib.crc32(entity_id.encode()) % BUCKETS
        return f"{self._prefix}:{{{tenant_id}:{group_id}:{bucket:03d}}}:{_escape(entity_id)}"

    # -- writes --------------------------------------------------------------------------------

    def encode_sql(self, *, write_time_us: int) -> sql.Composable:
        # [oldest_event_us, newest_event_us, has_removals, [field, ...], ["event_us|write_us|value_json" or ""]]:
        # the stored fields are built here, in PostgreSQL, so the script only compares and stores
        # (`_args` flattens the two lists into the script's field, value, ... pairs).
        event_us = sql.SQL("(extract(epoch FROM x.event_time) * 1000000)::bigint")
        return sql.SQL(
            "json_build_array(min({ev})::text, max({ev})::text, bool_or(x.event_time IS NULL)::int,"
            " json_agg(x.feature_name),"
            " json_agg(CASE WHEN x.event_time IS NULL THEN ''"
            "  ELSE {ev}::text || {write} || coalesce(x.value::text, 'null') END))::text"
        ).format(ev=event_us, write=sql.Literal(f"|{int(write_time_us)}|"))

    def encode(self, values: Sequence[OnlineWrite], *, write_time_us: int) -> list[tuple[str, Payload]]:
        by_entity: dict[str, list[OnlineWrite]] = {}
        for v in values:
            by_entity.setdefault(v.entity_id, []).append(v)
        rows: list[tuple[str, Payload]] = []
        pack = msgpack.Packer().pack
        for entity, items in by_entity.items():
            events = [_epoch_us(v.event_time) for v in items if v.value is not REMOVE]
            stored = [
                "" if v.value is REMOVE else f"{_epoch_us(v.event_time)}|{write_time_us}|{json.dumps(v.value)}"
                for v in items
            ]
            oldest, newest = (str(min(events)), str(max(events))) if events else (None, None)
            removals = int(len(events) < len(items))
            rows.append((entity, pack(_flat(oldest, newest, removals, [v.feature for v in items], stored))))
        return rows

    def encode_stamped(self, rows: Sequence[StampedValues], *, write_time_us: int) -> list[tuple[str, Payload]]:
        # The script's payload with the value texts as PostgreSQL wrote them (never re-encoded): the
        # fields text is already its name, value, ... list once each value mark becomes the stamp.
        pack = msgpack.Packer().pack
        write = int(write_time_us)
        payloads: list[tuple[str, Payload]] = []
        for entity, event_us, fields in rows:
            event = str(event_us)
            pairs = fields.replace(VALUE_MARK, f"{event}|{write}|").split(FIELD_SEPARATOR)
            payloads.append((entity, pack([event, event, 0, *pairs])))
        return payloads

    def write_encoded(
        self,
        *,
        tenant_id: str,
        group_id: str,
        rows: Sequence[tuple[str, Payload]],
        ttl_seconds: int | None,
        write_time_us: int,
        replaces: TimeWindow | None = None,
        force: bool = False,
    ) -> int:
        if not rows:
            return 0
        keys = [self.key(tenant_id, group_id, entity_id) for entity_id, _ in rows]
        return int(self._script(keys=keys, args=self._args(rows, ttl_seconds, write_time_us, replaces, force)))

    @staticmethod
    def _args(
        rows: Iterable[tuple[str, Payload]],
        ttl_seconds: int | None,
        write_time_us: int,
        replaces: TimeWindow | None,
        force: bool,
    ) -> list[str | bytes]:
        """The script's arguments; its payload a MessagePack array of the entities' payloads (one
        from `encode_sql` is JSON text, rewritten: the script unpacks MessagePack in half the time)."""
        window = [str(_epoch_us(replaces.start)), str(_epoch_us(replaces.end))] if replaces else ["", ""]
        packer = msgpack.Packer()
        packed = [p if isinstance(p, bytes) else packer.pack(_flat(*json.loads(p))) for _, p in rows]
        payload = packer.pack_array_header(len(packed)) + b"".join(packed)
        return [str(write_time_us), str((ttl_seconds or 0) * 1000), *window, "1" if force else "0", payload]

    # -- reads and upkeep ----------------------------------------------------------------------

    def read(self, *, tenant_id: str, entity_ids: Sequence[str], features: Sequence[FeatureSpec]) -> OnlineFeatures:
        by_group: dict[str, list[FeatureSpec]] = {}
        for spec in features:
            by_group.setdefault(spec.group_id, []).append(spec)
        groups = list(by_group.items())
        reads = [([self.key(tenant_id, g, e) for e in entity_ids], [s.name for s in specs]) for g, specs in groups]
        replies_by_group = self.fetch(reads)
        now_us = time.time_ns() // 1000
        result = OnlineFeatures(entity_ids, [s.ref for s in features])
        present, missing, expired = OnlineValueStatus.PRESENT, OnlineValueStatus.MISSING, OnlineValueStatus.EXPIRED
        for (_, specs), replies_of_group in zip(groups, replies_by_group, strict=True):
            for f, spec in enumerate(specs):
                parse = PARSERS[spec.value_type]
                # Each stored field is "event_us|write_us|value_json"; a column is built in one pass each.
                parts = [None if (raw := reply[f]) is None else raw.split(b"|", 2) for reply in replies_of_group]
                events: list[int | None] = [None if p is None else int(p[0]) for p in parts]
                if spec.ttl_seconds:
                    oldest_write = now_us - spec.ttl_seconds * 1_000_000
                    parts = [None if p is None or int(p[1]) < oldest_write else p for p in parts]
                    statuses = [
                        missing if e is None else present if p is not None else expired
                        for e, p in zip(events, parts, strict=True)
                    ]
                else:
                    statuses = [missing if p is None else present for p in parts]
                values: list[FeatureValue] = [None if p is None else parse(p[2]) for p in parts]
                result.set_column(spec.ref, values, events, statuses)
        return result

    def fetch(self, reads: Sequence[tuple[Sequence[str], Sequence[str]]]) -> list[Replies]:
        """For each (keys, fields) read, every key's values of those fields; all in one round trip.

        The keys go in chunks of `READ_SCRIPT_KEYS` (a script holds the server for its whole run): a
        chunk of several keys is one call of the read script (see online_read.lua), of one key an HMGET.
        """
        size = READ_SCRIPT_KEYS
        chunked = [(fields, [keys[i : i + size] for i in range(0, len(keys), size)]) for keys, fields in reads]
        sha = self._read_script.sha

        def execute() -> list[Any]:
            pipe = self._client.pipeline(transaction=False)
            for fields, chunks in chunked:
                for chunk in chunks:
                    if len(chunk) == 1:
                        pipe.hmget(chunk[0], fields)
                    else:
                        pipe.evalsha(sha, len(chunk), *chunk, *fields)
            return list(pipe.execute())

        try:
            replies = iter(execute())
        except redis.exceptions.NoScriptError:  # the server restarted or its scripts were flushed
            self._client.script_load(READ_SCRIPT)
            replies = iter(execute())
        return [
            [reply for chunk in chunks for reply in ([next(replies)] if len(chunk) == 1 else next(replies))]
            for _, chunks in chunked
        ]

    def instance_id(self) -> str:
        return str(self._client.info("server")["run_id"])

    def count_present(self, *, tenant_id: str, group_id: str, entity_ids: Sequence[str]) -> int:
        if not entity_ids:
            return 0
        return int(self._client.exists(*(self.key(tenant_id, group_id, e) for e in entity_ids)))

    def scan_keys(self, *, tenant_id: str | None = None, group_id: str | None = None) -> Iterator[bytes]:
        """The keys of this store (of one tenant, or of one tenant's group), as SCAN finds them."""
        # Escaped, so a tenant id like `a*` finds tenant `a*` and never `ab`.
        start = f"{self._prefix}:"
        if tenant_id is not None:
            start += f"{{{tenant_id}:" + (f"{group_id}:" if group_id is not None else "")
        yield from self._client.scan_iter(match=_glob_escape(start) + "*", count=1000)

    @staticmethod
    def entity_of(key: bytes | str) -> str:
        """The entity id a key stores (the inverse of `key`)."""
        text = key.decode() if isinstance(key, bytes) else key
        return text[text.index("}:") + 2 :].replace("%3A", ":").replace("%25", "%")

    def teardown(self, *, tenant_id: str | None = None) -> int:
        removed = 0
        batch: list[Any] = []
        for key in self.scan_keys(tenant_id=tenant_id):
            batch.append(key)
            if len(batch) >= 1000:
                removed += int(self._client.unlink(*batch))
                batch.clear()
        if batch:
            removed += int(self._client.unlink(*batch))
        return removed

    def close(self) -> None:
        if self._owns_client:
            self._client.close()


def _flat(
    oldest: str | None, newest: str | None, removals: int, fields: Sequence[str], values: Sequence[str]
) -> list[Any]:
    """One entity's payload as the script's flat list (`encode_sql`'s [oldest, newest, removals,
    [field, ...], [value, ...]] as its arguments, or the same built in Python)."""
    flat: list[Any] = [oldest or "", newest or "", removals]  # no nil: the script counts the list's length
    for field, value in zip(fields, values, strict=True):
        flat += (field, value)
    return flat


def _epoch_us(value: datetime) -> int:
    return (value - EPOCH) // timedelta(microseconds=1)


def _glob_escape(text: str) -> str:
    """`text` as a literal in a Redis MATCH pattern (`*`, `?`, `[`, `]` and `\\` escaped)."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def _escape(entity_id: str) -> str:
    """Keep the key's `:` separators unambiguous whatever an entity id contains."""
    return entity_id.replace("%", "%25").replace(":", "%3A")
