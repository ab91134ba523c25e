"""The real `feature_materialization` DAG, run in-process with dag.test() against real PostgreSQL and Redis."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from feature_store import FeatureStore, JobStatus, PipelineConfig, Settings
from support import HOURS, Sql

pytestmark = pytest.mark.airflow

DAGS_FOLDER = Path(__file__).resolve().parents[2] / "dags"
WINDOW = HOURS[-1]
CONF = {"start": WINDOW.start.isoformat(), "end": WINDOW.end.isoformat()}


def load_dag() -> Any:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS_FOLDER))
    assert bag.import_errors == {}
    return bag.get_dag("feature_materialization")


def task_states(run: Any) -> dict[tuple[str, str], str]:
    """State of every task instance keyed by (task_id, label), labels taken from the XComs the DAG
    mapped over (tasks that never ran, such as upstream_failed ones, have no rendered label)."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:

        def pulled(task_id: str) -> list[dict[str, Any]]:
            query = XComModel.get_many(run_id=run.run_id, dag_ids=run.dag_id, task_ids=task_id, key="return_value")
            return XComModel.deserialize_value(session.scalars(query).one())  # type: ignore[no-any-return]

        labels = {
            "finish": [item["label"] for item in pulled("plan")],
            "materialize_feature": [item["label"] for item in pulled("work_items")],
        }
        tis = session.query(TaskInstance).filter_by(dag_id=run.dag_id, run_id=run.run_id).all()
        return {
            (ti.task_id, labels[ti.task_id.split(".")[0]][ti.map_index] if ti.map_index >= 0 else ""): str(ti.state)
            for ti in tis
        }


def offline_rows(db: Sql) -> list[tuple]:  # type: ignore[type-arg]
    return db.rows(
        "SELECT tenant_id, feature_group_id, feature_name, entity_id, event_time, value"
        " FROM feature_store.feature_values ORDER BY 1, 2, 3, 4, 5"
    )


def test_a_run_completes_every_job_with_the_library_values(airflow_env: Settings, db: Sql, database_url: str) -> None:
    run = load_dag().test(run_conf=CONF)
    assert str(run.state) == "success"
    jobs = db.rows(
        "SELECT tenant_id, feature_group_id, status, progress, run_id FROM feature_store.materialization_jobs"
    )
    assert len(jobs) == 9  # 3 tenants x 3 groups
    assert {(s, p, r) for _, _, s, p, r in jobs} == {("completed", 1.0, run.run_id)}
    states = task_states(run)
    assert states[("materialize_feature.transform", "acme/user_engagement/message_count")] == "success"
    assert states[("finish", "acme/user_engagement")] == "success"
    through_airflow = offline_rows(db)

    # The same windows through the library alone, in a fresh copy of the database: identical values.
    db.execute("TRUNCATE feature_store.offline_rows")
    with FeatureStore(settings=airflow_env) as store:
        for tenant in ("acme", "globex", "initech"):
            for group in ("user_engagement", "conversation_stats", "message_features"):
                result = store.materialize(
                    PipelineConfig(
                        tenant_id=tenant, feature_group_id=group, start_time=WINDOW.start, end_time=WINDOW.end
                    )
                )
                assert result.status is JobStatus.COMPLETED
    assert offline_rows(db) == through_airflow
    assert through_airflow


def test_a_feature_with_broken_sql_fails_only_its_own_tasks(airflow_env: Settings, db: Sql) -> None:
    db.execute(
        "UPDATE feature_store.feature_definitions SET transformation_sql ="
        " 'SELECT m.user_id AS entity_id, count(*) / 0 AS value FROM app.messages m"
        "  WHERE m.tenant_id = %(tenant_id)s GROUP BY m.user_id'"
        " WHERE feature_group_id = 'user_engagement' AND name = 'conversation_count'"
    )
    run = load_dag().test(run_conf=CONF)
    assert str(run.state) == "failed"
    states = task_states(run)
    for tenant in ("acme", "globex", "initech"):
        broken = f"{tenant}/user_engagement/conversation_count"
        assert states[("materialize_feature.transform", broken)] == "failed"
        assert states[("materialize_feature.validate", broken)] == "upstream_failed"
        sibling = f"{tenant}/user_engagement/message_count"
        assert states[("materialize_feature.write", sibling)] == "success"
        assert states[("finish", f"{tenant}/user_engagement")] == "failed"
        assert states[("finish", f"{tenant}/message_features")] == "success"
    jobs = dict(
        ((t, g), (s, e))
        for t, g, s, e in db.rows(
            "SELECT tenant_id, feature_group_id, status, error_message FROM feature_store.materialization_jobs"
        )
    )
    status, error = jobs[("acme", "user_engagement")]
    assert status == "failed"
    assert "conversation_count: transform failed for tenant 'acme', group 'user_engagement'" in error
    assert "division by zero" in error
    assert jobs[("acme", "message_features")][0] == "completed"
    # Siblings' values landed, offline and online.
    assert (
        db.value(
            "SELECT count(*) FROM feature_store.feature_values"
            " WHERE tenant_id = 'acme' AND feature_group_id = 'user_engagement' AND feature_name = 'message_count'"
        )
        > 0
    )
    assert db.value("SELECT count(*) FROM feature_store.feature_values WHERE feature_name = 'conversation_count'") == 0
    with FeatureStore(settings=airflow_env) as store:
        row = store.get_online_features(
            "acme", "user", ["acme-u001"], ["user_engagement:message_count", "user_engagement:conversation_count"]
        )[0]
    assert row.features["user_engagement:conversation_count"].status.value == "missing"


def test_a_retried_task_and_a_rerun_do_not_duplicate_rows(
    airflow_env: Settings, db: Sql, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first try of each tenant's message_count transform hits the statement timeout (retryable);
    # the retry succeeds.
    monkeypatch.setenv("FEATURE_STORE_STATEMENT_TIMEOUT", "1")
    bump = db.try_counter("tries")
    db.execute(
        "UPDATE feature_store.feature_definitions SET transformation_sql ="
        " 'SELECT m.user_id AS entity_id, count(*) AS value FROM app.messages m"
        "  WHERE m.tenant_id = %(tenant_id)s AND m.role = ''user''"
        "    AND m.created_at > %(start_time)s AND m.created_at <= %(end_time)s"
        f"    AND (SELECT CASE WHEN {bump} <= 3 THEN pg_sleep(3) END) IS NULL"
        "  GROUP BY m.user_id'"
        " WHERE feature_group_id = 'user_engagement' AND name = 'message_count'"
    )
    dag = load_dag()
    run = dag.test(run_conf=CONF)
    assert str(run.state) == "success"
    assert db.value("SELECT last_value FROM app.tries") > 3  # the timed-out first tries really happened
    expected = db.value(
        "SELECT count(DISTINCT user_id) FROM app.messages WHERE role = 'user' AND created_at > %s AND created_at <= %s",
        (WINDOW.start, WINDOW.end),
    )
    count = db.value(
        "SELECT count(*) FROM feature_store.feature_values"
        " WHERE feature_group_id = 'user_engagement' AND feature_name = 'message_count'"
    )
    assert count == expected > 0
    total = db.value("SELECT count(*) FROM feature_store.feature_values")
    # Run the same interval again: same end state, same row count.
    again = dag.test(run_conf=CONF)
    assert str(again.state) == "success"
    assert db.value("SELECT count(*) FROM feature_store.feature_values") == total


def test_the_dag_imports_without_errors_or_database_access(monkeypatch: pytest.MonkeyPatch, airflow_db: object) -> None:
    import psycopg
    import redis

    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("DAG parsing must not touch PostgreSQL or Redis")

    monkeypatch.setattr(psycopg, "connect", refuse)
    monkeypatch.setattr(redis.Redis, "execute_command", refuse)
    dag = load_dag()
    assert dag.dag_id == "feature_materialization"
    assert dag.catchup is False
    assert set(dag.params.keys()) >= {"mode", "write_online", "write_offline", "tenant_ids", "feature_group_ids"}
    for task in dag.tasks:
        assert task.retries >= 1, task.task_id
        assert task.execution_timeout is not None, task.task_id


def test_a_run_reconciles_redis_after_it_restarted(airflow_env: Settings, db: Sql) -> None:
    import redis

    dag = load_dag()
    assert str(dag.test(run_conf=CONF).state) == "success"
    client = redis.Redis.from_url(airflow_env.redis_url)
    keys = sorted(client.scan_iter(match=f"{airflow_env.redis_prefix}:*"))
    assert keys
    # Redis comes back empty (a restart without persistence): the next run's check_online sees a
    # different server than the last check did and restores every group, not only this run's window.
    client.unlink(*keys)
    db.execute("UPDATE feature_store.online_instances SET instance_id = 'the-server-before-the-restart'")
    earlier = {"start": HOURS[0].start.isoformat(), "end": HOURS[0].end.isoformat(), "tenant_ids": ["initech"]}
    assert str(dag.test(run_conf=earlier).state) == "success"
    restored = set(client.scan_iter(match=f"{airflow_env.redis_prefix}:*"))
    assert set(keys) <= restored
    with FeatureStore(settings=airflow_env) as store:
        sampled = [f for f in store.freshness() if f.online_sampled]
        assert sampled and all(f.online_present == f.online_sampled for f in sampled)
