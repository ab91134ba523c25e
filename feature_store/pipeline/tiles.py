"""Window aggregations: each run tiles its hours' source rows, then combines tiles into window values.

A window feature's SQL returns one hour's source rows (`entity_id, value[, event_time]`). Its
transform stages them as usual, then, inside PostgreSQL:

1. replaces the tiles of the run's hours (one row per entity and hour: count, sum, min, max, last,
   and a KMV sketch of distinct values) in `feature_store.window_tiles`;
2. stages, in place of the source rows, the window value at each hour end T of the run for every
   entity whose window (T - W, T] changed: those with a tile at T (came in) or at T - W (slid out;
   an entity left with no tile reads 0 or missing, as declared). Every other entity's window holds
   the same tiles as an hour earlier, so its latest offline value is still its window value: a
   point-in-time read of "the latest value at or before t" is the window ending at t's last hour.

A rerun of an hour also changes the windows of later hours that contain it: when later hours were
already tiled, the run also stages the values at the change points of those hours (up to W after
it), and the offline write replaces them (see `stages`). An entity that dropped out of the hour's
tile loses its value there, and its latest value falls back to the previous change point, which
holds the same tiles. An hourly run reads one hour of source rows and the tiles of the entities
whose windows changed, never days of source rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import psycopg
from psycopg import sql

from feature_store.db import advisory_xact_lock
from feature_store.definitions.models import AggregationFunction, EmptyWindow, FeatureDefinition, ValueType
from feature_store.errors import WindowError
from feature_store.windows import SCHEDULE, TimeWindow

SKETCH_SIZE = 256
"""Hashes kept per tile for `approx_count_distinct` (K minimum values): exact below 256 distinct
values in a window, about 1/sqrt(K - 2) = 6% relative standard error above."""

VACUUM_AFTER_TILES = 5000
"""A run writing this many tiles (a backfill) vacuums and analyzes the tiles table: with statistics the
planner combines each entity's window from the primary key (without them it may pick the hour index
and read every entity's tiles for each one), and all-visible pages make that an index-only scan."""

_KEY = "tenant_id = %(tenant)s AND feature_group_id = %(group)s AND feature_name = %(feature)s"

# A tile from the staged source rows of one hour; `num` is the value as a number (NULL if it is none).
_TILES = (
    "INSERT INTO feature_store.window_tiles (tenant_id, feature_group_id, feature_name, entity_id, hour_end,"
    " row_count, value_count, total, low, high, last_time, last_value, hashes, job_id)"
    " SELECT %(tenant)s, %(group)s, %(feature)s, s.entity_id, s.window_end, count(*), count(s.num), sum(s.num),"
    " min(s.num), max(s.num), max(s.event_time), (array_agg(s.value ORDER BY s.event_time DESC NULLS LAST))[1],"
    " {hashes}, %(job)s"
    " FROM (SELECT entity_id, window_end, event_time, value,"
    "  CASE WHEN jsonb_typeof(value) = 'number' THEN value::numeric END AS num"
    "  FROM {partition} WHERE entity_id IS NOT NULL AND entity_id <> '') s"
    " GROUP BY s.entity_id, s.window_end"
)
_HASH = "hashtextextended(s.value #>> '{{}}', 0)"
_HASHES = (
    f"(array_agg(DISTINCT {_HASH} ORDER BY {_HASH})"
    " FILTER (WHERE jsonb_typeof(s.value) IS DISTINCT FROM 'null'))[1:{k}]"
)

# What each aggregation needs from an entity's tiles in its window (t.hour_end in (c.t - W, c.t]).
_AGGREGATES = {
    AggregationFunction.COUNT: "sum(t.row_count) AS n",
    AggregationFunction.SUM: "sum(t.total) AS total",
    AggregationFunction.AVG: "sum(t.total) AS total, sum(t.value_count) AS nv",
    AggregationFunction.MIN: "min(t.low) AS low",
    AggregationFunction.MAX: "max(t.high) AS high",
    AggregationFunction.LAST: "(array_agg(t.last_value ORDER BY t.last_time DESC, t.hour_end DESC))[1] AS last",
    AggregationFunction.APPROX_COUNT_DISTINCT: "NULL AS unused",
}
# One row per changed (entity, hour end) with its aggregates; tiles joined set-wise, grouped once.
_COMBINED = (
    "SELECT c.entity_id, c.t, {aggregates} FROM _fp_changed c LEFT JOIN feature_store.window_tiles t"
    " ON t.tenant_id = %(tenant)s AND t.feature_group_id = %(group)s AND t.feature_name = %(feature)s"
    " AND t.entity_id = c.entity_id AND t.hour_end > c.t - %(width)s AND t.hour_end <= c.t"
    " GROUP BY c.entity_id, c.t"
)
# The merged sketch of an entity's window: the K smallest distinct hashes of its tiles.
_SKETCH = (
    " LEFT JOIN LATERAL (SELECT count(*) AS n, max(h) AS kth FROM (SELECT DISTINCT h"
    " FROM feature_store.window_tiles t, unnest(t.hashes) h WHERE t.tenant_id = %(tenant)s"
    " AND t.feature_group_id = %(group)s AND t.feature_name = %(feature)s AND t.entity_id = a.entity_id"
    " AND t.hour_end > a.t - %(width)s AND t.hour_end <= a.t ORDER BY h LIMIT {k}) k) d ON true"
)


@dataclass(frozen=True)
class Combined:
    tiles: int
    """Tiles written for the run's hours."""

    values: int
    """Window values staged (entities x hour ends whose window changed)."""

    extended_to: datetime | None
    """Later hour ends whose windows the run recomputed too (a rerun), up to this one; None if none."""


def hourly(windows: Sequence[TimeWindow], feature: str) -> list[TimeWindow]:
    """The hours that `windows` cover: tiles are hourly, so a window feature's windows are whole hours."""
    hours = [w for window in windows for w in window.schedule_windows()]
    for hour in hours:
        if hour.end - hour.start != SCHEDULE or hour.end.minute or hour.end.second or hour.end.microsecond:
            raise WindowError(
                f"window feature {feature!r} is tiled by whole hours; the window ({hour.start.isoformat()},"
                f" {hour.end.isoformat()}] is not one (use windows that start and end on whole hours)"
            )
    return hours


def combine(
    conn: psycopg.Connection,
    *,
    job_id: int,
    tenant_id: str,
    group_id: str,
    feature: FeatureDefinition,
    hours: Sequence[TimeWindow],
    partition: sql.Composed,
) -> Combined:
    """Tile the source rows staged in `partition` (one hour each), then replace them with window values."""
    aggregation = feature.aggregation
    assert aggregation is not None
    width = timedelta(hours=aggregation.hours)
    ends = sorted({h.end for h in hours})
    key = {"tenant": tenant_id, "group": group_id, "feature": feature.name}
    params = {**key, "job": job_id, "ends": ends, "width": width}
    distinct = aggregation.function is AggregationFunction.APPROX_COUNT_DISTINCT
    with conn.transaction():
        advisory_xact_lock(conn, f"featurepipe tiles {tenant_id}\x1f{group_id}\x1f{feature.name}")
        conn.execute(f"DELETE FROM feature_store.window_tiles WHERE {_KEY} AND hour_end = ANY(%(ends)s)", params)
        hashes = sql.SQL(_HASHES.format(k=SKETCH_SIZE) if distinct else "NULL::bigint[]")
        tiles = conn.execute(sql.SQL(_TILES).format(hashes=hashes, partition=partition), params).rowcount
        row = conn.execute(f"SELECT max(hour_end) FROM feature_store.window_tile_hours WHERE {_KEY}", params).fetchone()
        tiled_until: datetime | None = row[0] if row else None
        conn.execute(
            "INSERT INTO feature_store.window_tile_hours (tenant_id, feature_group_id, feature_name, hour_end, job_id)"
            " SELECT %(tenant)s, %(group)s, %(feature)s, e, %(job)s FROM unnest(%(ends)s::timestamptz[]) e"
            " ON CONFLICT (tenant_id, feature_group_id, feature_name, hour_end)"
            " DO UPDATE SET job_id = excluded.job_id, computed_at = now()",
            params,
        )
        value_ends = list(ends)
        extended_to = None
        if tiled_until is not None and tiled_until > ends[-1]:
            # Later hours were tiled already (a rerun or late data): their windows contain this run's hours.
            extended_to = min(ends[-1] + width, tiled_until)
            t = ends[-1] + SCHEDULE
            while t <= extended_to:
                value_ends.append(t)
                t += SCHEDULE
        conn.execute(
            "CREATE TEMP TABLE _fp_changed ON COMMIT DROP AS SELECT DISTINCT c.entity_id, e.t"
            " FROM unnest(%(value_ends)s::timestamptz[]) e(t) CROSS JOIN LATERAL ("
            f"  SELECT entity_id FROM feature_store.window_tiles WHERE {_KEY}"
            "   AND (hour_end = e.t OR hour_end = e.t - %(width)s)) c",
            {**params, "value_ends": value_ends},
        )
        conn.execute(sql.SQL("TRUNCATE {}").format(partition))
        combined = sql.SQL(_COMBINED.format(aggregates=_AGGREGATES[aggregation.function]))
        sketch = sql.SQL(_SKETCH.format(k=SKETCH_SIZE) if distinct else "")
        cur = conn.execute(
            sql.SQL(
                "WITH v AS (INSERT INTO {partition} (feature_name, entity_id, event_time, value, window_start,"
                " window_end) SELECT %(feature)s, a.entity_id, a.t, {value}, a.t - %(hour)s, a.t"
                " FROM ({combined}) a {sketch} RETURNING 1)"
                " SELECT count(*) FROM v"
            ).format(partition=partition, value=_value(feature), combined=combined, sketch=sketch),
            {**params, "hour": SCHEDULE},
        )
        values_row = cur.fetchone()
    if tiles >= VACUUM_AFTER_TILES:
        conn.execute("VACUUM (ANALYZE) feature_store.window_tiles")
    return Combined(
        tiles=tiles,
        values=int(values_row[0]) if values_row else 0,
        extended_to=extended_to,
    )


def _value(feature: FeatureDefinition) -> sql.Composable:
    """The window value as jsonb from the combined aggregates `a` (and sketch `d`); NULL when missing."""
    aggregation = feature.aggregation
    assert aggregation is not None
    zero = aggregation.empty is EmptyWindow.ZERO
    as_declared = "::float8" if feature.value_type is ValueType.FLOAT64 else ""
    function = aggregation.function
    if function is AggregationFunction.COUNT:
        expression = "coalesce(a.n, 0)" if zero else "a.n"
    elif function is AggregationFunction.SUM:
        expression = f"coalesce(a.total, 0){as_declared}" if zero else f"a.total{as_declared}"
    elif function is AggregationFunction.AVG:
        expression = "(a.total / nullif(a.nv, 0))::float8"
    elif function is AggregationFunction.MIN:
        expression = f"a.low{as_declared}"
    elif function is AggregationFunction.MAX:
        expression = f"a.high{as_declared}"
    elif function is AggregationFunction.LAST:
        return sql.SQL("a.last")
    else:
        # KMV: below K distinct hashes the count is exact; else (K - 1) / (K-th smallest hash, scaled to (0, 1]).
        estimate = (
            f"CASE WHEN d.n < {SKETCH_SIZE} THEN d.n ELSE round({SKETCH_SIZE - 1} * 18446744073709551616.0"
            " / (d.kth::numeric + 9223372036854775809)) END"
        )
        expression = f"CASE WHEN d.n = 0 THEN {'0' if zero else 'NULL'} ELSE {estimate} END::bigint"
    return sql.SQL(f"to_jsonb({expression})")
