"""
### feature_alerts

Every five minutes, evaluates featurepipe's alerts and delivers them: a feature's quarantine rate
over its route's threshold, a failed job, a missed deadline, a group not fresh within its target
(default twice the hourly schedule). One notification per breach and one when it clears, to the
channels the feature repo's `alerts:` section routes the group to (e-mail, webhook). A delivery
that fails stays pending and is retried on the next run.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import dag, task


@dag(
    schedule=timedelta(minutes=5),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["featurepipe"],
    default_args={"retries": 1, "retry_delay": timedelta(minutes=1)},
)
def feature_alerts() -> None:
    @task
    def deliver_alerts() -> dict[str, int]:
        from featurepipe_airflow.alerting import evaluate_and_deliver
        from featurepipe_airflow.hooks import open_store

        with open_store() as store:
            return evaluate_and_deliver(store)

    deliver_alerts()


feature_alerts()
