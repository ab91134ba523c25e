"""
### feature_materialization

Every hour (and whenever an application asks for a scoped run through an event of the asset
`feature_materialization_request`), for each active tenant x active feature group, runs each batch feature's
**transform → validate → write** as three tasks (map index `tenant/group/feature`), then one
**finish** task per job that publishes the group's values online and ends the job.

- **Window**: the run's data interval; a manual run uses the last complete hour unless the
  params `start` / `end` are given. Re-running or backfilling an hour replaces that hour.
- **Backfill** from the UI (Trigger → Backfill) or `POST /api/v2/backfills`. `mode=full` recomputes
  every hour of the window as hourly runs would (with explicit `start`/`end` spanning many hours);
  windows may not end in the future. `overwrite_online` (a reason) lets a corrective rerun replace
  newer online values; the reason is recorded on each job.
- **Scoped runs on request**: an event of the asset `feature_materialization_request` (REST
  `POST /api/v2/assets/events`) with `extra` `{"tenant_id": ..., "feature_group_ids": [...], "start": ..., "end": ...}`
  runs the DAG for just that tenant (groups, window); see `featurepipe_airflow/requests.py`.
- **land_api_sources** lands the repo's API sources for the run's tenants and window before the transforms.
- **check_online** reconciles Redis from the offline store when Redis restarted since the last check.
- A failing feature fails only its own tasks; its job ends `failed` with the reason
  (see `feature_store.materialization_jobs` and the *Feature Store* view).
- A run still going `FEATURE_STORE_DEADLINE_MINUTES` (default 45; 0 turns it off) after it was queued
  misses its deadline: the triggerer records it for the *Feature Store* view.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import (  # type: ignore[attr-defined]  # airflow.sdk's stub omits the deadline classes
    AssetOrTimeSchedule,
    AsyncCallback,
    CronDataIntervalTimetable,
    DeadlineAlert,
    DeadlineReference,
    Param,
    dag,
    get_current_context,
    task,
    task_group,
)

from featurepipe_airflow import tasks
from featurepipe_airflow.fanout import FinishItem, WorkItem
from featurepipe_airflow.requests import REQUEST_ASSET

LABEL = "{{ task.op_kwargs['item']['label'] }}"


@dag(
    # Hourly, or when an application emits a materialization request (an asset event, see requests.py).
    schedule=AssetOrTimeSchedule(
        timetable=CronDataIntervalTimetable("@hourly", timezone="UTC"), assets=[REQUEST_ASSET]
    ),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=4,
    doc_md=__doc__,
    tags=["featurepipe"],
    default_args={
        # Later stages first: a started job finishes before new ones start (jobs complete as the run goes).
        "weight_rule": "upstream",
        "retries": 2,
        "retry_delay": tasks.retry_delay(),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(minutes=10),
        "execution_timeout": timedelta(minutes=30),
    },
    params={
        "mode": Param(
            "incremental", enum=["incremental", "full"], description="full recomputes every hour of the window."
        ),
        "write_online": Param(True, type="boolean"),
        "write_offline": Param(True, type="boolean"),
        "tenant_ids": Param([], type="array", items={"type": "string"}, description="Only these tenants."),
        "feature_group_ids": Param([], type="array", items={"type": "string"}, description="Only these groups."),
        "start": Param(None, type=["null", "string"], description="Explicit window start (ISO 8601, UTC)."),
        "end": Param(None, type=["null", "string"], description="Explicit window end (ISO 8601, UTC)."),
        "fanout": Param(
            "auto",
            enum=["auto", "tenant", "shard"],
            description="Mapped items per tenant (tenant/group/feature), per tenant shard (group/feature/shard N of M),"
            " or auto: per tenant while the run is small, shards when it is not.",
        ),
        "shard_size": Param(None, type=["null", "integer"], minimum=1, description="Tenants per shard (fanout=shard)."),
        "overwrite_online": Param(
            None,
            type=["null", "string"],
            description="A corrective rerun: why online values may be replaced even where newer (recorded on the job).",
        ),
    },
    deadline=[
        DeadlineAlert(
            reference=DeadlineReference.DAGRUN_QUEUED_AT,
            interval=deadline,
            callback=AsyncCallback("featurepipe_airflow.deadlines.record_deadline_miss"),
        )
        for deadline in tasks.run_deadline()
    ],
)
def feature_materialization() -> None:
    @task
    def check_online() -> dict[str, int]:
        return tasks.check_online()

    @task
    def plan() -> list[FinishItem]:
        return tasks.plan(get_current_context())

    @task
    def work_items(finish: list[FinishItem]) -> list[WorkItem]:
        return tasks.work_items(finish)

    @task_group
    def materialize_feature(item: WorkItem) -> None:
        @task(map_index_template=LABEL)
        def transform(item: WorkItem) -> dict[str, int]:
            return tasks.transform(item, get_current_context())

        @task(map_index_template=LABEL)
        def validate(item: WorkItem) -> dict[str, int]:
            return tasks.validate(item, get_current_context())

        @task(map_index_template=LABEL)
        def write(item: WorkItem) -> dict[str, int]:
            return tasks.write(item, get_current_context())

        transform(item=item) >> validate(item=item) >> write(item=item)

    @task(map_index_template=LABEL, trigger_rule="all_done")
    def finish(item: FinishItem) -> dict[str, int]:
        return tasks.finish(item, get_current_context())

    @task
    def land_api_sources() -> dict[str, int]:
        return tasks.land_api_sources(get_current_context())

    check_online()
    planned = plan()
    items = work_items(planned)  # type: ignore[arg-type]
    land_api_sources() >> items  # API sources are landed before any transform reads them
    materialize_feature.expand(item=items) >> finish.expand(item=planned)


feature_materialization()
