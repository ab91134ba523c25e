"""The DAG lands API sources before the transforms that read them (dag.test(), real services)."""

from __future__ import annotations

import pytest
from test_api_sources import Api, accounts, api, crm  # noqa: F401  (fixtures)
from test_dag import load_dag, task_states

from feature_store import FeatureStore, Settings
from support import HOURS, Sql

pytestmark = pytest.mark.airflow


def test_a_run_lands_the_api_source_then_materializes_from_it(
    airflow_env: Settings,
    crm: FeatureStore,  # noqa: F811
    api: Api,  # noqa: F811
    db: Sql,
) -> None:
    window = HOURS[-1]
    api.faults = ["503"]
    conf = {
        "start": window.start.isoformat(),
        "end": window.end.isoformat(),
        "tenant_ids": ["acme"],
        "feature_group_ids": ["crm"],
    }
    run = load_dag().test(run_conf=conf)
    states = task_states(run)
    assert states[("land_api_sources", "")] == "success"
    assert states[("materialize_feature.transform", "acme/crm/seats")] == "success"
    assert str(run.state) == "success"
    sums: dict[str, int] = {}
    for a in accounts("acme"):
        sums[a["owner"]["user_id"]] = sums.get(a["owner"]["user_id"], 0) + a["seats"]
    assert (
        dict(db.rows("SELECT entity_id, value FROM feature_store.feature_values WHERE feature_group_id = 'crm'"))
        == sums
    )
    # Landed once per run, for the run's tenants only.
    assert db.rows("SELECT DISTINCT tenant_id FROM app.crm_accounts") == [("acme",)]
