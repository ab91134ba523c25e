"""The DAG with tenants in shards: same values as one item per tenant, failures that stay with their tenant,
retries that skip the tenants that got through, and jobs that finish as the run goes."""

from __future__ import annotations

from typing import Any

import pytest
from test_dag import CONF, WINDOW, load_dag, offline_rows, task_states

from feature_store import FeatureStore, JobStatus, PipelineConfig, Settings
from feature_store.definitions.repo import load_repo
from featurepipe_demo import demo_repo_path
from support import Sql

pytestmark = pytest.mark.airflow

TENANTS = ("acme", "globex", "initech")
GROUPS = ("user_engagement", "conversation_stats", "message_features")
SHARDS = {**CONF, "fanout": "shard", "shard_size": 2}


def jobs(db: Sql) -> dict[tuple[str, str], tuple[Any, ...]]:
    return {
        (r[0], r[1]): r[2:]
        for r in db.rows(
            "SELECT tenant_id, feature_group_id, status, shard, try_number, error_message, finish_claimed_at,"
            " completed_at FROM feature_store.materialization_jobs"
        )
    }


def test_a_sharded_run_gives_the_values_of_one_item_per_tenant(airflow_env: Settings, db: Sql) -> None:
    run = load_dag().test(run_conf=SHARDS)
    assert str(run.state) == "success"
    states = task_states(run)
    # acme and globex share shard 1 of each group, initech is shard 2.
    assert states[("materialize_feature.transform", "user_engagement/message_count/shard 1 of 2")] == "success"
    assert states[("finish", "message_features/shard 2 of 2")] == "success"
    batch_features = sum(len(g.batch_features) for g in load_repo(demo_repo_path()).groups)
    assert len([s for s in states if s[0] == "materialize_feature.write"]) == 2 * batch_features
    found = jobs(db)
    assert {(t, g): v[:2] for (t, g), v in found.items()} == {
        (t, g): ("completed", 1 if t in ("acme", "globex") else 2) for t in TENANTS for g in GROUPS
    }
    # Jobs finished as the run went: each was published by the write task that found it done,
    # before the run's mapped finish tasks ran.
    assert all(v[4] is not None and v[5] is not None for v in found.values())
    sharded = offline_rows(db)
    db.execute("TRUNCATE feature_store.offline_rows")
    with FeatureStore(settings=airflow_env) as store:
        for tenant in TENANTS:
            for group in GROUPS:
                config = PipelineConfig(
                    tenant_id=tenant, feature_group_id=group, start_time=WINDOW.start, end_time=WINDOW.end
                )
                assert store.materialize(config).status is JobStatus.COMPLETED
    assert offline_rows(db) == sharded and sharded


def test_a_tenant_failing_in_a_shard_fails_only_its_job(airflow_env: Settings, db: Sql) -> None:
    db.execute(
        "UPDATE feature_store.feature_definitions SET transformation_sql ="
        " 'SELECT m.user_id AS entity_id, count(*) / CASE WHEN %(tenant_id)s = ''globex'' THEN 0 ELSE 1 END AS value"
        "  FROM app.messages m WHERE m.tenant_id = %(tenant_id)s"
        "   AND m.created_at > %(start_time)s AND m.created_at <= %(end_time)s GROUP BY m.user_id'"
        " WHERE feature_group_id = 'user_engagement' AND name = 'message_count'"
    )
    run = load_dag().test(run_conf=SHARDS)
    assert str(run.state) == "failed"
    states = task_states(run)
    shard = "user_engagement/message_count/shard 1 of 2"
    # acme went on through validate and write; the write task fails at the end, naming globex's job.
    assert states[("materialize_feature.transform", shard)] == "success"
    assert states[("materialize_feature.validate", shard)] == "success"
    assert states[("materialize_feature.write", shard)] == "failed"
    assert states[("finish", "user_engagement/shard 1 of 2")] == "failed"
    assert states[("finish", "user_engagement/shard 2 of 2")] == "success"
    found = jobs(db)
    assert found[("globex", "user_engagement")][0] == "failed"
    assert "message_count: transform failed for tenant 'globex'" in found[("globex", "user_engagement")][3]
    assert "division by zero" in found[("globex", "user_engagement")][3]
    assert {k: v[0] for k, v in found.items() if k != ("globex", "user_engagement")} == {
        k: "completed" for k in found if k != ("globex", "user_engagement")
    }
    acme_counts = "SELECT count(*) FROM feature_store.feature_values WHERE tenant_id = 'acme' AND feature_name = %s"
    assert db.value(acme_counts, ("message_count",)) > 0


def test_a_retry_in_a_shard_redoes_only_the_tenant_that_failed(
    airflow_env: Settings, db: Sql, monkeypatch: pytest.MonkeyPatch
) -> None:
    # globex's first transform of message_count hits the statement timeout (retryable); acme's does not.
    # Each transform of either tenant counts itself in a sequence.
    monkeypatch.setenv("FEATURE_STORE_STATEMENT_TIMEOUT", "1")
    globex, acme = db.try_counter("globex_tries"), db.try_counter("acme_tries")
    db.execute(
        "UPDATE feature_store.feature_definitions SET transformation_sql ="
        " 'SELECT m.user_id AS entity_id, count(*) AS value FROM app.messages m"
        "  WHERE m.tenant_id = %(tenant_id)s AND m.role = ''user''"
        "    AND m.created_at > %(start_time)s AND m.created_at <= %(end_time)s"
        "    AND (SELECT CASE %(tenant_id)s"
        f"         WHEN ''globex'' THEN CASE WHEN {globex} = 1 THEN pg_sleep(3) END"
        f"         WHEN ''acme'' THEN CASE WHEN {acme} < 0 THEN pg_sleep(0) END END) IS NULL"
        "  GROUP BY m.user_id'"
        " WHERE feature_group_id = 'user_engagement' AND name = 'message_count'"
    )
    run = load_dag().test(run_conf={**SHARDS, "feature_group_ids": ["user_engagement"]})
    assert str(run.state) == "success"
    assert {k: v[0] for k, v in jobs(db).items()} == {(t, "user_engagement"): "completed" for t in TENANTS}
    assert db.value("SELECT last_value FROM app.globex_tries") == 2  # failed once, retried
    assert db.value("SELECT last_value FROM app.acme_tries") == 1  # same shard, not redone by that retry
