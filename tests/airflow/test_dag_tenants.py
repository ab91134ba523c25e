"""The DAG plans each tenant's own groups and the shared ones it keeps, with its overrides."""

from __future__ import annotations

import pytest
import redis
from test_dag import CONF, load_dag, task_states

from feature_store import FeatureStore, Settings
from featurepipe_demo import demo_tenant_repo_paths
from support import REDIS_URL, Sql

pytestmark = pytest.mark.airflow


def test_a_run_plans_owned_and_enabled_shared_groups_per_tenant(airflow_env: Settings, db: Sql) -> None:
    # The demo's tenant repos: Acme owns acme_satisfaction; Globex switched message_features off and
    # keeps user_engagement online a day (the platform's group says a week).
    with FeatureStore(settings=airflow_env) as store:
        for path in demo_tenant_repo_paths():
            store.apply(path)
    run = load_dag().test(run_conf={**CONF, "tenant_ids": ["acme", "globex"]})
    assert str(run.state) == "success"

    jobs = set(db.rows("SELECT tenant_id, feature_group_id, status FROM feature_store.materialization_jobs"))
    shared = {"user_engagement", "conversation_stats", "message_features"}
    assert jobs == (
        {("acme", g, "completed") for g in shared | {"acme_satisfaction"}}
        | {("globex", g, "completed") for g in shared - {"message_features"}}
    )
    states = task_states(run)
    assert states[("materialize_feature.transform", "acme/acme_satisfaction/low_rating_count")] == "success"
    assert states[("finish", "acme/acme_satisfaction")] == "success"
    labels = {label for _, label in states}
    assert not {label for label in labels if label.startswith(("globex/message_features", "globex/acme_"))}

    client = redis.Redis.from_url(REDIS_URL)
    try:
        ttls = {
            tenant: {
                client.ttl(k)
                for k in client.scan_iter(match=f"{airflow_env.redis_prefix}:{{{tenant}:user_engagement:*", count=1000)
            }
            for tenant in ("acme", "globex")
        }
    finally:
        client.close()
    assert ttls["globex"] and all(86_000 < t <= 86_400 for t in ttls["globex"])
    assert ttls["acme"] and all(604_000 < t <= 604_800 for t in ttls["acme"])
