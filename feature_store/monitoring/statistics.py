"""Feature monitoring: per-window statistics of each feature and its drift against a trailing baseline.

The validate stage computes them set-wise in PostgreSQL from the job's staged rows, right after the
rules marked the failing ones, so every window (a failed one too) leaves its numbers behind.

Drift is the population stability index (PSI) of the window's valid values against the trailing
`BASELINE_WINDOWS` windows before it, over fixed bins: the deciles of a number, the top values of a
string or bool (plus one bin for every other value), as its first window with values had them.
Every window stores its counts in those bins, so a baseline is a sum of stored counts, exact.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from pydantic import BaseModel

from feature_store.db import fetch_models
from feature_store.definitions.models import FeatureDefinition
from feature_store.pipeline.staging import PRESENT, staged_rows
from feature_store.windows import TimeWindow

BASELINE_WINDOWS = 24
"""How many earlier windows of a feature its drift is measured against (a day of hourly windows)."""

PERCENTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
"""Percentiles stored per window of a numeric feature (linear interpolation, as percentile_cont)."""

TOP_VALUES = 10
"""Most frequent values stored per window of a string or bool feature; also its drift categories."""

PSI_FLOOR = 1e-4
"""Smallest share a bin counts with in PSI, so an empty bin gives a large but finite term."""

DRIFT_THRESHOLD = 0.2
"""PSI above which a window is marked as drifted (0.1-0.2 is usually read as moderate, above as major)."""

_DECILES = tuple(i / 10 for i in range(1, 10))


def _double(numeric: str) -> str:
    """A numeric expression as a double; one too small for a double (1e-400) is 0, as a double rounds it."""
    return f"(CASE WHEN abs({numeric}) < 1e-307 THEN 0::float8 ELSE ({numeric})::float8 END)"


_AS_DOUBLE = _double("value::numeric")
_NUMBER_COLUMNS = f"NULL::jsonb AS value, coalesce(number, {_AS_DOUBLE}) AS x"


class FeatureStatistics(BaseModel):
    """Statistics of one feature in one window. Value statistics cover the valid rows; rates all rows."""

    tenant_id: str
    feature_group_id: str
    feature_name: str
    window_start: datetime
    window_end: datetime
    job_id: int
    value_type: str
    rows_total: int
    rows_null: int
    rows_quarantined: int
    rows_valid: int
    null_rate: float
    quarantine_rate: float
    min_value: float | None
    max_value: float | None
    mean_value: float | None
    stddev_value: float | None
    percentiles: dict[str, float] | None
    """`p1`, `p5`, `p25`, `p50`, `p75`, `p95`, `p99` of a numeric feature's valid values."""
    distinct_count: int
    top_values: list[dict[str, Any]] | None
    """Up to `TOP_VALUES` of `{"value": v, "count": n}`, most frequent first (string and bool features)."""
    drift_psi: float | None
    """PSI against the baseline; None without an earlier window (or without values)."""
    baseline_windows: int
    drifted: bool


def record_statistics(
    conn: psycopg.Connection,
    *,
    job_id: int,
    tenant_id: str,
    group_id: str,
    feature: FeatureDefinition,
    window: TimeWindow,
) -> FeatureStatistics:
    """Compute and store the statistics of the feature's staged rows for the job's window (replacing a
    rerun's), then its drift against the windows before it; returns what was stored."""
    table = staged_rows(conn, job_id, feature.name)
    key = {"tenant": tenant_id, "group": group_id, "feature": feature.name}
    numeric = feature.value_type.is_numeric
    with conn.transaction():
        conn.execute("SET LOCAL work_mem = '64MB'")  # percentiles and distinct counts sort in memory
        _ensure_bins(conn, table, key, numeric=numeric)
        conn.execute(
            sql.SQL(_INSERT).format(
                table=table,
                # A number as the staged double when the transform staged one (see staging), not its
                # jsonb; a string's or a bool's value itself, which its top values and bins group by.
                valid=sql.SQL(_NUMBER_COLUMNS if numeric else "value, NULL::float8 AS x"),
                rows_valid=sql.SQL("n.rows_valid" if numeric else "(SELECT count(*) FROM v)"),
                distinct=sql.SQL("(SELECT count(DISTINCT x) FROM v)" if numeric else "(SELECT count(*) FROM grouped)"),
                numbers=sql.SQL(_NUMBERS if numeric else _NO_NUMBERS),
                top=sql.SQL(_NO_TOP if numeric else _TOP),
                bins=sql.SQL(_NUMERIC_BINS if numeric else _CATEGORY_BINS),
            ),
            {
                **key,
                "job_id": job_id,
                "value_type": feature.value_type.value,
                "start": window.start,
                "end": window.end,
                "percentiles": list(PERCENTILES),
                "names": [_percentile_name(p) for p in PERCENTILES],
                "top_n": TOP_VALUES,
            },
        )
        conn.execute(
            _DRIFT,
            {**key, "start": window.start, "end": window.end, "baseline": BASELINE_WINDOWS, "floor": PSI_FLOOR},
        )
    return feature_statistics(
        conn, tenant_id=tenant_id, group_id=group_id, feature_name=feature.name, window=window, limit=1
    )[0]


def feature_statistics(
    conn: psycopg.Connection,
    *,
    tenant_id: str,
    group_id: str,
    feature_name: str | None = None,
    since: datetime | None = None,
    window: TimeWindow | None = None,
    limit: int = 500,
) -> list[FeatureStatistics]:
    """Stored statistics of a (tenant, group), optionally of one feature, windows ending after `since` or
    exactly `window`; newest window first."""
    return fetch_models(
        conn,
        FeatureStatistics,
        "SELECT tenant_id, feature_group_id, feature_name, window_start, window_end, job_id, value_type,"
        " rows_total, rows_null, rows_quarantined, rows_valid,"
        " CASE WHEN rows_total > 0 THEN rows_null::float8 / rows_total ELSE 0 END AS null_rate,"
        " CASE WHEN rows_total > 0 THEN rows_quarantined::float8 / rows_total ELSE 0 END AS quarantine_rate,"
        " min_value, max_value, mean_value, stddev_value, percentiles, distinct_count, top_values,"
        " drift_psi, baseline_windows, coalesce(drift_psi > %(threshold)s, false) AS drifted"
        " FROM feature_store.feature_statistics"
        " WHERE tenant_id = %(tenant)s AND feature_group_id = %(group)s"
        "   AND (%(feature)s::text IS NULL OR feature_name = %(feature)s)"
        "   AND (%(since)s::timestamptz IS NULL OR window_end > %(since)s)"
        "   AND (%(start)s::timestamptz IS NULL OR (window_start, window_end) = (%(start)s, %(end)s))"
        " ORDER BY window_end DESC, feature_name LIMIT %(limit)s",
        {
            "tenant": tenant_id,
            "group": group_id,
            "feature": feature_name,
            "since": since,
            "start": window.start if window else None,
            "end": window.end if window else None,
            "limit": limit,
            "threshold": DRIFT_THRESHOLD,
        },
    )


def _percentile_name(p: float) -> str:
    return f"p{round(p * 100)}"


def _ensure_bins(conn: psycopg.Connection, table: sql.Composable, key: dict[str, str], *, numeric: bool) -> None:
    """Fix the feature's drift bins from this window's valid values unless an earlier window did."""
    fixed = conn.execute(
        "SELECT EXISTS (SELECT FROM feature_store.feature_statistics_bins"
        " WHERE tenant_id = %(tenant)s AND feature_group_id = %(group)s AND feature_name = %(feature)s)",
        key,
    ).fetchone()
    if fixed and fixed[0]:
        return
    if numeric:
        choose = sql.SQL(
            "SELECT ARRAY(SELECT DISTINCT e FROM unnest(percentile_cont(%(deciles)s::float8[])"
            "  WITHIN GROUP (ORDER BY " + _AS_DOUBLE + ")) e ORDER BY e), NULL::jsonb FROM {valid} HAVING count(*) > 0"
        )
    else:
        choose = sql.SQL(
            "SELECT NULL::float8[], jsonb_agg(value ORDER BY n DESC, value) FROM"
            " (SELECT value, count(*) AS n FROM {valid} GROUP BY value ORDER BY n DESC, value LIMIT %(top_n)s) t"
            " HAVING count(*) > 0"
        )
    valid = sql.SQL(
        "{} WHERE feature_name = %(feature)s AND rejected_rule IS NULL AND value IS NOT NULL"
        " AND jsonb_typeof(value) <> 'null'"
    ).format(table)
    conn.execute(
        sql.SQL(
            "INSERT INTO feature_store.feature_statistics_bins"
            " (tenant_id, feature_group_id, feature_name, edges, categories)"
            " SELECT %(tenant)s, %(group)s, %(feature)s, b.* FROM ({choose}) b"
            " ON CONFLICT (tenant_id, feature_group_id, feature_name) DO NOTHING"
        ).format(choose=choose.format(valid=valid)),
        {**key, "deciles": list(_DECILES), "top_n": TOP_VALUES},
    )


# Staged rows of the feature: `s` all of them, `v` the valid non-null values (as numbers `x`, or as
# they are); `bins` the fixed bins.
_INSERT = f"""
WITH s AS NOT MATERIALIZED (SELECT value, number, rejected_rule FROM {{table}} WHERE feature_name = %(feature)s),
v AS MATERIALIZED (SELECT {{valid}} FROM s WHERE rejected_rule IS NULL AND {PRESENT}),
grouped AS MATERIALIZED (SELECT value, count(*) AS n FROM v GROUP BY value),
counts AS (
    SELECT count(*) AS rows_total,
           count(*) FILTER (WHERE NOT {PRESENT}) AS rows_null,
           count(*) FILTER (WHERE rejected_rule IS NOT NULL) AS rows_quarantined
    FROM s),
bins AS (
    SELECT edges, categories FROM feature_store.feature_statistics_bins
    WHERE tenant_id = %(tenant)s AND feature_group_id = %(group)s AND feature_name = %(feature)s),
numbers AS ({{numbers}}),
top AS ({{top}}),
binned AS ({{bins}})
INSERT INTO feature_store.feature_statistics AS f
    (tenant_id, feature_group_id, feature_name, window_start, window_end, job_id, value_type,
     rows_total, rows_null, rows_quarantined, rows_valid, min_value, max_value, mean_value, stddev_value,
     percentiles, distinct_count, top_values, bin_counts, drift_psi, baseline_windows, computed_at)
SELECT %(tenant)s, %(group)s, %(feature)s, %(start)s, %(end)s, %(job_id)s, %(value_type)s,
       c.rows_total, c.rows_null, c.rows_quarantined, {{rows_valid}},
       n.min_value, n.max_value, n.mean_value, n.stddev_value, n.percentiles,
       {{distinct}}, t.top_values, b.bin_counts, NULL, 0, now()
FROM counts c, numbers n, top t, binned b
ON CONFLICT (tenant_id, feature_group_id, feature_name, window_start, window_end) DO UPDATE SET
    job_id = excluded.job_id, value_type = excluded.value_type, rows_total = excluded.rows_total,
    rows_null = excluded.rows_null, rows_quarantined = excluded.rows_quarantined,
    rows_valid = excluded.rows_valid, min_value = excluded.min_value, max_value = excluded.max_value,
    mean_value = excluded.mean_value, stddev_value = excluded.stddev_value,
    percentiles = excluded.percentiles, distinct_count = excluded.distinct_count,
    top_values = excluded.top_values, bin_counts = excluded.bin_counts, drift_psi = NULL,
    baseline_windows = 0, computed_at = excluded.computed_at
"""

# Mean and spread in doubles, or in numeric when a value is so large that a double's sum of squares
# would overflow (`small` is false): the double aggregates skip such values and the numeric ones are
# an InitPlan of a CASE branch, run only when that branch is taken. One pass over the valid values.
_NUMBERS = f"""
SELECT rows_valid, min_value, max_value,
       CASE WHEN small THEN mean_double
            ELSE (SELECT {_double("avg(value::numeric)")} FROM s WHERE rejected_rule IS NULL AND {PRESENT}) END
           AS mean_value,
       CASE WHEN small THEN stddev_double
            ELSE (SELECT {_double("stddev_pop(value::numeric)")} FROM s WHERE rejected_rule IS NULL AND {PRESENT}) END
           AS stddev_value,
       CASE WHEN qs IS NOT NULL THEN
           (SELECT jsonb_object_agg(p.name, p.q) FROM unnest(%(names)s::text[], qs) AS p(name, q)) END AS percentiles
FROM (SELECT count(*) AS rows_valid, min(x) AS min_value, max(x) AS max_value,
             avg(x) FILTER (WHERE abs(x) < 1e150) AS mean_double,
             stddev_pop(x) FILTER (WHERE abs(x) < 1e150) AS stddev_double,
             coalesce(max(abs(x)), 0) < 1e150 AS small,
             percentile_cont(%(percentiles)s::float8[]) WITHIN GROUP (ORDER BY x) AS qs
      FROM v) agg
"""

_NO_NUMBERS = (
    "SELECT NULL::float8 AS min_value, NULL::float8 AS max_value, NULL::float8 AS mean_value,"
    " NULL::float8 AS stddev_value, NULL::jsonb AS percentiles"
)

_TOP = """
SELECT jsonb_agg(jsonb_build_object('value', value, 'count', n) ORDER BY n DESC, value) AS top_values
FROM (SELECT value, n FROM grouped ORDER BY n DESC, value LIMIT %(top_n)s) t
"""

_NO_TOP = "SELECT NULL::jsonb AS top_values"

# Bin i (0-based) of a number holds edges[i] <= x < edges[i+1], bin 0 everything below the first edge.
_NUMERIC_BINS = """
SELECT ARRAY(
    SELECT coalesce(h.n, 0) FROM bins, generate_series(0, coalesce(cardinality(bins.edges), 0)) AS i
    LEFT JOIN (SELECT width_bucket(v.x, bins.edges) AS i, count(*) AS n FROM v, bins GROUP BY 1) h
        ON h.i = i.i
    ORDER BY i.i) AS bin_counts
"""

# Bin i (1-based) of a string or bool holds categories[i], bin 0 every other value.
_CATEGORY_BINS = """
SELECT ARRAY(
    SELECT coalesce(h.n, 0) FROM bins, generate_series(0, coalesce(jsonb_array_length(bins.categories), 0)) AS i
    LEFT JOIN (SELECT coalesce(c.ord, 0) AS i, sum(g.n) AS n FROM grouped g CROSS JOIN bins
               LEFT JOIN jsonb_array_elements(bins.categories) WITH ORDINALITY AS c(value, ord) ON c.value = g.value
               GROUP BY 1) h
        ON h.i = i.i
    ORDER BY i.i) AS bin_counts
"""

# PSI of the window's bin shares (a) against the summed bin counts of up to %(baseline)s windows that
# ended before it started (e): sum((a - e) * ln(a / e)), each share at least %(floor)s.
_DRIFT = """
WITH cur AS (
    SELECT bin_counts FROM feature_store.feature_statistics
    WHERE tenant_id = %(tenant)s AND feature_group_id = %(group)s AND feature_name = %(feature)s
      AND window_start = %(start)s AND window_end = %(end)s),
base AS (
    SELECT bin_counts FROM feature_store.feature_statistics
    WHERE tenant_id = %(tenant)s AND feature_group_id = %(group)s AND feature_name = %(feature)s
      AND window_end <= %(start)s AND rows_valid > 0
      AND cardinality(bin_counts) = (SELECT cardinality(bin_counts) FROM cur)
    ORDER BY window_end DESC LIMIT %(baseline)s),
expected AS (
    SELECT b.i, sum(b.n) AS n FROM base, unnest(base.bin_counts) WITH ORDINALITY AS b(n, i) GROUP BY b.i),
actual AS (SELECT a.i, a.n FROM cur, unnest(cur.bin_counts) WITH ORDINALITY AS a(n, i)),
shares AS (
    SELECT greatest(a.n::float8 / nullif(sum(a.n) OVER (), 0), %(floor)s) AS a,
           greatest(e.n::float8 / nullif(sum(e.n) OVER (), 0), %(floor)s) AS e
    FROM actual a JOIN expected e ON e.i = a.i)
UPDATE feature_store.feature_statistics SET
    drift_psi = (SELECT sum((a - e) * ln(a / e)) FROM shares),
    baseline_windows = (SELECT count(*) FROM base)
WHERE tenant_id = %(tenant)s AND feature_group_id = %(group)s AND feature_name = %(feature)s
  AND window_start = %(start)s AND window_end = %(end)s AND rows_valid > 0
  AND EXISTS (SELECT FROM base)
"""
