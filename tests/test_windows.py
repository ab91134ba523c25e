"""Window features from hourly tiles, pinned against an independent SQL computation over the raw source rows."""

from __future__ import annotations

import random
import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from feature_store import FeatureStore, JobStatus, JobType, PipelineConfig, PipelineResult
from feature_store.errors import DefinitionError
from support import Sql

START = datetime(2026, 11, 2, 0, tzinfo=timezone.utc)
HOURS = 10
ENDS = [START + timedelta(hours=h + 1) for h in range(HOURS)]
TENANTS = ("acme", "globex")
USERS = [f"u{i}" for i in range(1, 6)]

# Every aggregation over every window; `empty` as each declares it.
FUNCTIONS = {
    "count": ("int64", "zero", "1"),
    "sum": ("int64", "zero", "e.amount"),
    "avg": ("float64", "missing", "e.amount"),
    "min": ("int64", "missing", "e.amount"),
    "max": ("int64", "missing", "e.amount"),
    "last": ("string", "missing", "e.item"),
    "approx_count_distinct": ("int64", "zero", "e.item"),
}
WINDOWS = {"1h": 1, "3h": 3, "1d": 24}

# The same aggregates straight from the source rows, per user, for the window (t - w, t].
INDEPENDENT = {
    "count": "count(*)",
    "sum": "sum(amount)",
    "avg": "avg(amount)::float8",
    "min": "min(amount)",
    "max": "max(amount)",
    "last": "(array_agg(item ORDER BY created_at DESC))[1]",
    "approx_count_distinct": "count(DISTINCT item)",
}


def _feature(function: str, window: str) -> str:
    return f"{function}_{window}"


def repo_yaml() -> str:
    features = []
    for function, (value_type, empty, column) in FUNCTIONS.items():
        for window in WINDOWS:
            features.append(
                textwrap.indent(
                    textwrap.dedent(f"""\
                        - name: {_feature(function, window)}
                          value_type: {value_type}
                          aggregation: {{function: {function}, window: {window}, empty: {empty}}}
                          transformation_sql: |
                            SELECT e.user_id AS entity_id, {column} AS value, e.created_at AS event_time
                            FROM app.events e WHERE e.tenant_id = %(tenant_id)s
                              AND e.created_at > %(start_time)s AND e.created_at <= %(end_time)s
                    """),
                    "      ",
                )
            )
    return (
        "source_schemas: [app]\n"
        "tenants:\n  - {id: acme, name: Acme}\n  - {id: globex, name: Globex}\n"
        "feature_groups:\n"
        "  - id: user_windows\n    entity_type: user\n    max_failure_rate: 0.5\n    features:\n" + "".join(features)
    )


@pytest.fixture
def events(db: Sql, store: FeatureStore, tmp_path: Path) -> Sql:
    """app.events, isolated per tenant like the demo tables, with 10 hours of rows; the repo applied."""
    db.execute(
        "CREATE TABLE app.events (id serial PRIMARY KEY, tenant_id text NOT NULL, user_id text NOT NULL,"
        " amount integer, item text NOT NULL, created_at timestamptz NOT NULL)"
    )
    db.execute("ALTER TABLE app.events ENABLE ROW LEVEL SECURITY")
    db.execute(
        "CREATE POLICY featurepipe_tenant ON app.events FOR SELECT TO featurepipe_transform"
        " USING (tenant_id = (SELECT featurepipe_sandbox.current_tenant()))"
    )
    rng = random.Random(11)
    rows: list[tuple[Any, ...]] = []
    for tenant in TENANTS:
        for user in USERS:
            for hour in range(HOURS):
                if user == "u5" and hour > 1:
                    continue  # quiet after hour 2: its windows slide past it
                if rng.random() < 0.3:
                    continue  # hours without rows
                seconds = rng.sample(range(1, 3600), rng.randint(1, 4))
                if rng.random() < 0.3:
                    seconds[0] = 3600  # on the hour end: belongs to this hour, (start, end]
                for s in seconds:
                    amount = rng.randint(1, 100) if rng.random() > 0.1 else None
                    rows.append(
                        (tenant, user, amount, f"item{rng.randint(1, 6)}", START + timedelta(hours=hour, seconds=s))
                    )
    with db.conn.cursor().copy("COPY app.events (tenant_id, user_id, amount, item, created_at) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)
    (tmp_path / "features.yaml").write_text(repo_yaml())
    store.apply(tmp_path)
    return db


def materialize(
    store: FeatureStore,
    start: datetime,
    end: datetime,
    mode: JobType = JobType.INCREMENTAL,
    tenants: tuple[str, ...] = TENANTS,
    features: list[str] | None = None,
) -> None:
    for tenant in tenants:
        config = PipelineConfig(
            tenant_id=tenant,
            feature_group_id="user_windows",
            start_time=start,
            end_time=end,
            mode=mode,
            features=features,
        )
        result = store.materialize(config)
        assert result.status is JobStatus.COMPLETED, result.errors


def expected(db: Sql, tenant: str, function: str, window: str, at: datetime) -> dict[str, Any]:
    """What a training row at `at` must see: the window ending at `at`'s last complete hour, from raw rows."""
    value_type, empty, _ = FUNCTIONS[function]
    end = at.replace(minute=0, second=0, microsecond=0)
    width = timedelta(hours=WINDOWS[window])
    values = dict(
        db.rows(
            f"SELECT user_id, {INDEPENDENT[function]} FROM app.events WHERE tenant_id = %s"
            " AND created_at > %s AND created_at <= %s GROUP BY user_id",
            (tenant, end - width, end),
        )
    )
    seen = {
        u
        for (u,) in db.rows(
            "SELECT DISTINCT user_id FROM app.events WHERE tenant_id = %s AND created_at <= %s", (tenant, end)
        )
    }
    out: dict[str, Any] = {}
    for user in USERS:
        if user in values and values[user] is not None:
            out[user] = pytest.approx(values[user]) if value_type == "float64" else values[user]
        elif user in seen and empty == "zero":
            out[user] = 0  # no rows in the window any more (or only rows with a null value, for sum)
        else:
            out[user] = None
    return out


def check_all(store: FeatureStore, db: Sql, ats: list[datetime], tenants: tuple[str, ...] = TENANTS) -> int:
    """Every feature of every user at every time in `ats` against `expected`; returns the values checked."""
    checked = 0
    names = [_feature(f, w) for f in FUNCTIONS for w in WINDOWS]
    for tenant in tenants:
        rows = store.get_historical_features(
            tenant, [(u, at) for at in ats for u in USERS], [f"user_windows:{n}" for n in names]
        )
        got = {(r.entity_id, r.timestamp): r.values for r in rows}
        for function in FUNCTIONS:
            for window in WINDOWS:
                feature = _feature(function, window)
                for at in ats:
                    want = expected(db, tenant, function, window, at)
                    have = {u: got[(u, at)][f"user_windows:{feature}"] for u in USERS}
                    assert have == want, (tenant, feature, at)
                    checked += 1
    return checked


def test_every_aggregation_and_window_equals_the_raw_rows_point_in_time(store: FeatureStore, events: Sql) -> None:
    materialize(store, START, ENDS[-1], JobType.FULL)  # a backfill: every hour's tiles, then its windows
    # At each hour end, and half an hour later (still the window of the last complete hour, never a later tile).
    ats = ENDS + [t + timedelta(minutes=30) for t in ENDS[:-1]]
    assert check_all(store, events, ats) == len(TENANTS) * len(FUNCTIONS) * len(WINDOWS) * len(ats)
    # Hourly runs read one hour of source rows each; the staging is gone, the tiles stay.
    assert events.value("SELECT count(DISTINCT hour_end) FROM feature_store.window_tile_hours") == HOURS


def test_hourly_runs_equal_a_backfill_and_reruns_replace_every_window_containing_the_hour(
    store: FeatureStore, events: Sql
) -> None:
    for end in ENDS:
        materialize(store, end - timedelta(hours=1), end, tenants=("acme",))
    late_hour = ENDS[3]
    # Late rows for hour 4 (one user's first ever, one on the hour end), and a row of it withdrawn.
    events.execute(
        "INSERT INTO app.events (tenant_id, user_id, amount, item, created_at) VALUES"
        " ('acme', 'u6', 500, 'late', %(t)s - interval '10 minutes'), ('acme', 'u1', 1, 'late', %(t)s),"
        " ('acme', 'u5', 7, 'late', %(t)s - interval '1 second')",
        {"t": late_hour},
    )
    events.execute(
        "DELETE FROM app.events WHERE id = (SELECT min(id) FROM app.events WHERE tenant_id = 'acme'"
        " AND user_id = 'u2' AND created_at > %(t)s - interval '1 hour' AND created_at <= %(t)s)",
        {"t": late_hour},
    )
    materialize(store, late_hour - timedelta(hours=1), late_hour, tenants=("acme",))
    USERS.append("u6")
    try:
        check_all(store, events, ENDS, tenants=("acme",))
    finally:
        USERS.remove("u6")
    # u6's late row is in its 3h windows ending at hours 4 to 6; from hour 7 on it reads 0, as declared.
    rows = store.get_historical_features("acme", [("u6", at) for at in ENDS], ["user_windows:count_3h"])
    assert [r.values["user_windows:count_3h"] for r in rows] == [None, None, None, 1, 1, 1, 0, 0, 0, 0]


def test_online_values_expire_as_the_window_slides(store: FeatureStore, events: Sql) -> None:
    """u5 has no rows after hour 2: its 3h count reads 0 and its 3h average reads missing, without a rescan."""
    first_hours = ENDS[:6]
    for end in first_hours:
        materialize(
            store, end - timedelta(hours=1), end, tenants=("acme",), features=["count_3h", "avg_3h", "count_1d"]
        )
    last_u5 = events.value("SELECT max(created_at) FROM app.events WHERE tenant_id = 'acme' AND user_id = 'u5'")
    assert last_u5 <= ENDS[1]
    online = store.get_online_features(
        "acme", "user", ["u5"], ["user_windows:count_3h", "user_windows:avg_3h", "user_windows:count_1d"]
    )
    row = online[0].features
    assert row["user_windows:count_3h"].value == 0
    assert row["user_windows:count_3h"].event_time is not None
    assert row["user_windows:avg_3h"].value is None
    assert row["user_windows:count_1d"].value == events.value(
        "SELECT count(*) FROM app.events WHERE tenant_id = 'acme' AND user_id = 'u5'"
    )


def test_approximate_distinct_count_stays_close_beyond_the_exact_range(store: FeatureStore, events: Sql) -> None:
    """Past 256 distinct values per window the KMV sketch estimates: within 15% of the exact count."""
    events.execute(
        "INSERT INTO app.events (tenant_id, user_id, amount, item, created_at)"
        " SELECT 'acme', 'heavy', 1, 'sku' || (i %% 3000), %(t)s - make_interval(secs => 1 + i %% 3500)"
        " FROM generate_series(1, 6000) i",
        {"t": ENDS[0]},
    )
    events.execute(
        "INSERT INTO app.events (tenant_id, user_id, amount, item, created_at)"
        " SELECT 'acme', 'heavy', 1, 'sku' || (2000 + i), %(t)s - make_interval(secs => 1 + i)"
        " FROM generate_series(1, 2000) i",
        {"t": ENDS[1]},
    )
    materialize(store, START, ENDS[1], JobType.FULL)
    exact = events.value("SELECT count(DISTINCT item) FROM app.events WHERE tenant_id = 'acme' AND user_id = 'heavy'")
    assert exact == 4001
    rows = store.get_historical_features("acme", [("heavy", ENDS[1])], ["user_windows:approx_count_distinct_1d"])
    estimate = rows[0].values["user_windows:approx_count_distinct_1d"]
    assert isinstance(estimate, int)
    assert abs(estimate - exact) / exact < 0.15
    one_hour = store.get_historical_features("acme", [("heavy", ENDS[0])], ["user_windows:approx_count_distinct_1h"])
    assert abs(one_hour[0].values["user_windows:approx_count_distinct_1h"] - 3000) / 3000 < 0.15  # type: ignore[operator]


def test_window_definitions_are_checked(store: FeatureStore, tmp_path: Path) -> None:
    (tmp_path / "features.yaml").write_text(
        repo_yaml().replace("{function: avg, window: 1h, empty: missing}", "{function: avg, window: 1h, empty: zero}")
    )
    with pytest.raises(DefinitionError, match=r"feature 'avg_1h'.aggregation: empty: zero is for count, sum"):
        store.apply(tmp_path)
    (tmp_path / "features.yaml").write_text(repo_yaml().replace("window: 3h,", "window: 3w,", 1))
    with pytest.raises(
        DefinitionError, match=r"feature 'count_3h'.aggregation.window: must be a number of hours or days"
    ):
        store.apply(tmp_path)


def test_a_rerun_whose_later_windows_fail_offline_puts_online_back_to_the_offline_values(
    store: FeatureStore, events: Sql
) -> None:
    def run(end: datetime, *, offline: bool) -> PipelineResult:
        return store.materialize(
            PipelineConfig(
                tenant_id="acme",
                feature_group_id="user_windows",
                start_time=end - timedelta(hours=1),
                end_time=end,
                features=["count_3h"],
                write_offline=offline,
            )
        )

    late_hour = ENDS[3]
    u6 = "INSERT INTO app.events (tenant_id, user_id, amount, item, created_at) VALUES ('acme', 'u6', 1, %s, %s)"
    events.execute(u6, ("first", ENDS[4] - timedelta(minutes=10)))  # u6's first row, in hour 5
    # Online only at first: the tiles are kept, offline has no window after hour 4.
    for end in ENDS[:6]:
        assert run(end, offline=False).status is JobStatus.COMPLETED
    # A late row of u6 in hour 4: its 3h count is 1 at hour 4 and 2 at hour 5, both in the rerun's wide
    # rows, which go online while it writes offline.
    events.execute(u6, ("late", late_hour - timedelta(minutes=10)))
    # The rerun of hour 4 writes its own window offline, then fails writing the later windows it recomputed.
    events.execute(
        "CREATE FUNCTION app.refuse_later_windows() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        f" IF NEW.event_time > '{late_hour.isoformat()}' THEN RAISE EXCEPTION 'injected failure'; END IF;"
        " RETURN NEW; END $$"
    )
    events.execute(
        "CREATE TRIGGER refuse_later_windows BEFORE INSERT ON feature_store.offline_rows"
        " FOR EACH ROW EXECUTE FUNCTION app.refuse_later_windows()"
    )
    result = run(late_hour, offline=True)
    assert result.status is JobStatus.FAILED and "injected failure" in " ".join(result.errors)
    assert events.rows(
        "SELECT event_time, value FROM feature_store.feature_values WHERE tenant_id = 'acme' AND entity_id = 'u6'"
    ) == [(late_hour, 1)]
    # Online, u6's count at hour 5 (2, published early, outside hour 4's window) gave way to it.
    value = store.get_online_features("acme", "user", ["u6"], ["user_windows:count_3h"])[0]
    online = value.features["user_windows:count_3h"]
    assert (online.value, online.event_time) == (1, late_hour)
