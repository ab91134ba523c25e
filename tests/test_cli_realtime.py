"""`feature-store events publish|consume|dead-letters`, `api-keys` and `serve`, as a user runs them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from click.testing import CliRunner
from test_stream import conversation, feedback

from feature_store import FeatureStore, Settings
from feature_store.cli.commands import main

SERVE_PORT = 18231  # this worktree's port range (18200-18299)


def run(*args: str, stdin: str | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), input=stdin)
    return result.exit_code, result.output


def test_publish_consume_and_dead_letters(env: Settings, tmp_path: Path) -> None:
    lines = [json.dumps(conversation("c1")), "", json.dumps(feedback("f1", 4)), '{"event_type": "feedback.received"}']
    source = tmp_path / "events.jsonl"
    source.write_text("\n".join(lines) + "\n")
    code, out = run("events", "publish", str(source))
    assert code == 1
    assert "published 2 event(s)" in out
    assert "line 4: invalid feedback.received event: event_id: Field required" in out
    code, out = run("events", "publish", "--json", "-", stdin=json.dumps(feedback("f2", 2, at=1)) + "\n")
    assert code == 0 and json.loads(out) == {"published": 1, "invalid": []}
    code, out = run("events", "consume", "--max-idle", "0.2", "--json")
    assert code == 0, out
    assert json.loads(out)["applied"] == 3
    with FeatureStore(settings=env) as store:
        read = store.get_online_features("acme", "user", ["u1"], ["user_realtime:feedback_tendency"])
    assert read.values("user_realtime:feedback_tendency") == [0.3 * 2 + 0.7 * (0.3 * 4)]
    code, out = run("events", "dead-letters", "--json")
    assert code == 0 and json.loads(out) == []


def test_api_keys_and_the_server(env: Settings) -> None:
    code, out = run("api-keys", "create", "--tenant", "acme", "--name", "app", "--json")
    assert code == 0, out
    key = json.loads(out)["key"]
    code, out = run("api-keys", "create", "--tenant", "nobody")
    assert code == 1 and "tenant 'nobody' does not exist" in out
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "feature-store"), "serve", "--port", str(SERVE_PORT)],
        env={
            **os.environ,
            "FEATURE_STORE_DATABASE_URL": env.database_url,
            "FEATURE_STORE_REDIS_URL": env.redis_url,
            "FEATURE_STORE_REDIS_PREFIX": env.redis_prefix,
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        base = f"http://127.0.0.1:{SERVE_PORT}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None, server.stderr.read() if server.stderr else ""
            assert time.monotonic() < deadline, "the server did not become healthy"
            time.sleep(0.05)
        pushed = httpx.post(f"{base}/events", json={"events": [feedback("f1", 5)]}, headers={"X-API-Key": key})
        assert pushed.status_code == 202
        body = {"entity_type": "user", "entity_ids": ["u1"], "features": ["user_realtime:feedback_tendency"]}
        assert httpx.post(f"{base}/features/online", json=body).status_code == 401
        assert httpx.post(f"{base}/features/online", json=body, headers={"X-API-Key": key}).status_code == 200
        code, out = run("api-keys", "list", "--json")
        key_id = json.loads(out)[0]["id"]
        assert run("api-keys", "revoke", str(key_id))[0] == 0
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_the_demo_replay_moves_live_features(env: Settings) -> None:
    code, out = run("events", "replay-demo", "--steps", "2", "--json")
    assert code == 0, out
    result = json.loads(out)
    assert result["dead_lettered"] > 0  # the demo's broken rows make invalid events
    first, last = result["snapshots"]
    counts = [
        (
            first["users"][u]["user_realtime:conversation_count"] or 0,
            last["users"][u]["user_realtime:conversation_count"],
        )
        for u in last["users"]
    ]
    assert all(before <= after for before, after in counts)
    assert any(before < after for before, after in counts)
    assert all(v["user_live_scores:engagement_score"] is not None for v in last["users"].values())
