"""Faults the retry tests inject into the real services.

* An offline write (a job's flush) blocked on the offline-write lock, whose backend the test then
  terminates or cancels.
* A Redis server of the test's own, on a free loopback port, stopped and restarted at will.

Every wait is for a condition (polled, with a deadline), never a fixed sleep.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import psycopg
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

T = TypeVar("T")


def wait_for(what: str, condition: Callable[[], T], *, timeout: float = 60.0, stop: threading.Event | None = None) -> T:
    """Poll `condition` until it returns something truthy (returned), or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if stop is not None and stop.is_set():
            raise AssertionError(f"stopped while waiting for {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.02)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def offline_lock_key(tenant_id: str, group_id: str) -> str:
    """The advisory-lock key the offline store's `replace_window` takes for one (tenant, group)."""
    return f"featurepipe offline {tenant_id}\x1f{group_id}"


@dataclass
class Interruption:
    """What `interrupt_offline_write` did: the backend it hit (once done) and any error of its own."""

    done: threading.Event = field(default_factory=threading.Event)
    pid: int | None = None
    error: BaseException | None = None


@contextmanager
def interrupt_offline_write(
    database_url: str,
    *,
    tenant_id: str,
    group_id: str,
    action: str,
    timeout: float = 120.0,
    ready: Callable[[], object] | None = None,
) -> Iterator[Interruption]:
    """Hold the offline-write lock of (tenant, group); the first backend that waits for it gets
    `action` (pg_terminate_backend or pg_cancel_backend), once `ready` (if given) holds, then the lock
    is released so the next try goes through. Raises at the end of the block if no write came to
    wait, or the fault failed."""
    assert action in ("pg_terminate_backend", "pg_cancel_backend")
    key = offline_lock_key(tenant_id, group_id)
    result = Interruption()
    stop = threading.Event()
    holder = psycopg.connect(database_url)  # not autocommit: the lock lasts until commit
    holder.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (key,))
    holder_pid = holder.info.backend_pid

    def run() -> None:
        try:
            with psycopg.connect(database_url, autocommit=True) as watcher:

                def waiter() -> int | None:
                    row = watcher.execute(
                        "SELECT w.pid FROM pg_locks w JOIN pg_locks h ON h.locktype = 'advisory'"
                        " AND h.database = w.database AND h.classid = w.classid AND h.objid = w.objid"
                        " AND h.objsubid = w.objsubid AND h.granted AND h.pid = %s"
                        " WHERE w.locktype = 'advisory' AND NOT w.granted LIMIT 1",
                        (holder_pid,),
                    ).fetchone()
                    return int(row[0]) if row else None

                pid = wait_for("a write waiting for the offline lock", waiter, timeout=timeout, stop=stop)
                if ready is not None:
                    wait_for("the condition to interrupt the write in", ready, timeout=timeout, stop=stop)
                watcher.execute(f"SELECT {action}(%s)", (pid,))
                result.pid = pid

                def let_go() -> bool:
                    row = watcher.execute(
                        "SELECT wait_event_type IS DISTINCT FROM 'Lock' FROM pg_stat_activity WHERE pid = %s", (pid,)
                    ).fetchone()
                    return row is None or bool(row[0])  # gone (terminated) or no longer waiting (cancelled)

                wait_for(f"backend {pid} to stop waiting after {action}", let_go, stop=stop)
        except BaseException as exc:
            result.error = exc
        finally:
            holder.commit()  # release the lock: the retry may write
            result.done.set()

    thread = threading.Thread(target=run, name="interrupt-offline-write", daemon=True)
    thread.start()
    try:
        yield result
    finally:
        if not result.done.wait(timeout):
            stop.set()
        thread.join(30)
        holder.close()
    if result.error is not None:
        raise AssertionError(f"the {action} fault failed: {result.error}") from result.error


def quick_redis(port: int) -> redis.Redis:
    """A client that gives up at once (no retries), for probing a server."""
    return redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))


class RedisServer:
    """A redis-server of the test's own on a loopback port, in its own session (killed by process group)."""

    def __init__(self, port: int, workdir: Path) -> None:
        self.port = port
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    def answers(self) -> bool:
        client = quick_redis(self.port)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def start(self) -> None:
        assert self.process is None
        with (self.workdir / f"redis-{self.port}.log").open("ab") as log:
            self.process = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                cwd=self.workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # setsid: its own process group
            )
        wait_for(f"redis-server on port {self.port} to answer", self.answers, timeout=30)

    def stop(self) -> None:
        """Kill it (an outage, not a clean shutdown) and wait until the port refuses connections."""
        if self.process is None:
            return
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(30)
        self.process = None
        wait_for(f"redis-server on port {self.port} to be gone", lambda: not self.answers(), timeout=30)
