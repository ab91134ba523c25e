"""Four consumer processes, 100 000 events with duplicates, one consumer killed midway: exact end state.

The reference applies each user's events sequentially in publish order (a duplicate event id counts
once); the consumers must end with exactly its counters and, bit for bit, its EWMAs, online and in
the offline store, whatever the interleaving, the kill and the takeover of the dead one's pending
entries did.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from feature_store import FeatureStore, Settings
from feature_store.stream import streams
from support import Sql

T0 = datetime(2026, 11, 2, 12, tzinfo=timezone.utc)
TENANTS = ["acme", "globex", "initech"]
TOTAL = 100_000
MALFORMED = 40


def build_events(seed: int = 7) -> tuple[list[str], dict[str, Any]]:
    """TOTAL JSON events (about 8% duplicates of earlier ones, MALFORMED broken lines) and the reference."""
    rng = random.Random(seed)
    users = [(t, f"u{i}") for t in TENANTS for i in range(200)]
    convs: dict[tuple[str, str], list[str]] = {u: [] for u in users}
    sent: list[dict[str, Any]] = []
    lines: list[str] = []
    seq = 0
    while len(lines) < TOTAL - MALFORMED:
        if sent and rng.random() < 0.08:
            lines.append(json.dumps(rng.choice(sent[-5000:])))  # the same event again (same id)
            continue
        seq += 1
        tenant, user = rng.choice(users)
        at = (T0 + timedelta(milliseconds=seq)).isoformat()
        base = {"event_id": f"e{seq}", "tenant_id": tenant, "user_id": user, "timestamp": at}
        kind = rng.random()
        if kind < 0.15 or not convs[(tenant, user)]:
            conv = f"{user}-c{len(convs[(tenant, user)])}"
            convs[(tenant, user)].append(conv)
            event = {**base, "event_type": "conversation.created", "conversation_id": conv}
        elif kind < 0.75:
            conv = rng.choice(convs[(tenant, user)])
            payload = {"length": rng.randint(1, 400), "token_count": rng.randint(1, 90), "detected_intent": "billing"}
            event = {**base, "event_type": "message.created", "conversation_id": conv, "message_id": f"m{seq}"}
            event["payload"] = payload
        else:
            event = {**base, "event_type": "feedback.received", "payload": {"rating": rng.randint(1, 5)}}
        sent.append(event)
        lines.append(json.dumps(event))
    for i in range(MALFORMED):
        lines.insert(rng.randrange(len(lines)), json.dumps({"event_type": "feedback.received", "event_id": f"bad{i}"}))
    return lines, reference(lines)


def reference(lines: list[str]) -> dict[str, Any]:
    """Apply each event once, in publish order, sequentially in Python."""
    seen: set[str] = set()
    conversations: dict[tuple[str, str], int] = {}
    tendency: dict[tuple[str, str], float] = {}
    messages: dict[tuple[str, str], int] = {}
    for line in lines:
        e = json.loads(line)
        if "tenant_id" not in e or e["event_id"] in seen:
            continue
        seen.add(e["event_id"])
        user = (e["tenant_id"], e["user_id"])
        if e["event_type"] == "conversation.created":
            conversations[user] = conversations.get(user, 0) + 1
        elif e["event_type"] == "feedback.received":
            tendency[user] = 0.3 * float(e["payload"]["rating"]) + (1 - 0.3) * tendency.get(user, 0.0)
        else:
            conv = (e["tenant_id"], e["conversation_id"])
            messages[conv] = messages.get(conv, 0) + 1
    return {"conversations": conversations, "tendency": tendency, "messages": messages, "events": len(seen)}


def wait_for(what: str, check: Callable[[], bool], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def consumers(settings: Settings, store: FeatureStore) -> Iterator[Callable[[str], subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    env = {
        **os.environ,
        "FEATURE_STORE_DATABASE_URL": settings.database_url,
        "FEATURE_STORE_REDIS_URL": settings.redis_url,
        "FEATURE_STORE_REDIS_PREFIX": settings.redis_prefix,
        "FEATURE_STORE_EVENT_PARTITIONS": str(settings.event_partitions),
        "FEATURE_STORE_EVENT_LEASE_SECONDS": "1",
    }

    def start(name: str) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "feature-store"), "events", "consume", "--json", "--consumer-id", name],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def pending_of(client: Any, prefix: str, partitions: int, consumer: str) -> int:
    total = 0
    for p in range(partitions):
        key = streams.stream_key(prefix, p)
        if not client.exists(key) or not client.xinfo_groups(key):
            continue
        total += sum(
            int(c["pending"]) for c in client.xinfo_consumers(key, streams.GROUP) if c["name"] == consumer.encode()
        )
    return total


@pytest.mark.timeout(600)
def test_four_consumers_one_killed_end_exactly_like_the_sequential_reference(
    store: FeatureStore, consumers: Callable[[str], subprocess.Popen[str]], db: Sql
) -> None:
    lines, ref = build_events()
    client = store.online.client  # type: ignore[attr-defined]
    prefix, partitions = store.settings.redis_prefix, store.settings.event_partitions
    workers = {name: consumers(name) for name in ("c0", "victim", "c2", "c3")}
    half = len(lines) // 2

    def publish(chunk: list[str]) -> list[str]:
        ids = []
        for i in range(0, len(chunk), 5000):
            ids += streams.publish(client, prefix=prefix, partitions=partitions, events=chunk[i : i + 5000])
        return ids

    publish(lines[:half])
    # Freeze the victim while it holds entries it read and has not acknowledged, then kill it.
    victim = workers["victim"]
    for _ in range(200):
        wait_for("the victim to hold pending entries", lambda: pending_of(client, prefix, partitions, "victim") > 0)
        os.kill(victim.pid, signal.SIGSTOP)
        held = pending_of(client, prefix, partitions, "victim")
        if held:
            break
        os.kill(victim.pid, signal.SIGCONT)
    assert held > 0
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    publish(lines[half:])

    wait_for("every event to be acknowledged", lambda: store.event_backlog() == 0)
    stats = []
    for name, process in workers.items():
        if name == "victim":
            continue
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
        stats.append(json.loads(out))
    assert pending_of(client, prefix, partitions, "victim") == 0
    assert sum(s["claimed"] for s in stats) >= held  # the dead one's entries were taken over, not lost

    # Dead letters: exactly the malformed lines, each with its reason.
    dead = store.dead_letters(limit=10 * MALFORMED)
    assert len({d.entry_id for d in dead}) == MALFORMED
    assert {d.reason for d in dead} == {
        "invalid feedback.received event: tenant_id: Field required; user_id: Field required;"
        " timestamp: Field required; payload: Field required"
    }

    for tenant in TENANTS:
        users = sorted({u for t, u in ref["conversations"] | ref["tendency"] if t == tenant})
        read = store.get_online_features(
            tenant, "user", users, ["user_realtime:conversation_count", "user_realtime:feedback_tendency"]
        )
        assert read.values("user_realtime:conversation_count") == [ref["conversations"].get((tenant, u)) for u in users]
        assert read.values("user_realtime:feedback_tendency") == [ref["tendency"].get((tenant, u)) for u in users]
        convs = sorted(c for t, c in ref["messages"] if t == tenant)
        counts = store.get_online_features(tenant, "conversation", convs, ["conversation_realtime:message_count"])
        assert counts.values("conversation_realtime:message_count") == [ref["messages"][(tenant, c)] for c in convs]

    # The offline store's latest value of each user's tendency is the reference's too.
    offline = db.rows(
        "SELECT DISTINCT ON (tenant_id, entity_id) tenant_id, entity_id, (features ->> 'feedback_tendency')::float8"
        " FROM feature_store.offline_rows WHERE feature_group_id = 'user_realtime' AND features ? 'feedback_tendency'"
        " ORDER BY tenant_id, entity_id, event_time DESC"
    )
    assert {(t, u): v for t, u, v in offline} == ref["tendency"]
