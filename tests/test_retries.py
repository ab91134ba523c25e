"""Failures a retry can fix, against the real PostgreSQL and Redis: they leave the feature (or job)
retryable until the last try, a retry completes the job, and the error names the real cause."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from faults import RedisServer, free_port, interrupt_offline_write, quick_redis
from test_online_consistency import latest_offline, online_values

from feature_store import FeatureStore, JobStatus, PipelineConfig, Settings, TransformError
from feature_store.errors import FinishError
from support import HOURS, Sql

WINDOW = HOURS[-1]
GROUP, FEATURE = "message_features", "token_count"


def one_feature_job(feature: str = FEATURE, group: str = GROUP) -> PipelineConfig:
    return PipelineConfig(
        tenant_id="acme", feature_group_id=group, start_time=WINDOW.start, end_time=WINDOW.end, features=(feature,)
    )


def feature_row(db: Sql, job_id: int, feature: str = FEATURE) -> tuple[str, str | None]:
    [row] = db.rows(
        "SELECT status, error_message FROM feature_store.materialization_job_features"
        " WHERE job_id = %s AND feature_name = %s",
        (job_id, feature),
    )
    return row[0], row[1]


def job_row(db: Sql, job_id: int) -> tuple[str, int | None, str | None]:
    [row] = db.rows(
        "SELECT status, try_number, error_message FROM feature_store.materialization_jobs WHERE id = %s", (job_id,)
    )
    return row[0], row[1], row[2]


def offline_rows(db: Sql) -> list[tuple]:  # type: ignore[type-arg]
    return db.rows(
        "SELECT feature_name, entity_id, event_time, value FROM feature_store.feature_values ORDER BY 1, 2, 3"
    )


def test_a_flush_whose_backend_is_terminated_stays_retryable_and_the_next_try_completes_the_job(
    settings: Settings, db: Sql, database_url: str
) -> None:
    with FeatureStore(settings=settings) as store:
        pipeline = store.pipeline()
        job_id = pipeline.start(one_feature_job()).job_id
        pipeline.transform(job_id, FEATURE, try_number=1, final=False)
        pipeline.validate(job_id, FEATURE, try_number=1, final=False)
        written = pipeline.write(job_id, FEATURE, try_number=1, final=False)
        backend = store.conn.info.backend_pid
        # The job's flush (the offline write of its features, then the publish) loses its backend.
        with (
            interrupt_offline_write(
                database_url, tenant_id="acme", group_id=GROUP, action="pg_terminate_backend"
            ) as fault,
            pytest.raises(FinishError) as raised,
        ):
            pipeline.finish(job_id, try_number=1, final=False)
        assert fault.pid == backend
        assert store.conn.closed  # the store's own connection died with its backend
    assert raised.value.retryable
    assert "the database connection was terminated" in str(raised.value)

    # Recorded (on a new connection) as a note: the feature is still written, the job still running.
    assert feature_row(db, job_id) == ("written", None)
    status, try_number, error = job_row(db, job_id)
    assert (status, try_number) == ("running", 1)
    assert error is not None and error.startswith(
        f"retrying after try 1: finish failed for job {job_id} (tenant 'acme', group 'message_features'):"
        " the database connection was terminated"
    )
    assert offline_rows(db) == []

    # The next try, as Airflow makes it: a new process, a new connection.
    with FeatureStore(settings=settings) as store:
        result = store.pipeline().finish(job_id, try_number=2, final=True)
    assert result.status is JobStatus.COMPLETED
    assert job_row(db, job_id) == ("completed", 2, None)
    assert written == len(offline_rows(db)) > 0


def test_values_that_went_online_while_the_offline_write_ran_are_put_back_when_that_write_fails(
    settings: Settings, db: Sql, database_url: str
) -> None:
    group = "user_engagement"
    job = PipelineConfig(tenant_id="acme", feature_group_id=group, start_time=WINDOW.start, end_time=WINDOW.end)
    with FeatureStore(settings=settings) as store:
        assert store.materialize(job).status is JobStatus.COMPLETED
        before = online_values(store, "acme", group)
        assert before and before == latest_offline(db, "acme", group)
    # Half of the window's messages go: counts drop, and users left without a message lose their value.
    db.execute(
        "DELETE FROM app.feedback WHERE message_id IN (SELECT id FROM app.messages WHERE tenant_id = 'acme'"
        " AND created_at > %(start)s AND created_at <= %(end)s AND abs(hashtext(id::text)) %% 2 = 0)",
        {"start": WINDOW.start, "end": WINDOW.end},
    )
    db.execute(
        "DELETE FROM app.messages WHERE tenant_id = 'acme' AND created_at > %(start)s AND created_at <= %(end)s"
        " AND abs(hashtext(id::text)) %% 2 = 0",
        {"start": WINDOW.start, "end": WINDOW.end},
    )
    with FeatureStore(settings=settings) as store:
        pipeline = store.pipeline()
        planned = pipeline.start(job)
        for feature in planned.features:
            pipeline.transform(planned.job_id, feature)
            pipeline.validate(planned.job_id, feature)
            pipeline.write(planned.job_id, feature)
        # The new values go online while the offline write waits; then the write's backend dies.
        with (
            interrupt_offline_write(
                database_url,
                tenant_id="acme",
                group_id=group,
                action="pg_terminate_backend",
                timeout=60,
                ready=lambda: online_values(store, "acme", group) != before,
            ),
            pytest.raises(FinishError),
        ):
            pipeline.finish(planned.job_id, try_number=1, final=True)
        assert online_values(store, "acme", group) == before == latest_offline(db, "acme", group)

    with FeatureStore(settings=settings) as store:
        assert store.pipeline().finish(planned.job_id, try_number=2).status is JobStatus.COMPLETED
        after = online_values(store, "acme", group)
    assert after != before and after == latest_offline(db, "acme", group)


def test_without_an_orchestrator_a_terminated_flush_is_retried_in_process_on_a_new_connection(
    settings: Settings, db: Sql, database_url: str
) -> None:
    with (
        FeatureStore(settings=settings) as store,
        interrupt_offline_write(database_url, tenant_id="acme", group_id=GROUP, action="pg_terminate_backend") as fault,
    ):
        result = store.materialize(one_feature_job(), parallelism=1)
    assert fault.pid is not None
    assert result.status is JobStatus.COMPLETED, result.errors
    assert [(f.feature, f.status.value, f.error_message) for f in result.features] == [(FEATURE, "written", None)]
    retried = offline_rows(db)

    db.execute("TRUNCATE feature_store.offline_rows")
    with FeatureStore(settings=settings) as store:
        assert store.materialize(one_feature_job(), parallelism=1).status is JobStatus.COMPLETED
    assert offline_rows(db) == retried and retried


def test_a_cancelled_statement_is_reported_as_cancelled_and_a_timeout_as_a_timeout(
    settings: Settings, db: Sql, database_url: str
) -> None:
    with FeatureStore(settings=settings) as store:
        pipeline = store.pipeline(online=False)
        job_id = pipeline.start(one_feature_job()).job_id
        pipeline.transform(job_id, FEATURE, try_number=1, final=False)
        pipeline.validate(job_id, FEATURE, try_number=1, final=False)
        pipeline.write(job_id, FEATURE, try_number=1, final=False)
        with (
            interrupt_offline_write(database_url, tenant_id="acme", group_id=GROUP, action="pg_cancel_backend"),
            pytest.raises(FinishError) as cancelled,
        ):
            pipeline.finish(job_id, try_number=1, final=True)
    message = str(cancelled.value)
    assert "the statement was cancelled by a cancel request" in message
    assert "timeout" not in message
    assert job_row(db, job_id)[:2] == ("failed", 1)  # the last try: the job failed, naming the cause
    assert message in (job_row(db, job_id)[2] or "")

    db.execute(
        "UPDATE feature_store.feature_definitions SET transformation_sql ="
        " 'SELECT m.user_id AS entity_id, count(*) AS value FROM app.messages m, pg_sleep(2)"
        "  WHERE m.tenant_id = %(tenant_id)s GROUP BY m.user_id'"
        " WHERE feature_group_id = 'user_engagement' AND name = 'message_count'"
    )
    with FeatureStore(settings=replace(settings, statement_timeout_s=0.3)) as store:
        pipeline = store.pipeline(online=False)
        job_id = pipeline.start(one_feature_job("message_count", "user_engagement")).job_id
        with pytest.raises(TransformError) as timed_out:
            pipeline.transform(job_id, "message_count", try_number=1, final=False)
    message = str(timed_out.value)
    assert timed_out.value.retryable
    assert "exceeded the statement timeout of 0.3s (FEATURE_STORE_STATEMENT_TIMEOUT)" in message
    assert "cancel" not in message
    assert feature_row(db, job_id, "message_count") == ("pending", f"retrying after try 1: {message}")


def test_finish_with_redis_down_keeps_the_job_running_until_its_last_try(
    settings: Settings, db: Sql, tmp_path: Path
) -> None:
    server = RedisServer(free_port(), tmp_path)  # never started: nothing listens on its port
    with FeatureStore(settings=settings) as store:
        pipeline = store.pipeline(online=False)
        job_ids = [pipeline.start(one_feature_job()).job_id for _ in range(2)]
        for job_id in job_ids:
            pipeline.transform(job_id, FEATURE)
            pipeline.validate(job_id, FEATURE)
            pipeline.write(job_id, FEATURE)
    down = quick_redis(server.port)
    with FeatureStore(settings=settings, redis_client=down) as store:
        for job_id in job_ids:
            with pytest.raises(FinishError) as raised:
                store.pipeline().finish(job_id, try_number=1, final=False)
            assert raised.value.retryable
            assert f"Redis is unreachable (Error 111 connecting to 127.0.0.1:{server.port}" in str(raised.value)
            status, try_number, error = job_row(db, job_id)
            assert (status, try_number) == ("running", None)  # a failed try is not recorded as the job's try
            assert error == f"retrying after try 1: {raised.value}"

        # The last try fails the job, naming the cause; its staged rows stay for a cleared finish.
        with pytest.raises(FinishError):
            store.pipeline().finish(job_ids[1], try_number=3, final=True)
        status, try_number, error = job_row(db, job_ids[1])
        assert (status, try_number) == ("failed", 3)
        assert error is not None and "Redis is unreachable" in error

    server.start()
    try:
        with FeatureStore(settings=settings, redis_client=quick_redis(server.port)) as store:
            result = store.pipeline().finish(job_ids[0], try_number=2, final=False)
            assert result.status is JobStatus.COMPLETED and result.rows_online > 0
            assert job_row(db, job_ids[0]) == ("completed", 2, None)
            # A cleared finish of the failed job publishes and completes it after all.
            assert store.pipeline().finish(job_ids[1], try_number=4).status is JobStatus.COMPLETED
    finally:
        server.stop()
