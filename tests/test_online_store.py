"""The online store backends, standalone Redis and a real local Redis Cluster: newer-only writes in Lua,
TTL, typed reads with explicit missing values."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from functools import partial
from pathlib import Path

import pytest
import redis
from redis_cluster import redis_server

from feature_store import Settings
from feature_store.definitions.models import ValueType
from feature_store.errors import ConfigurationError
from feature_store.serving.models import OnlineValueStatus
from feature_store.stores.online import open_online_store
from feature_store.stores.online import redis as online_redis
from feature_store.stores.online.base import EPOCH, FeatureSpec, OnlineStore, OnlineWrite, join_fields
from feature_store.stores.online.redis import RedisOnlineStore


@pytest.fixture(params=["redis", "redis-cluster"])
def online(request: pytest.FixtureRequest, settings: Settings) -> Iterator[RedisOnlineStore]:
    if request.param == "redis-cluster":
        settings = replace(
            settings, online_backend="redis-cluster", redis_url=request.getfixturevalue("redis_cluster_url")
        )
    store = open_online_store(settings)
    assert isinstance(store, RedisOnlineStore)
    yield store
    store.teardown()
    store.close()


def fields(*items: tuple[str, int, object]) -> list[tuple[str, int, object]]:
    return list(items)


SPECS = [
    FeatureSpec("g", "count", ValueType.INT64, None),
    FeatureSpec("g", "score", ValueType.FLOAT64, None),
]


def read(online: RedisOnlineStore, *entities: str, specs: list[FeatureSpec] = SPECS) -> list[dict[str, object]]:
    result = online.read(tenant_id="t", entity_ids=list(entities), features=specs)
    return [
        {ref: (v.value if v.status is OnlineValueStatus.PRESENT else v.status.value) for ref, v in row.features.items()}
        for row in result
    ]


def write(
    online: RedisOnlineStore,
    rows: list[tuple[str, list[tuple[str, int, object]]]],
    write_us: int,
    ttl: int | None = None,
    tenant: str = "t",
) -> int:
    values = [
        OnlineWrite(entity, name, EPOCH + timedelta(microseconds=event_us), value)
        for entity, items in rows
        for name, event_us, value in items
    ]
    return online.write_values(tenant_id=tenant, group_id="g", values=values, ttl_seconds=ttl, write_time_us=write_us)


def test_newer_event_time_wins_and_older_is_skipped(online: RedisOnlineStore) -> None:
    assert write(online, [("e1", fields(("count", 200, 5), ("score", 200, 0.5)))], write_us=1000) == 2
    # Older event time, later write (a backfill): skipped. Newer event time for one field: written.
    assert write(online, [("e1", fields(("count", 100, 1), ("score", 300, 0.75)))], write_us=2000) == 1
    assert read(online, "e1") == [{"g:count": 5, "g:score": 0.75}]


def test_equal_event_time_takes_the_later_write(online: RedisOnlineStore) -> None:
    write(online, [("e1", fields(("count", 200, 5)))], write_us=1000)
    assert write(online, [("e1", fields(("count", 200, 6)))], write_us=900) == 0
    assert write(online, [("e1", fields(("count", 200, 7)))], write_us=1100) == 1
    assert read(online, "e1")[0]["g:count"] == 7


def test_missing_values_are_explicit_and_order_follows_the_request(online: RedisOnlineStore) -> None:
    write(online, [("b", fields(("count", 1, 3)))], write_us=1)
    assert read(online, "a", "b") == [
        {"g:count": "missing", "g:score": "missing"},
        {"g:count": 3, "g:score": "missing"},
    ]


def test_values_keep_their_declared_types_and_precision(online: RedisOnlineStore) -> None:
    big = 2**62 + 1
    write(online, [("e", fields(("count", 1, big), ("score", 1, 0.1 + 0.2)))], write_us=1)
    value = read(online, "e")[0]
    assert value["g:count"] == big and isinstance(value["g:count"], int)
    assert value["g:score"] == 0.1 + 0.2


def test_ttl_is_set_on_write_and_applied_on_read(online: RedisOnlineStore) -> None:
    now_us = time.time_ns() // 1000
    write(online, [("fresh", fields(("count", 1, 1)))], write_us=now_us, ttl=60)
    assert 0 < online.client.pttl(online.key("t", "g", "fresh")) <= 60_000
    # A value written longer ago than the group's TTL is expired, even if the key lives on.
    write(online, [("stale", fields(("count", 1, 1)))], write_us=now_us - 120_000_000, ttl=60)
    specs = [FeatureSpec("g", "count", ValueType.INT64, 60)]
    assert read(online, "fresh", "stale", specs=specs) == [{"g:count": 1}, {"g:count": "expired"}]


def test_entity_ids_cannot_collide_through_separators(online: RedisOnlineStore) -> None:
    write(online, [("a:b", fields(("count", 1, 1))), ("a%3Ab", fields(("count", 1, 2)))], write_us=1)
    assert read(online, "a:b", "a%3Ab") == [
        {"g:count": 1, "g:score": "missing"},
        {"g:count": 2, "g:score": "missing"},
    ]


def test_concurrent_writers_keep_the_newest_value(online: RedisOnlineStore) -> None:
    """Many interleaved batches with random event times: the stored value is always the max event time."""
    import random
    import threading

    rng = random.Random(7)
    batches = [
        [(f"e{i}", fields(("count", rng.randrange(1, 10_000), rng.randrange(100)))) for i in range(50)]
        for _ in range(40)
    ]
    best: dict[str, tuple[int, int]] = {}
    for batch in batches:
        for entity, items in batch:
            best[entity] = max(best.get(entity, (0, 0)), (items[0][1], 0))
    threads = [threading.Thread(target=write, args=(online, b, 5)) for b in batches]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for entity, (event, _) in best.items():
        stored = online.client.hget(online.key("t", "g", entity), "count")
        assert stored is not None and int(stored.split(b"|")[0]) == event


def test_teardown_removes_only_this_tenants_keys(online: RedisOnlineStore) -> None:
    write(online, [("e", fields(("count", 1, 1)))], write_us=1)
    write(online, [("e", fields(("count", 1, 1)))], write_us=1, tenant="other")
    assert online.teardown(tenant_id="t") == 1
    assert read(online, "e")[0]["g:count"] == "missing"
    assert online.client.exists(online.key("other", "g", "e")) == 1


def test_teardown_never_removes_another_stores_or_another_tenants_keys(settings: Settings) -> None:
    """Like stores `fs` and `fs2` sharing a Redis, with tenant ids that are glob patterns of each other."""
    client = redis.Redis.from_url(settings.redis_url)
    short = RedisOnlineStore(client, prefix=settings.redis_prefix)
    longer = RedisOnlineStore(client, prefix=settings.redis_prefix + "2")
    tenants = ["a*", "a?", "a[b]", "ab"]
    for store in (short, longer):
        for tenant in tenants:
            write(store, [("e", fields(("count", 1, 1)))], write_us=1, tenant=tenant)

    def alive(store: RedisOnlineStore) -> list[str]:
        return [t for t in tenants if store.client.exists(store.key(t, "g", "e"))]

    for removed, tenant in enumerate(tenants[:3], start=1):
        assert short.teardown(tenant_id=tenant) == 1
        assert alive(short) == tenants[removed:]
    assert short.teardown(tenant_id="") == 0  # an empty tenant id is no tenant, not "all tenants"
    assert short.teardown() == 1
    assert alive(short) == [] and alive(longer) == tenants
    assert longer.teardown() == 4


@pytest.mark.parametrize("prefix", ["fs:staging", "fs*", "f?", "fs[1]", "", "-fs", "fs\\"])
def test_a_prefix_that_could_match_another_stores_keys_is_refused(settings: Settings, prefix: str) -> None:
    with pytest.raises(ConfigurationError, match=r"FEATURE_STORE_REDIS_PREFIX .* is invalid: a key prefix is"):
        Settings(redis_prefix=prefix)
    with pytest.raises(ConfigurationError, match="without ':' or glob characters"):
        RedisOnlineStore(redis.Redis.from_url(settings.redis_url), prefix=prefix)


def test_the_default_stamped_encoding_stores_what_the_backends_own_stores(online: RedisOnlineStore) -> None:
    """A backend that keeps `OnlineStore.encode_stamped` (decoding each value) serves the same values."""
    rows = [
        ("e1", 200, join_fields(["count", "score"], ["9007199254740993", "0.25"])),
        ("e2", 300, join_fields(["score"], ["null"])),
    ]
    for tenant, encode in (("own", online.encode_stamped), ("default", partial(OnlineStore.encode_stamped, online))):
        encoded = encode(rows, write_time_us=1000)
        assert [entity for entity, _ in encoded] == ["e1", "e2"]
        online.write_encoded(tenant_id=tenant, group_id="g", rows=encoded, ttl_seconds=None, write_time_us=1000)
    served = [
        [(v.value, v.status, v.event_time) for v in row.features.values()]
        for tenant in ("own", "default")
        for row in online.read(tenant_id=tenant, entity_ids=["e1", "e2"], features=SPECS)
    ]
    assert served[:2] == served[2:]
    assert [v for v, _, _ in served[0]] == [9007199254740993, 0.25]


def test_a_read_of_many_entities_is_one_command_per_group_even_after_the_servers_scripts_are_flushed(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The standalone read: a script call per group instead of an HMGET per entity (half the time at 100
    entities, see bench/RESULTS.md), still right when Redis has lost its scripts (a restart, SCRIPT FLUSH),
    and split into calls of `READ_SCRIPT_KEYS` keys (a script holds the server while it runs). On a
    server of its own: its command counts are this test's."""
    with redis_server(tmp_path) as url:
        _read_in_script_calls(replace(settings, redis_url=url), monkeypatch)


def _read_in_script_calls(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    online = open_online_store(settings)
    assert isinstance(online, RedisOnlineStore)
    client = redis.Redis.from_url(settings.redis_url)
    try:
        entities = [f"e{n}" for n in range(100)]
        write(online, [(e, fields(("count", 1, n), ("score", 1, n / 4))) for n, e in enumerate(entities)], write_us=1)
        other = OnlineWrite("e7", "flag", EPOCH + timedelta(microseconds=1), True)
        online.write_values(tenant_id="t", group_id="h", values=[other], ttl_seconds=None, write_time_us=1)
        specs = [*SPECS, FeatureSpec("h", "flag", ValueType.BOOL, None)]
        expected = [
            {"g:count": n, "g:score": n / 4, "h:flag": True if n == 7 else "missing"} for n in range(len(entities))
        ]
        expected.append({"g:count": "missing", "g:score": "missing", "h:flag": "missing"})

        def script_calls() -> int:
            return int(client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))

        assert read(online, *entities, "unknown", specs=specs) == expected  # loads the script (NOSCRIPT first)
        before = script_calls()
        assert read(online, *entities, "unknown", specs=specs) == expected
        assert script_calls() - before == 2  # one per group, whatever the number of entities
        client.script_flush()
        assert read(online, *entities, "unknown", specs=specs) == expected
        assert read(online, "e7", specs=specs) == [expected[7]]  # one entity: a plain HMGET per group
        monkeypatch.setattr(online_redis, "READ_SCRIPT_KEYS", 7)
        before = script_calls()
        assert read(online, *entities, "unknown", specs=specs) == expected
        assert script_calls() - before == 2 * 15  # 101 keys per group in calls of 7
    finally:
        online.teardown()
        online.close()
        client.close()
