"""Retries through Airflow: a try Airflow will retry never fails its feature or job; the real DAG,
run with dag.test(), survives a terminated write and a Redis outage during finish."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from faults import RedisServer, free_port, interrupt_offline_write, quick_redis, wait_for

from feature_store import FeatureStore, JobStatus, PipelineConfig, RunInfo, Settings
from feature_store.serving.models import OnlineValueStatus
from support import HOURS, Sql

pytestmark = pytest.mark.airflow

DAG_ID = "feature_materialization"
DAGS_FOLDER = Path(__file__).resolve().parents[2] / "dags"
WINDOW = HOURS[-1]
CONF = {"start": WINDOW.start.isoformat(), "end": WINDOW.end.isoformat()}
TENANTS = ("acme", "globex", "initech")
GROUPS = ("user_engagement", "conversation_stats", "message_features")


@dataclass
class FakeTaskInstance:
    """The attributes the listener reads, with `state` one of Airflow's real TaskInstanceState enums."""

    dag_id: str
    run_id: str
    task_id: str
    rendered_map_index: str
    try_number: int
    state: Any


# Workers hand the listener the task SDK's enum (str() 'TaskInstanceState.UP_FOR_RETRY'); the
# scheduler and API server hand it airflow.utils.state's (str() 'up_for_retry').
@pytest.mark.parametrize("enum_module", ["airflow.sdk", "airflow.utils.state"])
def test_the_listener_ignores_a_try_airflow_will_retry_and_fails_the_last_one(
    airflow_env: Settings, db: Sql, enum_module: str
) -> None:
    from featurepipe_airflow import listener

    state = importlib.import_module(enum_module).TaskInstanceState
    with FeatureStore(settings=airflow_env) as store:
        planned = store.pipeline().plan(
            window=WINDOW, tenant_ids=["acme"], run=RunInfo(dag_id=DAG_ID, run_id="manual__r", try_number=1)
        )
    jobs = {p.feature_group_id: p.job_id for p in planned}
    write = FakeTaskInstance(
        DAG_ID, "manual__r", "materialize_feature.write", "acme/user_engagement/avg_rating", 1, state.UP_FOR_RETRY
    )
    finish = FakeTaskInstance(DAG_ID, "manual__r", "finish", "acme/message_features", 1, state.UP_FOR_RETRY)

    def rows() -> tuple[Any, ...]:
        feature = db.rows(
            "SELECT status, error_message FROM feature_store.materialization_job_features"
            " WHERE job_id = %s AND feature_name = 'avg_rating'",
            (jobs["user_engagement"],),
        )[0]
        job = db.rows(
            "SELECT status, error_message FROM feature_store.materialization_jobs WHERE id = %s",
            (jobs["message_features"],),
        )[0]
        return feature, job

    for ti in (write, finish):
        listener.on_task_instance_failed(previous_state=state.RUNNING, task_instance=ti, error=OSError("reset"))
    assert rows() == (("pending", None), ("pending", None))

    for ti in (write, finish):
        ti.state, ti.try_number = state.FAILED, 3
        listener.on_task_instance_failed(previous_state=state.RUNNING, task_instance=ti, error=OSError("reset"))
    (feature_status, feature_error), (job_status, job_error) = rows()
    assert (feature_status, job_status) == ("failed", "failed")
    assert feature_error == (
        "Airflow task materialize_feature.write [acme/user_engagement/avg_rating] of run manual__r failed"
        " (try 3): reset"
    )
    assert "Airflow task finish [acme/message_features] of run manual__r failed (try 3): reset" in job_error


def load_dag() -> Any:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS_FOLDER))
    assert bag.import_errors == {}
    return bag.get_dag(DAG_ID)


def tries(run: Any) -> dict[tuple[str, str], tuple[str, int]]:
    """(state, try number) of every task instance of the run, by (task_id, rendered label)."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        tis = session.query(TaskInstance).filter_by(dag_id=run.dag_id, run_id=run.run_id).all()
        return {(ti.task_id, ti.rendered_map_index or ""): (str(ti.state), ti.try_number) for ti in tis}


def finish_awaits_retry() -> bool:
    """A finish task of the DAG failed a try that Airflow will retry.

    Read with sqlite3 straight from the metadata DB: importing Airflow's models in a second thread
    while dag.test() imports in the first can deadlock (SQLAlchemy's mapper configuration lock).
    """
    path = os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].removeprefix("sqlite:///")
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as conn:
        (count,) = conn.execute(
            "SELECT count(*) FROM task_instance WHERE dag_id = ? AND task_id = 'finish' AND state = 'up_for_retry'",
            (DAG_ID,),
        ).fetchone()
    return bool(count)


HISTORY = """
CREATE TABLE public.job_history (
    at timestamptz NOT NULL DEFAULT clock_timestamp(), job_id bigint, feature text, status text,
    try_number integer, error_message text);
CREATE FUNCTION public.record_job() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.job_history (job_id, status, try_number, error_message)
    VALUES (NEW.id, NEW.status, NEW.try_number, NEW.error_message);
    RETURN NULL;
END $$;
CREATE FUNCTION public.record_feature() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.job_history (job_id, feature, status, error_message)
    VALUES (NEW.job_id, NEW.feature_name, NEW.status, NEW.error_message);
    RETURN NULL;
END $$;
CREATE TRIGGER record_job AFTER INSERT OR UPDATE ON feature_store.materialization_jobs
    FOR EACH ROW EXECUTE FUNCTION public.record_job();
CREATE TRIGGER record_feature AFTER INSERT OR UPDATE ON feature_store.materialization_job_features
    FOR EACH ROW EXECUTE FUNCTION public.record_feature();
"""


def offline_rows(db: Sql) -> list[tuple]:  # type: ignore[type-arg]
    return db.rows(
        "SELECT tenant_id, feature_group_id, feature_name, entity_id, event_time, value"
        " FROM feature_store.feature_values ORDER BY 1, 2, 3, 4, 5"
    )


def test_a_terminated_write_and_a_redis_outage_in_finish_are_retried_to_a_clean_success(
    airflow_env: Settings, db: Sql, database_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Every change of a job or feature row, as it happens: a job shown `failed` even for a moment
    # would stay in this history.
    db.execute(HISTORY)
    server = RedisServer(free_port(), tmp_path)
    monkeypatch.setenv(
        "AIRFLOW_CONN_FEATURE_STORE_REDIS",
        json.dumps(
            {
                "conn_type": "redis",
                "host": "127.0.0.1",
                "port": server.port,
                "extra": {"db": 0, "key_prefix": airflow_env.redis_prefix},
            }
        ),
    )
    # Redis is down from the start of the run (only finish uses it; every task before it runs as
    # usual) and comes back once the first finish try has failed, so that try's retry publishes.
    # Retries wait 5 s, not the suite's 1 s, so that Redis is back before any retry even on a loaded
    # machine: acme/user_engagement may need all three of its tries (Redis down, terminated, done).
    monkeypatch.setenv("FEATURE_STORE_RETRY_DELAY_SECONDS", "5")
    server.start()
    server.stop()
    restarted = threading.Event()
    watch_error: list[BaseException] = []
    stop_watching = threading.Event()

    def restart_redis() -> None:
        try:
            wait_for("a finish try to fail", finish_awaits_retry, timeout=300, stop=stop_watching)
            server.start()
            restarted.set()
        except BaseException as exc:
            watch_error.append(exc)

    watcher = threading.Thread(target=restart_redis, name="restart-redis", daemon=True)
    watcher.start()
    try:
        # The first offline write of acme/user_engagement (by the job's finish task: with Redis down,
        # the write task that completes the job leaves its flush to finish) waits for the offline lock
        # the test holds; its backend is terminated mid-statement, then the lock is released for the
        # finish task's retry.
        with interrupt_offline_write(
            database_url,
            tenant_id="acme",
            group_id="user_engagement",
            action="pg_terminate_backend",
            timeout=300,
        ) as fault:
            run = load_dag().test(run_conf=CONF)
    finally:
        stop_watching.set()
        watcher.join(60)
        try:
            assert not watch_error, watch_error
            assert restarted.is_set(), "redis-server was never restarted: no finish try failed"
            # Still up: the online values the retried finish tasks published must be there.
            user = db.value(
                "SELECT min(entity_id) FROM feature_store.feature_values"
                " WHERE tenant_id = 'acme' AND feature_name = 'message_count'"
            )
            with FeatureStore(settings=airflow_env, redis_client=quick_redis(server.port)) as store:
                online = store.get_online_features("acme", "user", [user], ["user_engagement:message_count"])
        finally:
            server.stop()
    assert fault.pid is not None

    states = tries(run)
    assert str(run.state) == "success", states
    # The write task that completed acme/user_engagement succeeded at once: its flush (Redis down) is
    # left, noted, to the job's finish task, whose retry completes it.
    assert states[("materialize_feature.write", "acme/user_engagement/message_count")] == ("success", 1)
    finish_tries = {label: t for (task, label), t in states.items() if task == "finish"}
    assert {state for state, _ in finish_tries.values()} == {"success"}
    # acme/user_engagement's offline write was terminated once: at its first try that reached it
    # (try 1, or try 2 if Redis was still down at try 1), so a later try completed the job.
    assert finish_tries["acme/user_engagement"][1] in (2, 3)

    # Every job completed, and records the try of the finish that completed it.
    jobs = {
        f"{t}/{g}": (s, n, e)
        for t, g, s, n, e in db.rows(
            "SELECT tenant_id, feature_group_id, status, try_number, error_message"
            " FROM feature_store.materialization_jobs WHERE run_id = %s",
            (run.run_id,),
        )
    }
    assert jobs == {label: ("completed", finish_tries[label][1], None) for label in finish_tries}
    assert len(jobs) == 9

    # Never shown failed in between; the retried tries left notes naming their real cause instead.
    history = db.rows("SELECT job_id, feature, status, error_message FROM public.job_history ORDER BY at")
    assert [h for h in history if h[2] == "failed"] == []
    notes = [e for *_, e in history if e and re.match(r"retrying after try [12]: ", e)]
    assert any(
        "finish failed for job" in note
        and "(tenant 'acme', group 'user_engagement'): the database connection was terminated" in note
        for note in notes
    ), notes
    assert any(
        "finish failed for job" in note and ("Redis is unreachable" in note or "cannot connect to Redis" in note)
        for note in notes
    ), notes
    assert online[0].features["user_engagement:message_count"].status is OnlineValueStatus.PRESENT

    # The offline rows are those of a clean run (the library alone, no faults).
    through_retries = offline_rows(db)
    db.execute("TRUNCATE feature_store.offline_rows")
    with FeatureStore(settings=airflow_env) as store:
        for tenant in TENANTS:
            for group in GROUPS:
                result = store.materialize(
                    PipelineConfig(
                        tenant_id=tenant,
                        feature_group_id=group,
                        start_time=WINDOW.start,
                        end_time=WINDOW.end,
                        write_online=False,
                    )
                )
                assert result.status is JobStatus.COMPLETED
    assert offline_rows(db) == through_retries
    assert through_retries
