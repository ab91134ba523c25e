"""Real Redis servers on loopback for the tests: a Redis Cluster of three primaries started, joined and
stopped by the test run, and standalone servers a test starts for itself."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis


def _free_port() -> int:
    # Cluster nodes also listen on port + 10000 (the cluster bus): keep both free and below 55536.
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port < 55_000:
            with socket.socket() as bus:
                try:
                    bus.bind(("127.0.0.1", port + 10_000))
                except OSError:
                    continue
            return port


def _wait(what: str, check: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except (redis.RedisError, OSError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


def _start_server(port: int, home: Path, *options: str) -> subprocess.Popen[bytes]:
    """A redis-server on loopback in a session of its own, keeping nothing on disk."""
    home.mkdir(parents=True)
    return subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(home),
            "--save",
            "",
            "--appendonly",
            "no",
            "--logfile",
            str(home / "redis.log"),
            *options,
        ],
        start_new_session=True,
    )


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
    for process in processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


@contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    """Start a standalone redis-server of the test's own (whose command counts no other test moves)."""
    port = _free_port()
    process = _start_server(port, workdir / str(port))
    try:
        _wait(f"redis-server on {port}", redis.Redis(port=port, socket_timeout=1).ping)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        _stop([process])


@contextmanager
def redis_cluster(workdir: Path, nodes: int = 3) -> Iterator[str]:
    """Start `nodes` cluster-enabled redis-servers, create the cluster; yields a URL of one node."""
    ports = [_free_port() for _ in range(nodes)]
    processes = []
    try:
        for port in ports:
            home = workdir / str(port)
            cluster = ("--cluster-enabled", "yes", "--cluster-config-file", str(home / "nodes.conf"))
            processes.append(_start_server(port, home, *cluster, "--cluster-node-timeout", "3000"))
        for port in ports:
            _wait(f"redis-server on {port}", redis.Redis(port=port, socket_timeout=1).ping)
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *(f"127.0.0.1:{p}" for p in ports),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        for port in ports:
            client = redis.Redis(port=port, socket_timeout=1)
            _wait(f"cluster state ok on {port}", lambda c=client: c.cluster("info")["cluster_state"] == "ok")
        yield f"redis://127.0.0.1:{ports[0]}/0"
    finally:
        _stop(processes)
