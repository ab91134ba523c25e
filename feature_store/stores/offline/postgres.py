"""Offline store: full feature history in PostgreSQL, and point-in-time-correct reads for training."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import psycopg
from psycopg import sql

from feature_store.db import advisory_xact_lock
from feature_store.definitions.models import ValueType
from feature_store.pipeline.staging import replaced_table, staging_table
from feature_store.serving.models import HistoricalRow
from feature_store.types import FeatureValue
from feature_store.values import coerce
from feature_store.windows import TimeWindow


def write_window(
    conn: psycopg.Connection,
    *,
    job_id: int,
    tenant_id: str,
    group_id: str,
    feature_name: str,
    window: TimeWindow,
) -> int:
    """Replace the window's rows of one (tenant, feature) with the job's valid staged rows.

    Delete and insert commit together, so a rerun never duplicates, never leaves stale rows, and
    readers see either the old window or the new one. Returns the number of rows written.
    """
    with conn.transaction():
        # Two runs writing the same feature at once (a backfill over a scheduled hour) take turns, so
        # the second one's DELETE sees, and replaces, what the first inserted.
        advisory_xact_lock(conn, f"featurepipe offline {tenant_id}\x1f{group_id}\x1f{feature_name}")
        # The entities whose rows of this window go: the publish re-checks their online value (it may have
        # to fall back to an earlier one, or go).
        conn.execute(
            sql.SQL(
                "WITH gone AS (DELETE FROM feature_store.feature_values"
                "  WHERE tenant_id = %s AND feature_group_id = %s AND feature_name = %s"
                "  AND event_time > %s AND event_time <= %s RETURNING entity_id)"
                " INSERT INTO {} (feature_name, entity_id) SELECT DISTINCT %s, entity_id FROM gone"
                " ON CONFLICT DO NOTHING"
            ).format(replaced_table(job_id)),
            (tenant_id, group_id, feature_name, window.start, window.end, feature_name),
        )
        cur = conn.execute(
            sql.SQL(
                "INSERT INTO feature_store.feature_values"
                " (tenant_id, feature_group_id, feature_name, entity_id, event_time, value, job_id)"
                " SELECT %s, %s, feature_name, entity_id, event_time, value, %s"
                " FROM {} WHERE feature_name = %s AND rejected_rule IS NULL"
            ).format(staging_table(job_id)),
            (tenant_id, group_id, job_id, feature_name),
        )
        return cur.rowcount


def get_historical_features(
    conn: psycopg.Connection,
    *,
    tenant_id: str,
    entity_rows: Sequence[tuple[str, datetime]],
    features: Sequence[tuple[str, str, ValueType]],
) -> list[HistoricalRow]:
    """For each (entity_id, timestamp), the latest value of each feature at or before the timestamp.

    Args:
        entity_rows: the training rows; timestamps must carry a time zone.
        features: (group_id, feature_name, value_type) of each feature to join, in output order.

    Returns:
        One row per entity row, in input order; a feature without a value by then is `None`.
        Values stamped after a row's timestamp are never returned (no future leakage).
    """
    if not entity_rows:
        return []
    for entity_id, ts in entity_rows:
        if ts.tzinfo is None:
            raise ValueError(f"timestamp {ts.isoformat()} of entity {entity_id!r} has no time zone")
    with conn.transaction():
        conn.execute(
            "CREATE TEMP TABLE IF NOT EXISTS _fp_entity_rows"
            " (row_no integer, entity_id text, ts timestamptz) ON COMMIT DROP"
        )
        with conn.cursor().copy("COPY _fp_entity_rows (row_no, entity_id, ts) FROM STDIN") as copy:
            for row_no, (entity_id, ts) in enumerate(entity_rows):
                copy.write_row((row_no, entity_id, ts))
        selects = []
        joins = []
        for i, (group_id, feature_name, _) in enumerate(features):
            alias = sql.Identifier(f"f{i}")
            selects.append(sql.SQL("{a}.value, {a}.event_time").format(a=alias))
            joins.append(
                sql.SQL(
                    "LEFT JOIN LATERAL (SELECT v.value, v.event_time FROM feature_store.feature_values v"
                    " WHERE v.tenant_id = {t} AND v.feature_group_id = {g} AND v.feature_name = {f}"
                    " AND v.entity_id = e.entity_id AND v.event_time <= e.ts"
                    " ORDER BY v.event_time DESC LIMIT 1) {a} ON true"
                ).format(t=sql.Literal(tenant_id), g=sql.Literal(group_id), f=sql.Literal(feature_name), a=alias)
            )
        query = sql.SQL(
            "SELECT e.entity_id, e.ts{sep}{selects} FROM _fp_entity_rows e {joins} ORDER BY e.row_no"
        ).format(
            sep=sql.SQL(", ") if selects else sql.SQL(""),
            selects=sql.SQL(", ").join(selects),
            joins=sql.SQL(" ").join(joins),
        )
        result: list[HistoricalRow] = []
        refs = [f"{g}:{f}" for g, f, _ in features]
        for record in conn.execute(query):
            values: dict[str, FeatureValue] = {}
            times: dict[str, datetime | None] = {}
            for i, (ref, (_, _, value_type)) in enumerate(zip(refs, features, strict=True)):
                values[ref] = coerce(record[2 + 2 * i], value_type)
                times[ref] = record[3 + 2 * i]
            result.append(HistoricalRow(entity_id=record[0], timestamp=record[1], values=values, event_times=times))
        return result
