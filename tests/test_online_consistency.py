"""Online = latest valid offline: after any write (run, rerun, backfill, quarantine) and after the online
store loses data, every entity's online value is its latest valid offline value, or absent."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from feature_store import FeatureStore, JobStatus, PipelineConfig, Settings, TimeWindow
from feature_store.errors import FinishError, OnlineStoreLostDataError, WindowError
from feature_store.pipeline.models import JobType
from feature_store.stores.online.base import OnlineWrite
from feature_store.stores.online.redis import RedisOnlineStore
from support import HOURS, Sql


def config(tenant: str, group: str, window_index: int = -1, **overrides: Any) -> PipelineConfig:
    window = HOURS[window_index]
    return PipelineConfig(
        tenant_id=tenant, feature_group_id=group, start_time=window.start, end_time=window.end, **overrides
    )


def online_values(store: FeatureStore, tenant: str, group: str) -> dict[tuple[str, str], tuple[Any, datetime]]:
    """Everything the online store holds for (tenant, group): (entity, feature) -> (value, event time)."""
    online = store.online
    client = online.client
    found = {}
    for key in online.scan_keys(tenant_id=tenant, group_id=group):  # type: ignore[attr-defined]
        entity = online.entity_of(key)  # type: ignore[attr-defined]
        for field, raw in client.hgetall(key).items():
            if field == b"~":  # the store's own summary of the hash
                continue
            event_us, _write_us, value = raw.decode().split("|", 2)
            event_time = datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=int(event_us))
            found[(entity, field.decode())] = (json.loads(value), event_time)
    return found


def latest_offline(db: Sql, tenant: str, group: str) -> dict[tuple[str, str], tuple[Any, datetime]]:
    rows = db.rows(
        "SELECT DISTINCT ON (entity_id, feature_name) entity_id, feature_name, value, event_time"
        " FROM feature_store.feature_values WHERE tenant_id = %s AND feature_group_id = %s"
        " ORDER BY entity_id, feature_name, event_time DESC",
        (tenant, group),
    )
    return {(entity, feature): (value, ts) for entity, feature, value, ts in rows}


def assert_online_is_latest_offline(store: FeatureStore, db: Sql, tenant: str, group: str) -> None:
    online = online_values(store, tenant, group)
    offline = latest_offline(db, tenant, group)
    assert offline, "the test needs offline values"
    assert online.keys() == offline.keys()
    for key, (value, ts) in offline.items():
        assert online[key] == (pytest.approx(value), ts), key


def test_online_falls_back_to_the_previous_value_when_the_latest_disappears(store: FeatureStore, db: Sql) -> None:
    for i in range(3):
        store.materialize(config("acme", "user_engagement", i))
    # A user active in the last two hours loses all of the last hour's messages.
    user = db.value(
        "SELECT user_id FROM app.messages WHERE tenant_id = 'acme' AND role = 'user'"
        " GROUP BY user_id HAVING bool_or(created_at > %(h2)s)"
        " AND bool_or(created_at > %(h1)s AND created_at <= %(h2)s)"
        " ORDER BY user_id LIMIT 1",
        {"h1": HOURS[1].start, "h2": HOURS[2].start},
    )
    assert user
    db.execute("DELETE FROM app.feedback WHERE user_id = %s AND created_at > %s", (user, HOURS[2].start))
    db.execute(
        "DELETE FROM app.feedback WHERE message_id IN"
        " (SELECT id FROM app.messages WHERE user_id = %s AND created_at > %s)",
        (user, HOURS[2].start),
    )
    db.execute("DELETE FROM app.messages WHERE user_id = %s AND created_at > %s", (user, HOURS[2].start))
    store.materialize(config("acme", "user_engagement", 2))
    value = store.get_online_features("acme", "user", [user], ["user_engagement:message_count"])[0]
    online = value.features["user_engagement:message_count"]
    assert online.event_time == HOURS[1].end
    assert online.value == db.value(
        "SELECT count(*) FROM app.messages WHERE user_id = %s AND role = 'user'"
        " AND created_at > %s AND created_at <= %s",
        (user, HOURS[1].start, HOURS[1].end),
    )
    assert_online_is_latest_offline(store, db, "acme", "user_engagement")


def test_an_online_value_without_an_earlier_one_goes_when_its_source_row_goes(store: FeatureStore, db: Sql) -> None:
    store.materialize(config("acme", "message_features"))
    gone = db.value(
        "SELECT id FROM app.messages WHERE tenant_id = 'acme' AND role = 'user' AND token_count >= 0"
        " AND created_at > %s ORDER BY id LIMIT 1",
        (HOURS[-1].start,),
    )
    before = store.get_online_features("acme", "message", [gone], ["message_features:length"])[0]
    assert before.features["message_features:length"].status.value == "present"
    db.execute("DELETE FROM app.feedback WHERE message_id = %s", (gone,))
    db.execute("DELETE FROM app.messages WHERE id = %s", (gone,))
    store.materialize(config("acme", "message_features"))
    after = store.get_online_features("acme", "message", [gone], ["message_features:length"])[0]
    assert after.features["message_features:length"].status.value == "missing"
    assert_online_is_latest_offline(store, db, "acme", "message_features")


def test_a_quarantined_latest_value_is_not_served_online(store: FeatureStore, db: Sql) -> None:
    store.materialize(config("acme", "message_features"))
    message = db.value(
        "SELECT id FROM app.messages WHERE tenant_id = 'acme' AND token_count >= 0 AND created_at > %s"
        " ORDER BY id LIMIT 1",
        (HOURS[-1].start,),
    )
    db.execute("UPDATE app.messages SET token_count = -7 WHERE id = %s", (message,))
    result = store.materialize(config("acme", "message_features"))
    assert result.status is JobStatus.COMPLETED
    row = store.get_online_features("acme", "message", [message], ["message_features:token_count"])[0]
    assert row.features["message_features:token_count"].status.value == "missing"
    assert_online_is_latest_offline(store, db, "acme", "message_features")


def test_online_is_the_latest_offline_value_after_runs_reruns_and_backfills(store: FeatureStore, db: Sql) -> None:
    for group in ("user_engagement", "conversation_stats", "message_features"):
        for i in (2, 0, 1):  # the newest hour first, then backfills
            store.materialize(config("globex", group, i))
        assert_online_is_latest_offline(store, db, "globex", group)
    # Source data changes in every hour (late deletes and corrections), then hours are rerun in any order.
    db.execute(
        "DELETE FROM app.feedback WHERE tenant_id = 'globex' AND message_id IN"
        " (SELECT id FROM app.messages WHERE tenant_id = 'globex' AND mod(abs(hashtext(id)), 5) = 0)"
    )
    db.execute("DELETE FROM app.messages WHERE tenant_id = 'globex' AND mod(abs(hashtext(id)), 5) = 0")
    db.execute("UPDATE app.messages SET content = content || ' (edited)' WHERE tenant_id = 'globex'")
    for group in ("user_engagement", "conversation_stats", "message_features"):
        for i in (1, 2, 0):
            store.materialize(config("globex", group, i))
        assert_online_is_latest_offline(store, db, "globex", group)


def test_a_corrective_rerun_may_replace_newer_online_values_and_says_so(store: FeatureStore, db: Sql) -> None:
    store.materialize(config("acme", "user_engagement"))
    user = db.value(
        "SELECT min(entity_id) FROM feature_store.feature_values"
        " WHERE feature_name = 'message_count' AND event_time = %s",
        (HOURS[-1].end,),
    )
    # A bad value stamped far in the future (as a run with a wrong clock would have left it).
    in_2031 = datetime(2031, 1, 1, tzinfo=timezone.utc)
    store.online.write_values(
        tenant_id="acme",
        group_id="user_engagement",
        values=[OnlineWrite(user, "message_count", in_2031, 9999)],
        ttl_seconds=None,
        write_time_us=int(in_2031.timestamp() * 1_000_000),
    )
    store.materialize(config("acme", "user_engagement"))
    stuck = store.get_online_features("acme", "user", [user], ["user_engagement:message_count"])[0]
    assert stuck.features["user_engagement:message_count"].value == 9999  # newer-only keeps it
    fixed = store.materialize(config("acme", "user_engagement", overwrite_online="undo values stamped in 2031"))
    job = store.get_job(fixed.job_id)
    assert job.online_overwrite and job.overwrite_reason == "undo values stamped in 2031"
    assert_online_is_latest_offline(store, db, "acme", "user_engagement")


def test_windows_that_end_in_the_future_are_refused(store: FeatureStore, db: Sql) -> None:
    now = datetime.now(timezone.utc)
    year_ahead = (now - timedelta(hours=1), now + timedelta(days=365))
    all_of_time = (datetime(1, 1, 1, tzinfo=timezone.utc), datetime(9999, 12, 31, tzinfo=timezone.utc))
    for start, end in (year_ahead, all_of_time):
        with pytest.raises(WindowError, match="ends in the future"):
            store.materialize(
                PipelineConfig(tenant_id="acme", feature_group_id="user_engagement", start_time=start, end_time=end)
            )
    with pytest.raises(WindowError, match="ends in the future"):
        store.pipeline().plan(window=TimeWindow(start=now, end=now + timedelta(hours=2)))
    # A small clock skew is allowed.
    store.materialize(
        PipelineConfig(
            tenant_id="acme",
            feature_group_id="user_engagement",
            start_time=now - timedelta(hours=1),
            end_time=now + timedelta(seconds=30),
        )
    )
    assert (
        db.value("SELECT count(*) FROM feature_store.feature_values WHERE event_time > now() + interval '5 minutes'")
        == 0
    )


def test_full_mode_refuses_a_range_of_too_many_windows(settings: Settings) -> None:
    full = PipelineConfig(
        tenant_id="acme",
        feature_group_id="user_engagement",
        start_time=HOURS[0].start,
        end_time=HOURS[-1].end,
        mode=JobType.FULL,
    )
    with (
        FeatureStore(settings=replace(settings, max_full_windows=2)) as store,
        pytest.raises(WindowError, match="full mode would recompute 3 hourly windows"),
    ):
        store.materialize(full)


class _LosingStore(RedisOnlineStore):
    """The real Redis store, whose first batch's keys vanish right after the second batch (as in a flush)."""

    batches = 0
    first_batch: list[str] = []

    def write_encoded(self, **kwargs: Any) -> int:
        written = super().write_encoded(**kwargs)
        self.batches += 1
        if self.batches == 1:
            self.first_batch = [entity for entity, _ in kwargs["rows"]]
        elif self.batches == 2:
            self.client.unlink(*(self.key(kwargs["tenant_id"], kwargs["group_id"], e) for e in self.first_batch))
        return written


def test_a_publish_that_loses_values_fails_retryably_and_a_retry_repairs_it(settings: Settings, db: Sql) -> None:
    with FeatureStore(settings=replace(settings, online_batch_size=10)) as store:
        losing = _LosingStore(store.online.client, prefix=store.settings.redis_prefix)
        pipeline = store.pipeline()
        pipeline._online = losing
        planned = pipeline.start(config("acme", "message_features"))
        for name in planned.features:
            pipeline.transform(planned.job_id, name)
            pipeline.validate(planned.job_id, name)
            pipeline.write(planned.job_id, name)
        with pytest.raises(FinishError, match="sampled entities of acme/message_features are missing") as failed:
            pipeline.finish(planned.job_id, final=False)
        assert failed.value.retryable and isinstance(failed.value.__cause__, OnlineStoreLostDataError)
        assert store.get_job(planned.job_id).status is JobStatus.RUNNING
        assert pipeline.finish(planned.job_id).status is JobStatus.COMPLETED  # the retry: nothing lost this time
        assert_online_is_latest_offline(store, db, "acme", "message_features")


def test_reconcile_restores_online_values_after_the_online_store_lost_them(store: FeatureStore, db: Sql) -> None:
    for tenant in ("acme", "globex"):
        for group in ("user_engagement", "message_features"):
            for i in range(3):
                store.materialize(config(tenant, group, i))
    # The online store loses everything (a restart without persistence).
    client = store.online.client
    client.unlink(*client.scan_iter(match=f"{store.settings.redis_prefix}:*", count=1000))
    # Values last written longer ago than the TTL would have expired online: they stay out.
    db.execute(
        "UPDATE feature_store.offline_rows SET created_at = now() - interval '8 days'"
        " WHERE tenant_id = 'acme' AND feature_group_id = 'user_engagement' AND entity_id = 'acme-u001'"
    )
    results = store.reconcile_online()
    assert {(r.tenant_id, r.feature_group_id) for r in results if r.values} >= {
        ("acme", "user_engagement"),
        ("globex", "message_features"),
    }
    assert_online_is_latest_offline(store, db, "globex", "user_engagement")
    assert_online_is_latest_offline(store, db, "globex", "message_features")
    assert_online_is_latest_offline(store, db, "acme", "message_features")
    acme = online_values(store, "acme", "user_engagement")
    expected = {k: v for k, v in latest_offline(db, "acme", "user_engagement").items() if k[0] != "acme-u001"}
    assert acme.keys() == expected.keys()


def test_check_online_reconciles_only_when_the_server_changed(store: FeatureStore, db: Sql) -> None:
    store.materialize(config("acme", "user_engagement"))
    first = store.check_online()
    assert first.previous_instance_id is None
    client = store.online.client
    client.unlink(*client.scan_iter(match=f"{store.settings.redis_prefix}:*", count=1000))
    assert store.check_online().reconciled == []  # same server: nothing to do
    # The server changed since the last check (as after a restart): everything is reconciled.
    db.execute("UPDATE feature_store.online_instances SET instance_id = 'a-server-before-a-restart'")
    check = store.check_online()
    assert check.previous_instance_id == "a-server-before-a-restart"
    assert any(r.values for r in check.reconciled)
    assert_online_is_latest_offline(store, db, "acme", "user_engagement")


def test_freshness_reflects_what_the_online_store_holds(store: FeatureStore) -> None:
    store.materialize(config("acme", "message_features"))

    def acme_messages() -> Any:
        return next(f for f in store.freshness() if (f.tenant_id, f.feature_group_id) == ("acme", "message_features"))

    fresh = acme_messages()
    assert fresh.online_sampled and fresh.online_present == fresh.online_sampled and not fresh.stale
    client = store.online.client
    client.unlink(*store.online.scan_keys(tenant_id="acme", group_id="message_features"))  # type: ignore[attr-defined]
    lost = acme_messages()
    assert lost.online_present == 0 and lost.stale
    store.reconcile_online(tenant_id="acme", group_id="message_features")
    assert not acme_messages().stale


# Values whose JSON text a decode and re-encode would change: beyond a double, more digits than a double
# keeps, escapes, non-ASCII text.
TEXTS_REPO = """\
source_schemas: [app]
tenants: [{id: acme, name: Acme Corp}]
feature_groups:
  - id: texts
    entity_type: thing
    features:
      - name: big
        value_type: int64
        transformation_sql: |
          SELECT entity_id, event_time, big AS value FROM (VALUES
            ('one', %(end_time)s::timestamptz, 9007199254740993::int8),
            ('two', %(end_time)s::timestamptz - interval '1 minute', '-9223372036854775808'::int8),
            ('two', %(end_time)s::timestamptz, 9223372036854775807::int8)) v(entity_id, event_time, big)
          WHERE %(tenant_id)s = 'acme'
      - name: precise
        value_type: float64
        transformation_sql: |
          SELECT entity_id, event_time, x AS value FROM (VALUES
            ('one', %(end_time)s::timestamptz, 0.1000000000000000055511151231257827::numeric),
            ('two', %(end_time)s::timestamptz, 1e-300::numeric)) v(entity_id, event_time, x)
          WHERE %(tenant_id)s = 'acme'
      - name: words
        value_type: string
        transformation_sql: |
          SELECT entity_id, event_time, w AS value FROM (VALUES
            ('one', %(end_time)s::timestamptz, E'été "quoted" \\\\ back\\nslash'),
            ('two', %(end_time)s::timestamptz - interval '1 minute', '日本語 ✓')) v(entity_id, event_time, w)
          WHERE %(tenant_id)s = 'acme'
"""


def test_published_values_are_stored_as_the_json_texts_of_their_offline_values(
    store: FeatureStore, db: Sql, tmp_path: Path
) -> None:
    """Entity `one` has one row (published from its value texts), `two` has two event times (its payload
    is built in SQL): either way each stored value is its latest offline value's text, byte for byte."""
    (tmp_path / "texts.yaml").write_text(TEXTS_REPO)
    store.apply(tmp_path)
    result = store.materialize(config("acme", "texts"))
    assert result.status is JobStatus.COMPLETED, result.errors
    offline = {
        (entity, feature): (text, ts)
        for entity, feature, text, ts in db.rows(
            "SELECT DISTINCT ON (entity_id, feature_name) entity_id, feature_name, value::text, event_time"
            " FROM feature_store.feature_values WHERE tenant_id = 'acme' AND feature_group_id = 'texts'"
            " ORDER BY entity_id, feature_name, event_time DESC"
        )
    }
    assert len(offline) == 6
    assert offline[("one", "words")][0] == '"été \\"quoted\\" \\\\ back\\nslash"'
    online = store.online
    stored = {}
    for key in online.scan_keys(tenant_id="acme", group_id="texts"):  # type: ignore[attr-defined]
        for field, raw in online.client.hgetall(key).items():  # type: ignore[attr-defined]
            if field != b"~":
                event_us, _write_us, text = raw.decode().split("|", 2)
                event_time = datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=int(event_us))
                stored[(online.entity_of(key), field.decode())] = (text, event_time)  # type: ignore[attr-defined]
    assert stored == offline
    rows = store.get_online_features("acme", "thing", ["one", "two"], ["texts:big", "texts:precise", "texts:words"])
    assert [[v.value for v in row.features.values()] for row in rows] == [
        [9007199254740993, 0.1, 'été "quoted" \\ back\nslash'],
        [9223372036854775807, 1e-300, "日本語 ✓"],
    ]
