"""The plugin: the listener mirrors Airflow state into jobs; the view shows jobs to authenticated users."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from feature_store import FeatureStore, JobStatus, RunInfo, Settings
from feature_store.pipeline.models import FeatureStatus
from support import HOURS, Sql

pytestmark = pytest.mark.airflow

DAG_ID = "feature_materialization"
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class TaskInstanceState:
    """The attributes Airflow's listener hooks read from a task instance."""

    dag_id: str
    run_id: str
    task_id: str
    rendered_map_index: str | None
    try_number: int
    state: str


@dataclass
class DagRunState:
    dag_id: str
    run_id: str


def feature_row(db: Sql, job_id: int, feature: str) -> tuple[str, str | None]:
    """(status, error_message) of one feature of a job."""
    [row] = db.rows(
        "SELECT status, error_message FROM feature_store.materialization_job_features"
        " WHERE job_id = %s AND feature_name = %s",
        (job_id, feature),
    )
    return row[0], row[1]


def plan_run(store: FeatureStore, run_id: str) -> dict[str, int]:
    planned = store.pipeline().plan(
        window=HOURS[-1], tenant_ids=["acme"], run=RunInfo(dag_id=DAG_ID, run_id=run_id, try_number=1)
    )
    return {p.feature_group_id: p.job_id for p in planned}


def test_a_task_marked_failed_from_the_ui_fails_its_feature_and_job(airflow_env: Settings) -> None:
    from featurepipe_airflow import listener

    with FeatureStore(settings=airflow_env) as store:
        jobs = plan_run(store, "manual__1")
        job_id = jobs["user_engagement"]
        pipeline = store.pipeline()
        for name in ("message_count", "avg_message_length", "conversation_count", "avg_rating"):
            pipeline.transform(job_id, name)
        # The API server calls the hook with previous_state=None when a user marks a task failed.
        listener.on_task_instance_failed(
            previous_state=None,
            task_instance=TaskInstanceState(
                DAG_ID, "manual__1", "materialize_feature.validate", "acme/user_engagement/message_count", 1, "failed"
            ),
            error="TaskInstance's state was manually set to `failed`.",
        )
        for name in ("avg_message_length", "conversation_count", "avg_rating"):
            pipeline.validate(job_id, name)
            pipeline.write(job_id, name)
        result = pipeline.finish(job_id)
    assert result.status is JobStatus.FAILED
    statuses = {f.feature: (f.status, f.error_message) for f in result.features}
    status, error = statuses["message_count"]
    assert status is FeatureStatus.FAILED
    assert error == (
        "Airflow task materialize_feature.validate [acme/user_engagement/message_count] of run manual__1 failed"
        " (try 1): TaskInstance's state was manually set to `failed`."
    )
    assert statuses["avg_rating"][0] is FeatureStatus.WRITTEN


def test_a_retry_is_not_a_failure_and_a_stage_error_keeps_its_own_message(airflow_env: Settings, db: Sql) -> None:
    from featurepipe_airflow import listener

    with FeatureStore(settings=airflow_env) as store:
        job_id = plan_run(store, "manual__2")["user_engagement"]
    ti = TaskInstanceState(
        DAG_ID, "manual__2", "materialize_feature.transform", "acme/user_engagement/avg_rating", 1, "up_for_retry"
    )
    listener.on_task_instance_failed(previous_state="running", task_instance=ti, error="connection reset")
    assert feature_row(db, job_id, "avg_rating") == ("pending", None)
    db.execute(
        "UPDATE feature_store.materialization_job_features SET status = 'failed', error_message = 'precise'"
        " WHERE job_id = %s AND feature_name = 'avg_rating'",
        (job_id,),
    )
    ti.state = "failed"
    listener.on_task_instance_failed(previous_state="running", task_instance=ti, error="AirflowFailException")
    assert feature_row(db, job_id, "avg_rating") == ("failed", "precise")


def test_a_killed_finish_task_or_a_failed_run_ends_unfinished_jobs_failed(airflow_env: Settings, db: Sql) -> None:
    from featurepipe_airflow import listener

    with FeatureStore(settings=airflow_env) as store:
        jobs = plan_run(store, "scheduled__3")
    # The scheduler reports a finish task it found dead (no heartbeat) as failed.
    listener.on_task_instance_failed(
        previous_state="running",
        task_instance=TaskInstanceState(DAG_ID, "scheduled__3", "finish", "acme/message_features", 2, "failed"),
        error="Task was killed: no heartbeat",
    )
    listener.on_dag_run_failed(dag_run=DagRunState(DAG_ID, "scheduled__3"), msg="timed_out")
    rows = dict(
        (group, (status, error))
        for group, status, error in db.rows(
            "SELECT feature_group_id, status, error_message FROM feature_store.materialization_jobs"
            " WHERE run_id = 'scheduled__3'"
        )
    )
    assert rows["message_features"][0] == "failed"
    assert (
        "Airflow task finish [acme/message_features] of run scheduled__3 failed (try 2)" in rows["message_features"][1]
    )
    assert "Task was killed: no heartbeat" in rows["message_features"][1]
    for group in ("user_engagement", "conversation_stats"):
        assert rows[group] == ("failed", "Airflow run scheduled__3 ended failed before the job finished (timed_out)")
    assert set(jobs) == set(rows)
    # The run is over: no staging table of its jobs is left behind.
    assert (
        db.value(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'feature_store_staging' AND tablename = ANY(%s)",
            ([f"job_{job_id}" for job_id in jobs.values()],),
        )
        == 0
    )


def test_the_listener_ignores_other_dags(airflow_env: Settings, db: Sql) -> None:
    from featurepipe_airflow import listener

    listener.on_dag_run_failed(dag_run=DagRunState("other_dag", "x"), msg="failed")
    listener.on_task_instance_failed(
        previous_state=None,
        task_instance=TaskInstanceState("other_dag", "x", "finish", "acme/user_engagement", 1, "failed"),
        error="boom",
    )
    assert db.value("SELECT count(*) FROM feature_store.materialization_jobs WHERE status = 'failed'") == 0


def test_the_plugin_registers_the_listener_and_the_view() -> None:
    import featurepipe_plugin

    from featurepipe_airflow import listener

    plugin = featurepipe_plugin.FeaturePipePlugin
    assert plugin.listeners == [listener]
    assert plugin.external_views[0]["url_route"] == "featurepipe"
    [registered] = plugin.fastapi_apps
    # Mounted as Airflow's API server mounts it, the registered app is the view (which wants a login).
    server = FastAPI()
    server.mount(registered["url_prefix"], registered["app"])
    assert registered["url_prefix"] == "/featurepipe"
    response = TestClient(server).get("/featurepipe/api/jobs")
    assert response.status_code == 401 and response.json() == {"detail": "Not authenticated"}


def test_loading_the_plugins_imports_each_module_once_by_its_name_and_no_web_framework(airflow_db: Path) -> None:
    """Every Airflow process loads the plugins, each task's own process too (for the listener), as a task does:
    only featurepipe_plugin.py is a plugin file (featurepipe_airflow's files loaded as loose modules took
    names such as `requests`), the views' web stack waits for the API server (it cost each task ~1 s), and
    the task bodies come with the plugin."""
    probe = (
        "import json, sys\n"
        "from airflow.sdk.listener import get_listener_manager\n"
        "get_listener_manager()\n"
        "print(json.dumps({'modules': {n: getattr(m, '__file__', None) for n, m in list(sys.modules.items())},"
        " 'web': sorted(m for m in ('fastapi', 'starlette', 'featurepipe_airflow.view') if m in sys.modules)}))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "plugins"), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True)
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    plugins = ROOT / "plugins"
    ours = {name: Path(file) for name, file in loaded["modules"].items() if file and Path(file).is_relative_to(plugins)}
    assert "featurepipe_airflow.listener" in ours  # the plugin was loaded, with its listener
    # ... and the task bodies, which a process that loads the plugins before forking hands to its tasks.
    assert "featurepipe_airflow.tasks" in ours and "feature_store.store" in loaded["modules"]
    for name, file in ours.items():
        dotted = ".".join(file.relative_to(plugins).with_suffix("").parts).removesuffix(".__init__")
        assert name == dotted, f"{file} was loaded as module {name!r}"
    assert loaded["web"] == []


def test_the_view_lists_jobs_freshness_and_quarantine(client: TestClient, airflow_env: Settings, db: Sql) -> None:
    db.execute(
        "UPDATE app.messages SET token_count = -1 WHERE id = (SELECT id FROM app.messages WHERE tenant_id = 'acme'"
        " AND created_at > %s AND created_at <= %s ORDER BY id LIMIT 1)",
        (HOURS[1].start, HOURS[1].end),
    )
    with FeatureStore(settings=airflow_env) as store:
        from feature_store import PipelineConfig

        for group in ("user_engagement", "message_features"):
            result = store.materialize(
                PipelineConfig(
                    tenant_id="acme", feature_group_id=group, start_time=HOURS[1].start, end_time=HOURS[1].end
                )
            )
    page = client.get("/")
    assert page.status_code == 200
    assert f"<td>{result.job_id}</td>" in page.text
    assert "is below min 0" in page.text
    jobs = client.get("/api/jobs").json()
    assert jobs[0]["id"] == result.job_id and jobs[0]["status"] == "completed"
    fresh = {(f["tenant_id"], f["feature_group_id"]): f for f in client.get("/api/freshness").json()}
    assert fresh[("acme", "message_features")]["last_window_end"].startswith(HOURS[1].end.isoformat()[:19])
    assert fresh[("globex", "message_features")]["stale"] is True  # never materialized
    assert fresh[("acme", "message_features")]["stale"] is False  # materialized, and the group sets no target
    # user_engagement wants data at most 2 h old; the test data is weeks old.
    assert fresh[("acme", "user_engagement")]["stale"] is True
    assert fresh[("acme", "user_engagement")]["age_seconds"] > 7200


def test_the_view_requires_an_authenticated_user(airflow_env: Settings) -> None:
    from featurepipe_airflow import view

    assert TestClient(view.app).get("/api/jobs").status_code == 401


def test_a_shard_task_that_failed_for_good_fails_its_tenants_that_did_not_get_through(
    airflow_env: Settings, db: Sql
) -> None:
    from featurepipe_airflow import listener

    with FeatureStore(settings=airflow_env) as store:
        planned = store.pipeline().plan(window=HOURS[-1], run=RunInfo(dag_id=DAG_ID, run_id="manual__7", try_number=1))
        shard = {p.tenant_id: p.job_id for p in planned if p.feature_group_id == "user_engagement"}
        store.pipeline().record_shards({shard["acme"]: 1, shard["globex"]: 1, shard["initech"]: 2})
        pipeline = store.pipeline()
        for stage in (pipeline.transform, pipeline.validate, pipeline.write):
            stage(shard["acme"], "message_count")  # acme got through before the task was killed
        pipeline.transform(shard["globex"], "message_count")
    # The worker running the shard's write task died; Airflow failed the task after its last try.
    listener.on_task_instance_failed(
        previous_state="running",
        task_instance=TaskInstanceState(
            DAG_ID, "manual__7", "materialize_feature.write", "user_engagement/message_count/shard 1 of 2", 3, "failed"
        ),
        error="Task instance heartbeat timed out",
    )
    assert feature_row(db, shard["acme"], "message_count")[0] == "written"
    status, error = feature_row(db, shard["globex"], "message_count")
    assert status == "failed" and error is not None and "shard 1 of 2] of run manual__7 failed (try 3)" in error
    assert feature_row(db, shard["initech"], "message_count") == ("pending", None)  # another shard
