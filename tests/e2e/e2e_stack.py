"""Start and stop a real Airflow 3 stack for the end-to-end tests.

`airflow_stack()` creates a PostgreSQL database of its own for Airflow's metadata on the running
server (`fp_airflow_<random>`), migrates it, starts api-server, scheduler, dag-processor and
triggerer (each with `setsid`, logging to `AIRFLOW_HOME/<name>.log`), waits until the API reports
every component healthy, and on the way out stops every component by its process group and drops
the database. More components (Celery workers) are started with `Stack.start`. `redis_database()`
claims a Redis database number of its own (a Celery broker) and flushes it afterwards. bench/scale.py
runs its Airflow components through `airflow_stack` too.

Ports are free ones picked at start (API, log servers), so stacks of other checkouts on the same
machine do not collide.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest
import redis
from psycopg import sql

from feature_store import Settings
from support import HOURS, REDIS_URL, admin_connection, url_for

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
DAG_ID = "feature_materialization"
BACKFILLED = HOURS[1:]
"""The hours both end-to-end tests backfill: two runs at once. A run is ~140 tasks of ~1 s of a core
each, which is the tests' time: with a third hour they took 574 s instead of 309 s, for the same checks."""
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
# Components the API's /monitor/health reports on, by their key there.
HEALTH_KEYS = ("metadatabase", "scheduler", "triggerer", "dag_processor")
AIRFLOW = (sys.executable, "-m", "airflow")

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, check: Callable[[], T | None], timeout: float, *, interval: float = 2.0) -> T:
    """Poll `check` until it returns something truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except (urllib.error.URLError, ConnectionError, OSError) as exc:
            last = exc
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what} (last: {last})")


@contextmanager
def metadata_database() -> Iterator[str]:
    """A fresh PostgreSQL database for Airflow's metadata; yields its SQLAlchemy URL (psycopg 3 driver).

    Dropped afterwards (WITH FORCE: a component that did not stop in time does not keep it alive).
    """
    name = f"fp_airflow_{uuid.uuid4().hex[:10]}"
    with admin_connection() as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield url_for(name).replace("postgresql://", "postgresql+psycopg://", 1)
    finally:
        with admin_connection() as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@contextmanager
def clone_database(template: str) -> Iterator[str]:
    """A copy of database `template` (e.g. the demo database of conftest's `template_db`); yields its URL."""
    name = f"fp_test_clone_{uuid.uuid4().hex[:10]}"
    with admin_connection() as admin:
        admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template)))
    try:
        yield url_for(name)
    finally:
        with admin_connection() as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


_CLAIM_KEY = "featurepipe-e2e:claimed-by"


@contextmanager
def redis_database() -> Iterator[str]:
    """A Redis database number of this test alone (e.g. a Celery broker); yields its URL, flushed afterwards.

    Database 0 is the feature store tests' (they share it by key prefix); of 1-15 the first empty one is
    claimed with a marker key set only if absent, so two stacks running at once never pick the same one.
    """
    parts = urllib.parse.urlsplit(REDIS_URL)
    token = uuid.uuid4().hex
    for number in range(15, 0, -1):
        url = urllib.parse.urlunsplit(parts._replace(path=f"/{number}"))
        client = redis.Redis.from_url(url)
        try:
            if client.dbsize() == 0 and client.set(_CLAIM_KEY, token, nx=True, ex=6 * 3600):
                if client.dbsize() == 1:
                    break
                client.delete(_CLAIM_KEY)  # someone else started writing here meanwhile
        finally:
            client.close()
    else:
        pytest.fail(f"no empty Redis database (1-15) on {parts.netloc} to use as a Celery broker")
    try:
        yield url
    finally:
        client = redis.Redis.from_url(url)
        client.flushdb()
        client.close()


def _process_groups(root_pids: list[int]) -> set[int]:
    """Process groups of these processes and of all their descendants.

    Airflow 3's task supervisor puts each task-runner process into a process group of its own, so a
    component's group alone does not reach the tasks it runs.
    """
    groups: set[int] = set()
    for pid in root_pids:
        try:
            root = psutil.Process(pid)
            members = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for process in members:
            with suppress(ProcessLookupError, psutil.NoSuchProcess):
                groups.add(os.getpgid(process.pid))
    return groups


def _signal_groups(groups: set[int], sig: signal.Signals) -> None:
    for group in groups:
        with suppress(ProcessLookupError):
            os.killpg(group, sig)


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


class ApiError(urllib.error.URLError):
    """A REST API call answered with an HTTP error (`wait_for` keeps polling through it)."""

    def __init__(self, method: str, path: str, code: int, detail: str) -> None:
        super().__init__(f"{method} {path}: HTTP {code}: {detail}")
        self.code = code


@dataclass
class Stack:
    """A running Airflow stack: its API, AIRFLOW_HOME, environment and component processes."""

    url: str
    home: Path
    env: dict[str, str]
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def api(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """Call the REST API (`/api/v2` + path); JSON in and out. HTTP errors carry the response body."""
        request = urllib.request.Request(
            f"{self.url}/api/v2{path}",
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise ApiError(method, path, exc.code, exc.read().decode(errors="replace")[:2000]) from exc

    def wait(self, what: str, check: Callable[[], T | None], timeout: float, *, interval: float = 2.0) -> T:
        """`wait_for`, failing at once, with the components' logs, when one of them has exited."""

        def alive_and_checked() -> T | None:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    pytest.fail(f"{name} exited with {process.returncode} while waiting for {what}\n{self.logs()}")
            return check()

        return wait_for(what, alive_and_checked, timeout, interval=interval)

    def airflow(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run an `airflow` CLI command against this stack's configuration."""
        return subprocess.run(
            [*AIRFLOW, *args], env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )

    def start(self, name: str, *args: str, env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start `airflow <args>` as component `name` in a session (and process group) of its own."""
        with (self.home / f"{name}.log").open("ab") as log:
            process = subprocess.Popen(
                [*AIRFLOW, *args],
                env={**self.env, **(env or {})},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.processes[name] = process
        return process

    def log(self, name: str) -> str:
        path = self.home / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def logs(self, lines: int = 40, width: int = 400) -> str:
        """The last lines of every component's log (each cut to `width`), for a failure report."""
        return "\n".join(
            f"--- {self.home / name}.log (last {lines} lines) ---\n"
            + "\n".join(line[:width] for line in self.log(name).splitlines()[-lines:])
            for name in self.processes
        )

    def connections_to(self, name: str, port: int) -> set[int]:
        """Local ports of the TCP connections to `port` that component `name` or a process under it holds."""
        try:
            root = psutil.Process(self.processes[name].pid)
            members = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return set()
        ports: set[int] = set()
        for process in members:
            with suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                ports |= {c.laddr.port for c in process.net_connections("tcp") if c.raddr and c.raddr.port == port}
        return ports

    def kill(self, name: str) -> set[int]:
        """SIGKILL component `name` as a crashed machine would: its process group and those of every process
        under it (the task runners). It is stopped first, so it cannot start more meanwhile.

        Returns the process groups killed; every one of them is gone when this returns.
        """
        process = self.processes[name]
        os.killpg(process.pid, signal.SIGSTOP)
        groups = _process_groups([process.pid]) | {process.pid}
        _signal_groups(groups, signal.SIGKILL)
        process.wait(timeout=30)
        wait_for(f"every process of {name} to be gone", lambda: not any(map(_group_alive, groups)), 30, interval=0.2)
        return groups

    def stop(self) -> None:
        """SIGTERM every component's process group (and its tasks' groups), SIGKILL what is left after 30 s."""
        running = [p for p in self.processes.values() if p.poll() is None]
        groups = _process_groups([p.pid for p in running]) | {p.pid for p in running}
        _signal_groups(groups, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for process in running:
            with suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
        _signal_groups({g for g in groups if _group_alive(g)}, signal.SIGKILL)
        for process in running:
            with suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)

    def unpause_when_parsed(self) -> None:
        """Wait until the dag-processor has parsed the DAG, then unpause it."""
        wait_for("the DAG to be parsed", lambda: self.api("GET", f"/dags/{DAG_ID}"), 180)
        self.api("PATCH", f"/dags/{DAG_ID}", {"is_paused": False})

    def backfill(self) -> dict[str, Any]:
        """Backfill the `BACKFILLED` hours, all runs at once (what the UI's Backfill form posts)."""
        backfill = self.api(
            "POST",
            "/backfills",
            {
                "dag_id": DAG_ID,
                "from_date": BACKFILLED[0].start.isoformat(),
                "to_date": BACKFILLED[-1].start.isoformat(),
                "reprocess_behavior": "none",
                "max_active_runs": len(BACKFILLED),
                "dag_run_conf": {},
            },
        )
        assert backfill["dag_id"] == DAG_ID, backfill
        return dict(backfill)

    def backfill_runs(self, timeout: float = 600) -> list[dict[str, Any]]:
        """The backfill's runs, once there is one per backfilled hour and every one has finished."""

        def finished() -> list[dict[str, Any]] | None:
            runs = self.api("GET", f"/dags/{DAG_ID}/dagRuns?run_type=backfill&limit=50")["dag_runs"]
            done = [r for r in runs if r["state"] in ("success", "failed")]
            return list(runs) if len(runs) == len(BACKFILLED) and len(done) == len(runs) else None

        return wait_for("the backfill runs to finish", finished, timeout)

    def healthy(self) -> bool:
        health = self.api("GET", "/monitor/health")
        return all((health.get(key) or {}).get("status") == "healthy" for key in HEALTH_KEYS)


def component_env(*, home: Path, port: int, sql_alchemy_conn: str, settings: Settings, executor: str) -> dict[str, str]:
    """The environment every component of the stack shares."""
    redis_conn = {
        "conn_type": "redis",
        "host": "127.0.0.1",
        "port": 6379,
        "extra": {"db": 0, "key_prefix": settings.redis_prefix},
    }
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": executor,
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": sql_alchemy_conn,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://localhost:{port}/execution/",
        "AIRFLOW__API__BASE_URL": f"http://localhost:{port}",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API_AUTH__JWT_SECRET": "featurepipe-e2e-secret",
        # Log servers of the scheduler (LocalExecutor), workers and triggerer: free ports, not 8793/8794.
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",  # only the test creates runs
        # A task's supervisor notices that its task process ended only when it next wakes up, at most
        # [workers] min_heartbeat_interval (default 5 s) later: half the DAG's tasks (about 1 s of work
        # each) held their slot 5 s longer. Waking (and heartbeating) every second keeps the slots busy.
        "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "1",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW_CONN_FEATURE_STORE_DB": settings.database_url,
        "AIRFLOW_CONN_FEATURE_STORE_REDIS": json.dumps(redis_conn),
        "FEATURE_STORE_RETRY_DELAY_SECONDS": "2",
    }
    env.pop("FEATURE_STORE_DATABASE_URL", None)
    return env


@contextmanager
def airflow_stack(
    *,
    home: Path,
    settings: Settings,
    executor: str,
    metadata_url: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Iterator[Stack]:
    """Airflow's core components, healthy; stopped by process group afterwards.

    The metadata database is `metadata_url` (migrated here), or one of their own made for them and dropped
    afterwards. `env` adds to or overrides the components' environment.
    """
    if metadata_url is None:
        with (
            metadata_database() as url,
            airflow_stack(home=home, settings=settings, executor=executor, metadata_url=url, env=env) as stack,
        ):
            yield stack
        return
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    shared = component_env(home=home, port=port, sql_alchemy_conn=metadata_url, settings=settings, executor=executor)
    stack = Stack(url=f"http://localhost:{port}", home=home, env={**shared, **(env or {})})
    try:
        migrate = stack.airflow("db", "migrate")
        assert migrate.returncode == 0, migrate.stdout[-3000:] + migrate.stderr[-3000:]
        for name in COMPONENTS:
            stack.start(name, name, *(["--port", str(port)] if name == "api-server" else []))
        wait_for("every component to report healthy", stack.healthy, 180)
    except BaseException:
        print(stack.logs())  # pytest shows it with the failure
        stack.stop()
        raise
    try:
        yield stack
    finally:
        stack.stop()
