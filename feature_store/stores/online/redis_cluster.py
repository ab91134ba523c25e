"""Online store on a Redis Cluster: the standalone layout and script, a batch split by hash-tag bucket.

A Lua script may only touch keys of one slot, so each bucket's keys (which share their hash tag, see
`redis.py`) go in a script call of their own; the calls of a batch are pipelined to each node at once.
Reads are pipelined HMGETs (the standalone read script would see keys of many slots); upkeep is the
standalone backend's, through redis-py's cluster client (which routes each command to its node and
splits multi-key EXISTS/UNLINK by slot).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.cluster import RedisCluster

from feature_store.config import Settings
from feature_store.errors import ConnectionFailedError
from feature_store.stores.online.base import Payload
from feature_store.stores.online.redis import RedisOnlineStore, Replies
from feature_store.windows import TimeWindow


class RedisClusterOnlineStore(RedisOnlineStore):
    """Online store on a Redis Cluster (`FEATURE_STORE_ONLINE_BACKEND=redis-cluster`)."""

    def __init__(self, client: RedisCluster, *, prefix: str = "fs", owns_client: bool = False) -> None:
        super().__init__(client, prefix=prefix, owns_client=owns_client)  # type: ignore[arg-type]
        self._sha = client.script_load(self._script.script)

    @classmethod
    def from_settings(cls, settings: Settings, client: Any = None) -> RedisClusterOnlineStore:
        if client is not None:
            return cls(client, prefix=settings.redis_prefix)
        try:
            cluster = RedisCluster.from_url(settings.redis_url, socket_connect_timeout=5)
            cluster.ping()
        except Exception as exc:  # redis-py raises several kinds while discovering the cluster
            raise ConnectionFailedError("Redis", settings.redis_url, exc) from exc
        return cls(cluster, prefix=settings.redis_prefix, owns_client=True)

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
        by_slot: dict[str, list[tuple[str, tuple[str, Payload]]]] = {}
        for row in rows:
            key = self.key(tenant_id, group_id, row[0])
            by_slot.setdefault(key[: key.index("}") + 1], []).append((key, row))
        pipe = self._client.pipeline()
        for batch in by_slot.values():
            keys = [key for key, _ in batch]
            args = self._args((row for _, row in batch), ttl_seconds, write_time_us, replaces, force)
            pipe.execute_command("EVALSHA", self._sha, len(keys), *keys, *args)
        return sum(int(n) for n in pipe.execute())

    def fetch(self, reads: Sequence[tuple[Sequence[str], Sequence[str]]]) -> list[Replies]:
        """One HMGET per key, pipelined to each node at once: a script may read one slot only, and the
        keys of a read spread over the buckets (100 random entities fall in ~80 of 256)."""
        pipe = self._client.pipeline()
        for keys, fields in reads:
            for key in keys:
                pipe.hmget(key, fields)
        replies = iter(pipe.execute())
        return [[next(replies) for _ in keys] for keys, _ in reads]

    def instance_id(self) -> str:
        # Every primary's run id: a restart of any of them may have lost its slots' values.
        infos = self._client.info("server", target_nodes=RedisCluster.PRIMARIES)
        return ",".join(sorted(str(info["run_id"]) for info in infos.values()))
