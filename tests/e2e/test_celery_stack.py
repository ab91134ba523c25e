"""End to end on CeleryExecutor: api-server, scheduler, dag-processor, triggerer and two Celery workers
(Redis database of their own as broker; PostgreSQL for Airflow's metadata and Celery's results) backfill
two of the test hours through the REST API. While an offline write runs on one worker, that worker is killed with
SIGKILL; the runs still complete, every job ends `completed`, and the offline (and quarantined) rows equal
those of a clean library-only run.
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from e2e_stack import (
    BACKFILLED,
    DAG_ID,
    HERE,
    ROOT,
    Stack,
    airflow_stack,
    clone_database,
    free_port,
    metadata_database,
    redis_database,
    wait_for,
)

from feature_store import FeatureStore, JobStatus, PipelineConfig, Settings
from support import Sql

pytestmark = pytest.mark.e2e

WORKERS = ("worker-a", "worker-b")
VICTIM, SURVIVOR = WORKERS[1], WORKERS[0]
TENANTS = ("acme", "globex", "initech")
GROUPS = ("user_engagement", "conversation_stats", "message_features")

# What makes the killed worker's tasks come back within the test, and why. Everything else is Airflow's
# default. The DAG itself gives every task retries=2 (a killed try is one failed try; the next one runs).
RECOVERY = {
    # A running task's supervisor heartbeats every [workers] min_heartbeat_interval (1 s in these tests, see
    # e2e_stack.py; default 5 s). The scheduler fails a running task whose heartbeat is older than this
    # (default 300 s) -> up_for_retry, as retries allow; and looks for such tasks this often (default 10 s).
    # 30 s is ample slack on a busy 2-core machine, so healthy tasks are not failed.
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "30",
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
    # A task whose message the dead worker had taken but not started yet stays `queued`: the scheduler
    # revokes and requeues it after this long (default 600 s), checking this often (default 120 s). It is
    # also the lifetime of the token a queued task starts with, so it must exceed the time a task waits in
    # the broker (a few seconds here).
    "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "120",
    "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT_CHECK_INTERVAL": "15",
    # Celery: a message is acknowledged when its task ends (acks_late) and a worker takes one message per
    # free slot (prefetch 1), so a dying worker holds no message beyond those it runs. Unacknowledged
    # messages would be redelivered after the visibility timeout; it is longer than any task may run (the
    # DAG's execution_timeout is 30 min), so a running task is never delivered twice: recovering the dead
    # worker's tasks is the scheduler's job (above), not the broker's.
    "AIRFLOW__CELERY__TASK_ACKS_LATE": "True",
    "AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER": "1",
    "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT": "3600",
    # The DAG's first retry waits this long (doubling after), instead of 20 s.
    "FEATURE_STORE_RETRY_DELAY_SECONDS": "2",
}
CONCURRENCY = 2  # task slots per worker


@dataclass
class Reference:
    """What the library alone leaves for the test hours in a clean database."""

    offline: list[tuple[Any, ...]]
    quarantined: list[tuple[Any, ...]]


OFFLINE_ROWS = (
    "SELECT tenant_id, feature_group_id, feature_name, entity_id, event_time, value"
    " FROM feature_store.feature_values ORDER BY 1, 2, 3, 4, 5"
)
QUARANTINED_ROWS = (
    "SELECT tenant_id, feature_group_id, feature_name, entity_id, event_time, value, rule, reason"
    " FROM feature_store.quarantined_rows ORDER BY 1, 2, 3, 4, 5, 7, 8, 6"
)


@pytest.fixture
def reference(template_db: str, settings: Settings) -> Reference:
    """FeatureStore.materialize over the same hours, tenants and groups, in a fresh copy of the demo database."""
    with clone_database(template_db) as url:
        library = Settings(database_url=url, redis_url=settings.redis_url, redis_prefix=f"{settings.redis_prefix}lib")
        with FeatureStore(settings=library) as store:
            for hour in BACKFILLED:
                for tenant in TENANTS:
                    for group in GROUPS:
                        result = store.materialize(
                            PipelineConfig(
                                tenant_id=tenant,
                                feature_group_id=group,
                                start_time=hour.start,
                                end_time=hour.end,
                                write_online=False,
                            )
                        )
                        assert result.status is JobStatus.COMPLETED, result.errors
        with psycopg.connect(url) as conn:
            return Reference(
                offline=conn.execute(OFFLINE_ROWS).fetchall(), quarantined=conn.execute(QUARANTINED_ROWS).fetchall()
            )


@pytest.fixture
def stack(settings: Settings, tmp_path: Path) -> Iterator[Stack]:
    with redis_database() as broker_url, metadata_database() as metadata_url:
        env = {
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            # Twice the workers' slots: a freed slot takes the next task from the broker at once instead of
            # waiting for the scheduler's next loop to queue one.
            "AIRFLOW__CORE__PARALLELISM": str(2 * CONCURRENCY * len(WORKERS)),
            "AIRFLOW__CELERY__BROKER_URL": broker_url,
            "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{metadata_url}",
            "FEATURE_STORE_DEADLINE_MINUTES": "0",  # deadlines are the LocalExecutor test's subject
            **RECOVERY,
        }
        home = tmp_path / "airflow_home"
        with airflow_stack(
            home=home, settings=settings, executor="CeleryExecutor", metadata_url=metadata_url, env=env
        ) as stack:
            try:
                for name in WORKERS:
                    stack.start(
                        name,
                        *("celery", "worker", "--celery-hostname", f"{name}@%h", "--concurrency", str(CONCURRENCY)),
                        env={
                            # Task instances record this as their `hostname` (see e2e_hostname.py).
                            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "e2e_hostname.hostname",
                            "FEATUREPIPE_E2E_HOSTNAME": name,
                            "PYTHONPATH": os.pathsep.join(p for p in (str(HERE), stack.env.get("PYTHONPATH")) if p),
                            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
                        },
                    )
                for name in WORKERS:
                    wait_for(f"Celery {name} to be ready", lambda name=name: worker_ready(stack, name), 120)
            except BaseException:
                print(stack.logs())  # pytest shows it with the failure
                raise
            yield stack


def worker_ready(stack: Stack, name: str) -> bool:
    """Celery logs `<node name> ready.` once the worker consumes from the broker."""
    return any(f" {name}@" in line and " ready. " in f"{line} " for line in stack.log(name).splitlines())


def running_on(stack: Stack, hostname: str, task_id: str) -> list[dict[str, Any]]:
    """Task instances of `task_id` running now on `hostname`, per the REST API."""
    tis = stack.api("GET", f"/dags/{DAG_ID}/dagRuns/~/taskInstances?state=running&limit=100")["task_instances"]
    return [ti for ti in tis if ti["hostname"] == hostname and ti["task_id"] == task_id]


def tries(stack: Stack, ti: dict[str, Any]) -> list[dict[str, Any]]:
    path = f"/dags/{DAG_ID}/dagRuns/{ti['dag_run_id']}/taskInstances/{ti['task_id']}/{ti['map_index']}/tries"
    return sorted(stack.api("GET", path)["task_instances"], key=lambda t: t["try_number"])


def test_the_runs_complete_with_the_library_values_after_a_worker_is_killed_mid_run(
    reference: Reference, stack: Stack, db: Sql, settings: Settings
) -> None:
    stack.unpause_when_parsed()

    # Kill the victim inside an offline write (the flush a write task makes when it completes its job): until
    # then the test holds a SHARE lock on offline_rows (reads go on, writes wait), and the victim is killed once
    # the REST API shows a write task running on it and one of its processes is waiting for that lock.
    blocker = psycopg.connect(settings.database_url)
    try:
        blocker.execute("LOCK TABLE feature_store.offline_rows IN SHARE MODE")
        stack.backfill()
        pg_port = urllib.parse.urlsplit(settings.database_url).port or 5432

        def victim_writing() -> list[dict[str, Any]] | None:
            writes = running_on(stack, VICTIM, "materialize_feature.write")
            ports = stack.connections_to(VICTIM, pg_port) if writes else set()
            blocked = ports and db.rows(
                "SELECT pid FROM pg_stat_activity WHERE client_port = ANY(%s) AND %s = ANY(pg_blocking_pids(pid))",
                (sorted(ports), blocker.info.backend_pid),
            )
            return writes if blocked else None

        hit = wait_for(f"a write task on {VICTIM} to wait inside its transaction", victim_writing, 300, interval=0.5)
        stack.kill(VICTIM)
    finally:
        blocker.rollback()
        blocker.close()

    runs = stack.backfill_runs()
    assert [r["state"] for r in runs] == ["success"] * len(BACKFILLED), runs

    # The kill hit running tasks: each try that was running on the victim and did not end by itself
    # failed there (no heartbeat) and a later try succeeded on the survivor.
    killed = []
    for ti in hit:
        history = tries(stack, ti)
        on_victim = next(t for t in history if t["try_number"] == ti["try_number"])
        assert on_victim["hostname"] == VICTIM
        if on_victim["state"] == "success":
            continue  # it ended between the API's answer and the kill
        killed.append(ti)
        assert on_victim["state"] in ("failed", "up_for_retry"), history
        last = history[-1]
        assert last["try_number"] > ti["try_number"] and last["state"] == "success", history
        assert last["hostname"] == SURVIVOR, history
    assert killed, f"every task running on {VICTIM} had ended before the kill: {hit}"

    jobs = db.rows("SELECT run_id, tenant_id, feature_group_id, status FROM feature_store.materialization_jobs")
    assert len(jobs) == len(BACKFILLED) * len(TENANTS) * len(GROUPS)
    assert len({(r, t, g) for r, t, g, _ in jobs}) == len(jobs)  # one job per run, tenant and group
    assert {status for *_, status in jobs} == {"completed"}, jobs
    assert {run_id for run_id, *_ in jobs} == {r["dag_run_id"] for r in runs}

    offline = db.rows(OFFLINE_ROWS)
    assert offline and offline == reference.offline
    assert len({row[:5] for row in offline}) == len(offline)  # no duplicate (tenant, group, feature, entity, time)
    assert db.rows(QUARANTINED_ROWS) == reference.quarantined  # the retried stages quarantined nothing twice


def test_docker_compose_runs_celery_with_the_settings_of_this_test() -> None:
    """docker-compose.yaml's Airflow services use this test's executor, databases and Celery delivery settings."""
    compose = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())
    for name in ("airflow-apiserver", "airflow-scheduler", "airflow-worker", "airflow-triggerer"):
        env = {key: str(value) for key, value in compose["services"][name]["environment"].items()}
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
        metadata = env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
        assert metadata.startswith("postgresql+psycopg://")
        assert env["AIRFLOW__CELERY__RESULT_BACKEND"] == f"db+{metadata}"
        broker, online = env["AIRFLOW__CELERY__BROKER_URL"], env["FEATURE_STORE_REDIS_URL"]
        assert broker.startswith("redis://") and broker.rsplit("/", 1)[1] != online.rsplit("/", 1)[1]
        for key in (k for k in RECOVERY if "CELERY" in k):
            assert env[key].lower() == RECOVERY[key].lower(), key
