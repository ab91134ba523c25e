"""Scoped runs on request: the triggering asset events' extra narrows a run to a tenant, groups and window."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from support import HOURS, Sql

pytestmark = pytest.mark.airflow


def triggered_by(*extras: dict[str, Any]) -> dict[str, Any]:
    """A run context as Airflow builds it for a run triggered by events of the request asset."""
    from airflow.sdk.api.datamodels._generated import AssetReferenceAssetEventDagRun
    from airflow.sdk.execution_time.comms import AssetEventDagRunReferenceResult
    from airflow.sdk.execution_time.context import TriggeringAssetEventsAccessor

    from featurepipe_airflow.requests import REQUEST_ASSET

    events = [
        AssetEventDagRunReferenceResult(
            asset=AssetReferenceAssetEventDagRun(name=REQUEST_ASSET.name, uri=REQUEST_ASSET.uri, extra={}),
            extra=extra,
            source_task_id=None,
            source_dag_id=None,
            source_run_id=None,
            source_map_index=None,
            source_aliases=[],
            timestamp=datetime(2026, 11, 25, 10, 5, tzinfo=timezone.utc),
        )
        for extra in extras
    ]
    return {"triggering_asset_events": TriggeringAssetEventsAccessor.build(events)}


PARAMS = {"mode": "incremental", "tenant_ids": [], "feature_group_ids": [], "start": None, "end": None}


def scoped(context: dict[str, Any]) -> dict[str, Any]:
    from featurepipe_airflow.requests import requests_of, scoped_params

    return scoped_params(dict(PARAMS), requests_of(context))


def test_a_request_scopes_the_run_to_its_tenant_groups_and_window() -> None:
    params = scoped(
        triggered_by(
            {
                "tenant_id": "acme",
                "feature_group_ids": ["user_engagement"],
                "start": "2026-11-25T09:00:00Z",
                "end": "2026-11-25T10:00:00Z",
                "from_rest_api": True,  # what Airflow adds itself
            }
        )
    )
    assert params["tenant_ids"] == ["acme"]
    assert params["feature_group_ids"] == ["user_engagement"]
    assert (params["start"], params["end"]) == ("2026-11-25T09:00:00+00:00", "2026-11-25T10:00:00+00:00")
    assert params["mode"] == "incremental"


def test_requests_queued_into_one_run_are_merged() -> None:
    params = scoped(
        triggered_by(
            {
                "tenant_id": "acme",
                "feature_group_ids": ["user_engagement"],
                "start": "2026-11-25T09:00:00Z",
                "end": "2026-11-25T10:00:00Z",
            },
            {"tenant_ids": ["globex"], "start": "2026-11-25T07:00:00Z", "end": "2026-11-25T08:00:00Z"},
        )
    )
    assert params["tenant_ids"] == ["acme", "globex"]
    assert params["feature_group_ids"] == []  # one of them asked for every group
    assert (params["start"], params["end"]) == ("2026-11-25T07:00:00+00:00", "2026-11-25T10:00:00+00:00")
    assert params["mode"] == "full"  # different windows: every hour of the span, as hourly runs would


def test_scheduled_runs_are_not_scoped() -> None:
    assert scoped({}) == PARAMS
    assert scoped({"triggering_asset_events": triggered_by()["triggering_asset_events"]}) == PARAMS


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"feature_group_ids": ["user_engagement"]}, "names its tenant_id"),
        ({"tenant_id": "acme", "start": "2026-11-25T09:00:00Z"}, "start and end must be given together"),
        ({"tenant_id": "acme", "mode": "sometimes"}, "Input should be 'incremental' or 'full'"),
    ],
)
def test_a_bad_request_is_named(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        scoped(triggered_by(extra))


def test_plan_of_a_requested_run_creates_jobs_for_that_scope_only(airflow_env: object, db: Sql) -> None:
    from types import SimpleNamespace

    from featurepipe_airflow import tasks

    context = triggered_by(
        {
            "tenant_id": "globex",
            "feature_group_ids": ["conversation_stats"],
            "start": HOURS[0].start.isoformat(),
            "end": HOURS[0].end.isoformat(),
        }
    )
    context |= {
        "params": {**PARAMS, "write_online": True, "write_offline": True, "fanout": "auto", "shard_size": None},
        "ti": SimpleNamespace(dag_id="feature_materialization", run_id="asset_triggered__1", try_number=1),
    }
    finish = tasks.plan(context)
    assert [item["label"] for item in finish] == ["globex/conversation_stats"]
    assert db.rows(
        "SELECT tenant_id, feature_group_id, start_time, end_time FROM feature_store.materialization_jobs"
    ) == [("globex", "conversation_stats", HOURS[0].start, HOURS[0].end)]


def test_the_dag_runs_hourly_or_on_request(airflow_db: object) -> None:
    from airflow.dag_processing.dagbag import DagBag

    from featurepipe_airflow.requests import REQUEST_ASSET

    bag = DagBag(dag_folder=str(Path(__file__).resolve().parents[2] / "dags"))
    assert bag.import_errors == {}
    timetable: Any = bag.get_dag("feature_materialization").timetable
    assert type(timetable).__name__ == "AssetOrTimeSchedule"
    assert timetable.timetable.expression == "0 * * * *"
    assert f"Asset(name='{REQUEST_ASSET.name}'" in repr(timetable.asset_condition)
