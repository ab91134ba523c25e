"""The batch data path against real PostgreSQL and Redis: correctness, idempotency, ordering, failures."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from feature_store import FeatureStore, JobStatus, JobType, PipelineConfig
from feature_store.pipeline.models import FeatureStatus
from feature_store.pipeline.runner import FEATURES_AT_ONCE
from feature_store.serving.models import OnlineValueStatus
from support import HOURS, Sql


def config(tenant: str, group: str, window_index: int = -1, **overrides: object) -> PipelineConfig:
    window = HOURS[window_index]
    return PipelineConfig(
        tenant_id=tenant, feature_group_id=group, start_time=window.start, end_time=window.end, **overrides
    )


def offline(db: Sql, tenant: str, group: str, feature: str) -> dict[tuple[str, object], object]:
    return {
        (entity, ts): value
        for entity, ts, value in db.rows(
            "SELECT entity_id, event_time, value FROM feature_store.feature_values"
            " WHERE tenant_id = %s AND feature_group_id = %s AND feature_name = %s",
            (tenant, group, feature),
        )
    }


def test_offline_values_equal_an_independent_sql_computation(store: FeatureStore, db: Sql) -> None:
    for i in range(3):
        assert store.materialize(config("acme", "user_engagement", i)).status is JobStatus.COMPLETED
        assert store.materialize(config("acme", "message_features", i)).status is JobStatus.COMPLETED

    # Hourly message counts per user, computed here without the feature store, windows (start, end].
    # Messages with a negative token count break the repo's expectation on app.messages: no feature sees them.
    expected_counts = {
        (user, hour_end): count
        for user, hour_end, count in db.rows(
            "SELECT user_id, date_trunc('hour', created_at - interval '1 microsecond') + interval '1 hour', count(*)"
            " FROM app.messages WHERE tenant_id = 'acme' AND role = 'user' AND token_count >= 0 GROUP BY 1, 2"
        )
    }
    assert expected_counts
    assert offline(db, "acme", "user_engagement", "message_count") == expected_counts

    expected_lengths = {
        (user, hour_end): pytest.approx(float(avg))
        for user, hour_end, avg in db.rows(
            "SELECT user_id, date_trunc('hour', created_at - interval '1 microsecond') + interval '1 hour',"
            " avg(length(content)) FROM app.messages WHERE tenant_id = 'acme' AND role = 'user' AND token_count >= 0"
            " GROUP BY 1, 2"
        )
    }
    assert offline(db, "acme", "user_engagement", "avg_message_length") == expected_lengths

    # Per-message token counts: every valid message lands, stamped with its own time; -1s are quarantined.
    valid_tokens = {
        (mid, ts): n
        for mid, ts, n in db.rows(
            "SELECT id, created_at, token_count FROM app.messages WHERE tenant_id = 'acme' AND token_count >= 0"
        )
    }
    assert offline(db, "acme", "message_features", "token_count") == valid_tokens
    assert db.value("SELECT count(*) FROM feature_store.feature_values WHERE tenant_id <> 'acme'") == 0


def test_online_values_equal_the_latest_offline_values(store: FeatureStore, db: Sql) -> None:
    for i in range(3):
        store.materialize(config("globex", "user_engagement", i))
    latest = db.rows(
        "SELECT DISTINCT ON (entity_id, feature_name) entity_id, feature_name, value, event_time"
        " FROM feature_store.feature_values WHERE tenant_id = 'globex' AND feature_group_id = 'user_engagement'"
        " ORDER BY entity_id, feature_name, event_time DESC"
    )
    assert latest
    users = sorted({entity for entity, *_ in latest})
    features = [f.name for f in store.registry.get_group("user_engagement").batch_features]  # windows too
    rows = store.get_online_features("globex", "user", users, [f"user_engagement:{f}" for f in features])
    online = {
        (row.entity_id, ref.split(":")[1]): (v.value, v.event_time)
        for row in rows
        for ref, v in row.features.items()
        if v.status is OnlineValueStatus.PRESENT
    }
    assert online == {(entity, name): (pytest.approx(value), ts) for entity, name, value, ts in latest}


def test_rerunning_a_window_leaves_the_offline_row_count_unchanged(store: FeatureStore, db: Sql) -> None:
    first = store.materialize(config("acme", "message_features"))
    count = db.value("SELECT count(*) FROM feature_store.feature_values")
    quarantined = db.value("SELECT count(*) FROM feature_store.quarantined_rows")
    second = store.materialize(config("acme", "message_features"))
    assert first.status is second.status is JobStatus.COMPLETED
    assert second.job_id != first.job_id
    assert count and db.value("SELECT count(*) FROM feature_store.feature_values") == count
    # Each job keeps its own quarantine record of what it rejected.
    assert db.value("SELECT count(*) FROM feature_store.quarantined_rows") == 2 * quarantined


def test_a_rerun_drops_offline_rows_whose_source_rows_are_gone(store: FeatureStore, db: Sql) -> None:
    store.materialize(config("acme", "message_features"))
    gone = db.value(
        "SELECT id FROM app.messages WHERE tenant_id = 'acme' AND created_at > %s ORDER BY id LIMIT 1",
        (HOURS[-1].start,),
    )
    db.execute("DELETE FROM app.feedback WHERE message_id = %s", (gone,))
    db.execute("DELETE FROM app.messages WHERE id = %s", (gone,))
    store.materialize(config("acme", "message_features"))
    assert db.value("SELECT count(*) FROM feature_store.feature_values WHERE entity_id = %s", (gone,)) == 0


def active_in_first_and_last_hour(db: Sql) -> str:
    """A user who wrote in both the oldest and the newest hour, so a backfill has a value to offer."""
    user = db.value(
        "SELECT user_id FROM app.messages WHERE tenant_id = 'acme' AND role = 'user' GROUP BY user_id"
        " HAVING bool_or(created_at > %(h0)s AND created_at <= %(h0_end)s) AND bool_or(created_at > %(h2)s)"
        " ORDER BY user_id LIMIT 1",
        {"h0": HOURS[0].start, "h0_end": HOURS[0].end, "h2": HOURS[-1].start},
    )
    assert user, "the demo data should hold a user active in the first and the last hour"
    return str(user)


def test_an_older_window_never_overwrites_newer_online_values(store: FeatureStore, db: Sql) -> None:
    user = active_in_first_and_last_hour(db)
    store.materialize(config("acme", "user_engagement", -1))
    before = store.get_online_features("acme", "user", [user], ["user_engagement:message_count"])
    store.materialize(config("acme", "user_engagement", 0))  # a backfill of an older hour
    after = store.get_online_features("acme", "user", [user], ["user_engagement:message_count"])
    value = after[0].features["user_engagement:message_count"]
    assert value == before[0].features["user_engagement:message_count"]
    assert value.status is OnlineValueStatus.PRESENT
    assert value.event_time == HOURS[-1].end


def test_a_backfill_republishes_the_latest_offline_value_where_the_online_one_is_gone(
    store: FeatureStore, db: Sql
) -> None:
    user = active_in_first_and_last_hour(db)
    store.materialize(config("acme", "user_engagement", -1))
    latest = store.get_online_features("acme", "user", [user], ["user_engagement:message_count"])
    store.online.client.delete(store.online.key("acme", "user_engagement", user))  # expired, or lost
    store.materialize(config("acme", "user_engagement", 0))  # a backfill of an older hour
    after = store.get_online_features("acme", "user", [user], ["user_engagement:message_count"])
    value = after[0].features["user_engagement:message_count"]
    assert value.status is OnlineValueStatus.PRESENT
    assert value.event_time == HOURS[-1].end  # the newer hour's offline value, not the backfill's
    assert value.value == latest[0].features["user_engagement:message_count"].value


def test_invalid_rows_are_quarantined_with_reasons_while_valid_rows_land(store: FeatureStore, db: Sql) -> None:
    def invalid(condition: str, hour: int) -> int:
        return int(
            db.value(
                f"SELECT count(*) FROM app.messages WHERE tenant_id = 'acme' AND {condition}"
                " AND created_at > %s AND created_at <= %s",
                (HOURS[hour].start, HOURS[hour].end),
            )
        )

    # The first hour whose demo data holds invalid rows (about 1% of messages are broken on purpose).
    hour = next(
        (h for h in range(len(HOURS)) if invalid("token_count < 0", h) or invalid("intent = 'gibberish'", h)), None
    )
    assert hour is not None, "the demo data should hold invalid rows"
    result = store.materialize(config("acme", "message_features", window_index=hour))
    assert result.status is JobStatus.COMPLETED
    # A negative token count breaks the expectation on app.messages: the row is hidden from every feature
    # and each feature's transform quarantines it; a bad intent breaks the intent feature's own rule.
    bad_tokens = invalid("token_count < 0", hour)
    bad_intents = invalid("intent = 'gibberish' AND token_count >= 0", hour)
    quarantined = store.quarantined_rows(job_id=result.job_id, limit=1000)
    features = ("intent", "is_question", "length", "token_count", "topic")
    assert sorted((q.feature_name, q.rule) for q in quarantined) == sorted(
        [(f, "expectation") for f in features] * bad_tokens + [("intent", "allowed_values")] * bad_intents
    )
    for q in quarantined:
        if q.rule == "expectation":
            assert q.reason == (
                f"source row app.messages {q.entity_id}: app.messages.token_count {q.value['token_count']}"
                " is below min 0 (excluded before aggregation)"
            )
            assert q.value["token_count"] < 0
        else:
            assert "is not one of the allowed values" in q.reason
        assert (
            db.value(
                "SELECT count(*) FROM feature_store.feature_values WHERE feature_name = %s AND entity_id = %s",
                (q.feature_name, q.entity_id),
            )
            == 0
        )
    assert result.rows_failed == len(features) * bad_tokens + bad_intents
    token_feature = next(f for f in result.features if f.feature == "token_count")
    assert token_feature.rows_failed == bad_tokens
    written = db.value(
        "SELECT count(*) FROM feature_store.feature_values WHERE feature_name = 'token_count' AND job_id = %s",
        (result.job_id,),
    )
    assert written == token_feature.rows_processed > 0


def test_too_many_invalid_rows_fail_only_that_feature(store: FeatureStore, db: Sql) -> None:
    db.execute("UPDATE app.messages SET intent = 'gibberish' WHERE tenant_id = 'acme' AND role = 'user'")
    result = store.materialize(config("acme", "message_features"))
    assert result.status is JobStatus.FAILED
    by_name = {f.feature: f for f in result.features}
    assert by_name["intent"].status is FeatureStatus.FAILED
    assert "max_failure_rate" in (by_name["intent"].error_message or "")
    assert "tenant 'acme', group 'message_features', feature 'intent'" in (by_name["intent"].error_message or "")
    for sibling in ("length", "token_count", "is_question"):
        assert by_name[sibling].status is FeatureStatus.WRITTEN
    assert db.value("SELECT count(*) FROM feature_store.feature_values WHERE feature_name = 'intent'") == 0
    assert db.value("SELECT count(*) FROM feature_store.feature_values WHERE feature_name = 'length'") > 0
    job = store.get_job(result.job_id)
    assert job.status is JobStatus.FAILED and job.progress == 1
    assert job.error_message and job.error_message.startswith("intent: validate failed")
    # The siblings still went online; the failed feature did not.
    some_message = db.value(
        "SELECT v.entity_id FROM feature_store.feature_values v JOIN app.messages m ON m.id = v.entity_id"
        " WHERE v.feature_name = 'length' AND m.role = 'user' LIMIT 1"
    )
    row = store.get_online_features(
        "acme", "message", [str(some_message)], ["message_features:length", "message_features:intent"]
    )[0]
    assert row.features["message_features:length"].status is OnlineValueStatus.PRESENT
    assert row.features["message_features:intent"].status is OnlineValueStatus.MISSING


def test_a_feature_failing_at_run_time_fails_alone(store: FeatureStore, db: Sql) -> None:
    # Valid at apply time (planned, never run), fails when executed: division by zero.
    db.execute(
        "UPDATE feature_store.feature_definitions SET transformation_sql ="
        " 'SELECT m.user_id AS entity_id, count(*) / 0 AS value FROM app.messages m"
        "  WHERE m.tenant_id = %(tenant_id)s GROUP BY m.user_id'"
        " WHERE feature_group_id = 'user_engagement' AND name = 'conversation_count'"
    )
    result = store.materialize(config("acme", "user_engagement"))
    assert result.status is JobStatus.FAILED
    statuses = {f.feature: f.status for f in result.features}
    assert statuses.pop("conversation_count") is FeatureStatus.FAILED
    assert set(statuses.values()) == {FeatureStatus.WRITTEN}
    assert "transform failed for tenant 'acme', group 'user_engagement', feature 'conversation_count'" in str(
        result.errors
    )
    assert "division by zero" in str(result.errors)


def test_a_hostile_tenant_id_is_treated_as_data(store: FeatureStore, db: Sql, settings: object) -> None:
    from feature_store.errors import TenantNotFoundError
    from feature_store.pipeline import transform

    hostile = "x'; DROP TABLE feature_store.tenants; --"
    with pytest.raises(TenantNotFoundError, match="DROP TABLE"):
        store.materialize(config(hostile, "user_engagement"))
    # Bound straight into a transform, it matches no rows and executes nothing.
    planned = store.pipeline().start(config("acme", "user_engagement"))
    group = store.registry.get_group("user_engagement")
    feature = group.feature("message_count")
    assert feature is not None
    staged = transform.stage_rows(
        store.conn,
        settings=store.settings,
        job_id=planned.job_id,
        tenant_id=hostile,
        feature=feature,
        windows=[HOURS[-1]],
        source_schemas=["app"],
        group=group,
    )
    assert staged.rows == 0
    assert db.value("SELECT count(*) FROM feature_store.tenants") == 3
    assert db.value("SELECT to_regclass('feature_store.tenants') IS NOT NULL") is True


def test_row_level_security_scopes_a_transform_that_forgets_its_tenant_filter(store: FeatureStore, db: Sql) -> None:
    db.execute(
        "UPDATE feature_store.feature_definitions SET transformation_sql ="
        " 'SELECT m.user_id AS entity_id, count(*) AS value FROM app.messages m"
        "  WHERE %(tenant_id)s::text IS NOT NULL GROUP BY m.user_id'"
        " WHERE feature_group_id = 'user_engagement' AND name = 'message_count'"
    )
    result = store.materialize(config("acme", "user_engagement"))
    assert result.status is JobStatus.COMPLETED
    entities = {r[0] for r in db.rows("SELECT entity_id FROM feature_store.feature_values")}
    assert entities and all(e.startswith("acme-") for e in entities)


def test_transform_cannot_modify_sources_or_read_the_feature_store(store: FeatureStore, db: Sql) -> None:
    db.execute(
        "UPDATE feature_store.feature_definitions SET transformation_sql ="
        " 'SELECT t.id AS entity_id, 1 AS value FROM feature_store.tenants t WHERE t.id = %(tenant_id)s'"
        " WHERE feature_group_id = 'user_engagement' AND name = 'message_count'"
    )
    result = store.materialize(config("acme", "user_engagement"))
    message = next(f for f in result.features if f.feature == "message_count").error_message or ""
    assert "permission denied" in message


def test_statement_timeout_fails_the_feature_with_a_clear_message(settings: object, db: Sql) -> None:
    from dataclasses import replace

    from feature_store import Settings

    assert isinstance(settings, Settings)
    db.execute(
        "UPDATE feature_store.feature_definitions SET transformation_sql ="
        " 'SELECT m.user_id AS entity_id, count(*) AS value FROM app.messages m, pg_sleep(2)"
        "  WHERE m.tenant_id = %(tenant_id)s GROUP BY m.user_id'"
        " WHERE feature_group_id = 'user_engagement' AND name = 'message_count'"
    )
    with FeatureStore(settings=replace(settings, statement_timeout_s=0.3)) as fs:
        result = fs.materialize(config("acme", "user_engagement"))
    message = next(f for f in result.features if f.feature == "message_count").error_message or ""
    assert "exceeded the statement timeout of 0.3s" in message


def test_full_mode_recomputes_every_hour_of_its_range_like_hourly_runs(store: FeatureStore, db: Sql) -> None:
    for i in range(3):
        assert store.materialize(config("acme", "user_engagement", i)).status is JobStatus.COMPLETED
    snapshot = "SELECT feature_name, entity_id, event_time, value FROM feature_store.feature_values ORDER BY 1, 2, 3"
    hourly = db.rows(snapshot)
    assert len({ts for _, _, ts, _ in hourly}) == 3
    # Damage the history: full mode must put every hour back as the hourly runs left it.
    db.execute(
        "UPDATE feature_store.offline_rows SET features = features || '{\"message_count\": 999}' WHERE event_time = %s",
        (HOURS[1].end,),
    )
    db.execute("DELETE FROM feature_store.offline_rows WHERE event_time = %s", (HOURS[0].end,))
    full = PipelineConfig(
        tenant_id="acme",
        feature_group_id="user_engagement",
        start_time=HOURS[0].start,
        end_time=HOURS[-1].end,
        mode=JobType.FULL,
    )
    result = store.materialize(full)
    assert result.status is JobStatus.COMPLETED
    assert db.rows(snapshot) == hourly
    # And a full run is idempotent.
    store.materialize(full)
    assert db.rows(snapshot) == hourly


def test_online_and_offline_writes_can_each_be_switched_off(store: FeatureStore, db: Sql) -> None:
    only_online = store.materialize(config("acme", "user_engagement", write_offline=False))
    assert only_online.status is JobStatus.COMPLETED and only_online.rows_online > 0
    assert db.value("SELECT count(*) FROM feature_store.feature_values") == 0
    only_offline = store.materialize(config("initech", "user_engagement", write_online=False))
    assert only_offline.status is JobStatus.COMPLETED and only_offline.rows_online == 0
    assert db.value("SELECT count(*) FROM feature_store.feature_values WHERE tenant_id = 'initech'") > 0
    keys = list(store.online.scan_keys(tenant_id="initech"))  # type: ignore[attr-defined]
    assert keys == []


def test_job_row_records_the_run(store: FeatureStore, db: Sql) -> None:
    result = store.materialize(config("acme", "conversation_stats"))
    job = store.get_job(result.job_id)
    assert job.status is JobStatus.COMPLETED
    assert job.progress == 1 and job.features_total == 3
    # Source rows hidden by an expectation count as failed rows of each of the 3 features that read them.
    hidden = db.value(
        "SELECT count(*) FROM app.messages WHERE tenant_id = 'acme' AND token_count < 0"
        " AND created_at > %s AND created_at <= %s",
        (HOURS[-1].start, HOURS[-1].end),
    )
    assert job.rows_processed == result.rows_processed > 0 and job.rows_failed == 3 * hidden
    assert job.started_at and job.completed_at and job.started_at <= job.completed_at
    assert job.duration_ms is not None and job.duration_ms >= 0
    assert job.end_time - job.start_time == timedelta(hours=1)
    assert job.error_message is None


def test_stages_are_idempotent_when_retried(store: FeatureStore, db: Sql) -> None:
    pipeline = store.pipeline()
    planned = pipeline.start(config("acme", "message_features", features=("token_count",)))
    for _ in range(2):
        rows = pipeline.transform(planned.job_id, "token_count")
    for _ in range(2):
        outcome = pipeline.validate(planned.job_id, "token_count")
    for _ in range(2):
        written = pipeline.write(planned.job_id, "token_count")
    assert written == rows - outcome.rows_failed
    assert db.value("SELECT count(*) FROM feature_store.feature_values") == 0  # the job's flush writes them
    for _ in range(2):
        assert pipeline.finish(planned.job_id).status is JobStatus.COMPLETED
    assert db.value("SELECT count(*) FROM feature_store.feature_values") == written
    assert (
        db.value("SELECT count(*) FROM feature_store.quarantined_rows WHERE rule <> 'expectation'")
        == outcome.rows_failed
    )


def test_rerunning_one_feature_of_a_finished_job_keeps_the_values_of_the_others(store: FeatureStore, db: Sql) -> None:
    # What clearing one feature's tasks of a finished run in Airflow does: transform, validate, write, finish.
    result = store.materialize(config("acme", "user_engagement"))
    assert result.status is JobStatus.COMPLETED
    siblings = (
        "SELECT feature_name, entity_id, event_time, value FROM feature_store.feature_values"
        " WHERE feature_name <> 'message_count' ORDER BY 1, 2, 3"
    )
    before = db.rows(siblings)
    user = str(
        db.value("SELECT entity_id FROM feature_store.feature_values WHERE feature_name = 'avg_message_length' LIMIT 1")
    )
    refs = [f"user_engagement:{f}" for f in ("message_count", "avg_message_length")]
    online_before = store.get_online_features("acme", "user", [user], refs)[0].features
    db.execute("UPDATE app.messages SET role = 'assistant' WHERE tenant_id = 'acme' AND user_id = %s", (user,))
    pipeline = store.pipeline()
    pipeline.transform(result.job_id, "message_count")
    pipeline.validate(result.job_id, "message_count")
    pipeline.write(result.job_id, "message_count")
    assert pipeline.finish(result.job_id).status is JobStatus.COMPLETED
    assert db.rows(siblings) == before
    counts = "SELECT value FROM feature_store.feature_values WHERE feature_name = 'message_count' AND entity_id = %s"
    assert db.rows(counts, (user,)) == []  # recomputed: the user sent nothing in the window any more
    online = store.get_online_features("acme", "user", [user], refs)[0].features
    assert (
        online["user_engagement:avg_message_length"].value == online_before["user_engagement:avg_message_length"].value
    )
    assert online["user_engagement:avg_message_length"].status is OnlineValueStatus.PRESENT
    assert online["user_engagement:message_count"].status is OnlineValueStatus.MISSING


def test_a_validation_rerun_releases_rows_that_an_earlier_run_quarantined_and_that_pass_now(
    store: FeatureStore, db: Sql
) -> None:
    """A rerun starts from a clean slate: marks of an earlier run (here, under other rules) do not stick."""
    pipeline = store.pipeline()
    planned = pipeline.start(config("acme", "message_features", features=("token_count",)))
    rows = pipeline.transform(planned.job_id, "token_count")
    outcome = pipeline.validate(planned.job_id, "token_count")
    stale = db.execute(
        f"UPDATE feature_store_staging.job_{planned.job_id} SET rejected_rule = 'max', rejected_reason = 'stale'"
        " WHERE rejected_rule IS NULL"
    )
    assert stale > 0
    assert pipeline.validate(planned.job_id, "token_count") == outcome
    assert pipeline.write(planned.job_id, "token_count") == rows - outcome.rows_failed
    assert db.value("SELECT count(*) FROM feature_store.quarantined_rows WHERE rule = 'max'") == 0


def test_a_job_whose_staging_an_earlier_version_made_still_runs_after_an_upgrade(store: FeatureStore, db: Sql) -> None:
    """Staging made before the `number` column existed (a job in flight across a deploy) gets it."""
    pipeline = store.pipeline()
    planned = pipeline.start(config("acme", "message_features"))
    first, second = planned.features[:2]
    pipeline.transform(planned.job_id, first)
    db.execute(f"ALTER TABLE feature_store_staging.job_{planned.job_id} DROP COLUMN number")
    for name in planned.features:
        if name != first:
            pipeline.transform(planned.job_id, name)
        pipeline.validate(planned.job_id, name)
        pipeline.write(planned.job_id, name)
    assert pipeline.finish(planned.job_id).status is JobStatus.COMPLETED
    written = db.value("SELECT count(*) FROM feature_store.feature_values WHERE feature_name = %s", (second,))
    assert written > 0
    assert written == db.value(
        "SELECT rows_valid FROM feature_store.feature_statistics WHERE feature_name = %s", (second,)
    )


def test_concurrent_runs_of_the_same_window_end_with_one_copy_of_each_row(settings: object, db: Sql) -> None:
    import threading

    from feature_store import Settings

    assert isinstance(settings, Settings)
    results = []

    def run() -> None:
        with FeatureStore(settings=settings) as fs:
            results.append(fs.materialize(config("acme", "message_features")))

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.status for r in results] == [JobStatus.COMPLETED] * 3
    rejected = db.value(
        "SELECT count(*) FROM feature_store.quarantined_rows WHERE job_id = %s AND rule <> 'expectation'",
        (results[0].job_id,),
    )
    written = results[0].rows_processed - rejected
    assert db.value("SELECT count(*) FROM feature_store.feature_values") == written > 0


def test_by_default_every_feature_of_a_job_runs_at_once(store: FeatureStore) -> None:
    # With fewer at once (the machine's cores), the last feature's stages could run alone, a core idle.
    threads: dict[str, str] = {}

    def progress(message: str) -> None:
        if message.startswith("validate "):
            threads[message] = threading.current_thread().name

    result = store.materialize(config("acme", "user_engagement"), progress=progress)
    assert result.status is JobStatus.COMPLETED
    features = store.registry.get_group("user_engagement").batch_features
    assert 2 < len(features) <= FEATURES_AT_ONCE
    assert len(threads) == len(features) and len(set(threads.values())) == len(features)


def test_features_run_in_parallel_give_the_same_values_as_one_by_one(store: FeatureStore, db: Sql) -> None:
    one_by_one = store.materialize(config("acme", "user_engagement"), parallelism=1)
    first = db.rows("SELECT feature_name, entity_id, event_time, value FROM feature_store.feature_values ORDER BY 1, 2")
    parallel = store.materialize(config("acme", "user_engagement"), parallelism=4)
    second = db.rows(
        "SELECT feature_name, entity_id, event_time, value FROM feature_store.feature_values ORDER BY 1, 2"
    )
    assert one_by_one.status is parallel.status is JobStatus.COMPLETED
    features = store.registry.get_group("user_engagement").batch_features
    assert first == second and len({name for name, *_ in first}) == len(features)
    assert [f.rows_processed for f in one_by_one.features] == [f.rows_processed for f in parallel.features]
