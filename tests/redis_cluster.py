"""A real Redis Cluster on loopback for the tests: three primaries started, joined and stopped by the test run."""

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


@contextmanager
def redis_cluster(workdir: Path, nodes: int = 3) -> Iterator[str]:
    """Start `nodes` cluster-enabled redis-servers, create the cluster; yields a URL of one node."""
    ports = [_free_port() for _ in range(nodes)]
    processes = []
    try:
        for port in ports:
            home = workdir / str(port)
            home.mkdir(parents=True)
            processes.append(
                subprocess.Popen(
                    [
                        "redis-server",
                        "--port",
                        str(port),
                        "--bind",
                        "127.0.0.1",
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        str(home / "nodes.conf"),
                        "--dir",
                        str(home),
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--cluster-node-timeout",
                        "3000",
                        "--logfile",
                        str(home / "redis.log"),
                    ],
                    start_new_session=True,
                )
            )
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
