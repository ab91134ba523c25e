"""An event consumer: owns some partitions through leases, applies their events in order, then acknowledges.

Several consumers (`feature-store events consume` processes, on any machines) share the partitions:
each heartbeats into a roster, takes its fair share (partitions / live consumers) of the leases that
are free, and gives back what is above its share between batches, so partitions spread as consumers
come and go. A lease lives `event_lease_s` unless renewed: a consumer that dies loses its partitions
after that, and their new owner first claims and finishes the old owner's pending entries
(XAUTOCLAIM) before reading new ones, so each user's events are still applied in publish order.

Per batch: read (claimed entries first), validate, dead-letter what is malformed or of an unknown
tenant (with the reason, never blocking the partition), apply the rest atomically and at most once
(effects.py), log the values offline, and only then XACK. A crash anywhere before XACK means
redelivery, which the dedupe markers make harmless.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
import uuid
import zlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import psycopg
import redis

from feature_store.errors import EventError
from feature_store.stream import offline, streams
from feature_store.stream.effects import ApplyResult, EventApplier
from feature_store.stream.events import AnyEvent, parse_event
from feature_store.stream.mapping import MappingCache

log = logging.getLogger(__name__)

# Renew a lease (compare the token, extend) or release it (compare, delete): never touch another owner's.
_RENEW = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


@dataclass
class ConsumerStats:
    read: int = 0
    applied: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    claimed: int = 0
    """Entries taken over from a previous owner's pending list."""


Entry = tuple[int, str, bytes]
"""(partition, entry id, raw event)."""


class EventConsumer:
    """One consumer of a store's event partitions (see the module docstring)."""

    def __init__(
        self,
        *,
        client: Any,
        applier: EventApplier,
        mapping: MappingCache,
        connect: Callable[[], psycopg.Connection] | None,
        prefix: str,
        partitions: int,
        lease_s: float,
        consumer_id: str | None = None,
        batch_size: int = 2000,
    ) -> None:
        self._client = client
        self._applier = applier
        self._mapping = mapping
        self._connect = connect
        self._conn: psycopg.Connection | None = None
        # Offline logging of a batch runs in this thread while the next batch is applied; the batch is
        # acknowledged once its values are committed (a crash before means redelivery, deduped).
        self._writer: ThreadPoolExecutor | None = None
        self._in_flight: tuple[Future[int] | None, list[Entry], list[tuple[Entry, str]], ApplyResult] | None = None
        self._prefix = prefix
        self._partitions = partitions
        self._lease_ms = max(1, int(lease_s * 1000))
        self.consumer_id = consumer_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._batch_size = batch_size
        self._owned: set[int] = set()
        self._to_claim: dict[int, str] = {}  # partition -> XAUTOCLAIM cursor, until the old PEL is done
        self._grouped: set[int] = set()
        self._renewed_at = 0.0
        self._renew_sha = str(client.script_load(_RENEW))
        self._release_sha = str(client.script_load(_RELEASE))
        self.stats = ConsumerStats()

    @property
    def owned(self) -> frozenset[int]:
        return frozenset(self._owned)

    # -- the loop ------------------------------------------------------------------------------

    def run(self, *, stop: Callable[[], bool] = lambda: False, max_idle_s: float | None = None) -> ConsumerStats:
        """Consume until `stop()` says so, or nothing came for `max_idle_s`; leases are given back at the end."""
        idle_since = time.monotonic()
        try:
            while not stop():
                if self.step():
                    idle_since = time.monotonic()
                    continue
                self.flush()
                if max_idle_s is not None and time.monotonic() - idle_since >= max_idle_s:
                    break
                time.sleep(0.02)  # nothing to read: poll again shortly
            self.flush()
        finally:
            self.release_all()
            if self._writer is not None:
                self._writer.shutdown(wait=True)
                self._writer = None
            if self._conn is not None:
                self._conn.close()
                self._conn = None
        return self.stats

    def step(self) -> int:
        """Balance leases, then handle one batch; returns the entries handled (0 when there was nothing)."""
        self._balance()
        entries = self._claim() or self._read()
        if not entries:
            return 0
        if not self._still_own({p for p, _, _ in entries}):
            entries = [e for e in entries if e[0] in self._owned]
        self._handle(entries)
        return len(entries)

    def flush(self) -> None:
        """Wait for the batch in flight to be logged offline, then dead-letter and acknowledge it."""
        if self._in_flight is None:
            return
        future, entries, dead, result = self._in_flight
        self._in_flight = None
        if future is not None:
            result.offline_rows = future.result()  # raises what the offline write raised: nothing is acked
        pipe = streams.pipeline(self._client)
        for (partition, entry_id, raw), reason in dead:
            pipe.xadd(
                streams.dead_letter_key(self._prefix),
                {"reason": reason, "partition": str(partition), "entry_id": entry_id, "event": raw},
            )
        by_partition: dict[int, list[str]] = {}
        for partition, entry_id, _ in entries:
            by_partition.setdefault(partition, []).append(entry_id)
        for partition, ids in by_partition.items():
            pipe.xack(streams.stream_key(self._prefix, partition), streams.GROUP, *ids)
        pipe.execute()
        self.stats.dead_lettered += len(dead)

    def release_all(self) -> None:
        """Give back every lease and leave the roster (a clean stop hands partitions over at once)."""
        self.flush()
        for partition in list(self._owned):
            self._script(self._release_sha, _RELEASE, streams.lease_key(self._prefix, partition), self.consumer_id)
        self._owned.clear()
        self._to_claim.clear()
        self._client.zrem(streams.consumers_key(self._prefix), self.consumer_id)

    # -- leases --------------------------------------------------------------------------------

    def _balance(self) -> None:
        now_ms = self._server_ms()
        roster = streams.consumers_key(self._prefix)
        self._client.zadd(roster, {self.consumer_id: now_ms + self._lease_ms})
        self._client.zremrangebyscore(roster, "-inf", now_ms)
        alive = max(1, int(self._client.zcard(roster)))
        share = math.ceil(self._partitions / alive)
        if time.monotonic() - self._renewed_at > self._lease_ms / 3000:
            self._still_own(set(self._owned))
        for partition in sorted(self._owned, reverse=True)[: max(0, len(self._owned) - share)]:
            if partition in self._to_claim:
                continue  # finish the old owner's entries first
            self.flush()  # nothing of it in flight when the next owner takes it
            self._script(self._release_sha, _RELEASE, streams.lease_key(self._prefix, partition), self.consumer_id)
            self._owned.discard(partition)
        if len(self._owned) >= share:
            return
        start = zlib.crc32(self.consumer_id.encode()) % self._partitions
        for offset in range(self._partitions):
            partition = (start + offset) % self._partitions
            if partition in self._owned:
                continue
            key = streams.lease_key(self._prefix, partition)
            if self._client.set(key, self.consumer_id, nx=True, px=self._lease_ms):
                self._ensure_group(partition)
                self._owned.add(partition)
                self._to_claim[partition] = "0-0"
                log.info("consumer %s took partition %s", self.consumer_id, partition)
                if len(self._owned) >= share:
                    return

    def _still_own(self, partitions: set[int]) -> bool:
        """Renew these leases; drop the ones lost (another consumer owns them now). True if none was lost."""
        ordered = sorted(partitions)
        try:
            replies = self._renew_all(ordered)
        except redis.exceptions.NoScriptError:  # Redis restarted (scripts are not persisted)
            self._renew_sha = str(self._client.script_load(_RENEW))
            replies = self._renew_all(ordered)
        kept = True
        for partition, renewed in zip(ordered, replies, strict=True):
            if not renewed:
                log.warning("consumer %s lost its lease on partition %s", self.consumer_id, partition)
                self._owned.discard(partition)
                self._to_claim.pop(partition, None)
                kept = False
        self._renewed_at = time.monotonic()
        return kept

    def _renew_all(self, partitions: list[int]) -> list[int]:
        pipe = streams.pipeline(self._client)
        for partition in partitions:
            key = streams.lease_key(self._prefix, partition)
            pipe.execute_command("EVALSHA", self._renew_sha, 1, key, self.consumer_id, self._lease_ms)
        return list(pipe.execute())

    def _script(self, sha: str, text: str, key: str, *args: object) -> Any:
        try:
            return self._client.execute_command("EVALSHA", sha, 1, key, *args)
        except redis.exceptions.NoScriptError:
            return self._client.eval(text, 1, key, *args)

    def _ensure_group(self, partition: int) -> None:
        if partition in self._grouped:
            return
        try:
            self._client.xgroup_create(
                streams.stream_key(self._prefix, partition), streams.GROUP, id="0", mkstream=True
            )
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._grouped.add(partition)

    @staticmethod
    def _server_ms() -> int:
        # The roster only decides fair shares; leases themselves expire by Redis's clock (PX).
        return time.time_ns() // 1_000_000

    # -- reading -------------------------------------------------------------------------------

    def _claim(self) -> list[Entry]:
        """The previous owners' pending entries of newly taken partitions, oldest first."""
        for partition, cursor in list(self._to_claim.items()):
            reply = self._client.xautoclaim(
                streams.stream_key(self._prefix, partition),
                streams.GROUP,
                self.consumer_id,
                min_idle_time=0,
                start_id=cursor,
                count=self._batch_size,
            )
            next_cursor, claimed = reply[0], reply[1]
            next_cursor = next_cursor.decode() if isinstance(next_cursor, bytes) else str(next_cursor)
            if next_cursor == "0-0":
                del self._to_claim[partition]
            else:
                self._to_claim[partition] = next_cursor
            entries = [(partition, _text(i), fields[b"e"]) for i, fields in claimed if fields]
            if entries:
                self.stats.claimed += len(entries)
                return entries
        return []

    def _read(self) -> list[Entry]:
        # A partition whose previous owner's entries are not all claimed yet is not read past them.
        ordered = sorted(p for p in self._owned if p not in self._to_claim)
        if not ordered:
            return []
        count = max(1, self._batch_size // len(ordered))
        pipe = streams.pipeline(self._client)
        for partition in ordered:
            pipe.xreadgroup(
                streams.GROUP, self.consumer_id, {streams.stream_key(self._prefix, partition): ">"}, count=count
            )
        entries: list[Entry] = []
        for partition, reply in zip(ordered, pipe.execute(), strict=True):
            for _, items in reply or []:
                entries.extend((partition, _text(i), fields.get(b"e", b"")) for i, fields in items)
        return entries

    # -- handling ------------------------------------------------------------------------------

    def _handle(self, entries: list[Entry]) -> None:
        events: list[AnyEvent] = []
        dead: list[tuple[Entry, str]] = []
        for entry in entries:
            try:
                event = parse_event(entry[2])
            except EventError as exc:
                dead.append((entry, str(exc)))
                continue
            if not self._mapping.tenant_active(event.tenant_id):
                dead.append((entry, f"tenant {event.tenant_id!r} is not a registered, active tenant"))
                continue
            events.append(event)
        result = self._applier.apply(events, conn=None)
        future = None
        if result.rows and self._connect is not None:
            if self._conn is None:
                self._conn = self._connect()
            if self._writer is None:
                self._writer = ThreadPoolExecutor(1, thread_name_prefix="offline-log")
            future = self._writer.submit(offline.log_values, self._conn, result.rows)
        self.flush()  # the previous batch: logged by now (it ran while this one was applied), so ack it
        self._in_flight = (future, entries, dead, result)
        self.stats.read += len(entries)
        self.stats.applied += result.applied
        self.stats.duplicates += result.duplicates


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
