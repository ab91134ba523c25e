"""Offline store: full feature history in PostgreSQL, and point-in-time-correct reads for training.

Layout: `feature_store.offline_rows`, one row per (tenant, group, entity, event time) holding all of
the group's feature values of that row as jsonb (`feature_store.feature_values` shows it one row per
value). Primary key (tenant, group, entity, event time) for point-in-time lookups, a BRIN index on
event time for a window's rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import psycopg
from psycopg import sql

from feature_store.db import advisory_xact_lock
from feature_store.definitions.models import ValueType
from feature_store.serving.models import HistoricalRow
from feature_store.types import FeatureValue
from feature_store.values import PARSERS
from feature_store.windows import TimeWindow


def replace_window(
    conn: psycopg.Connection,
    *,
    tenant_id: str,
    group_id: str,
    job_id: int,
    features: Sequence[str],
    window: TimeWindow,
    source: sql.Composed,
    replaced: sql.Composed,
) -> int:
    """Replace the values of `features` in the window's rows of (tenant, group) with the rows of `source`.

    `source` holds `(entity_id, event_time, features jsonb)`, the job's valid values. Values of the
    group's other features in the window are kept. The (feature, entity) pairs whose values go are
    recorded in `replaced` for the publish. Delete and insert commit together, so a rerun never
    duplicates, never leaves stale rows, and readers see either the old window or the new one.
    Returns the number of rows written.
    """
    with conn.transaction():
        # Two runs writing the same (tenant, group) at once (a backfill over a scheduled hour) take turns,
        # so the second one's DELETE sees, and replaces, what the first inserted.
        advisory_xact_lock(conn, f"featurepipe offline {tenant_id}\x1f{group_id}")
        cur = conn.execute(
            sql.SQL(
                "WITH old AS ("
                "  DELETE FROM feature_store.offline_rows WHERE tenant_id = %(tenant)s AND feature_group_id = %(group)s"
                "   AND event_time > %(start)s AND event_time <= %(end)s"
                "  RETURNING entity_id, event_time, features),"
                " gone AS ("
                "  INSERT INTO {replaced} (feature_name, entity_id)"
                "  SELECT DISTINCT k, o.entity_id FROM old o, jsonb_object_keys(o.features) k"
                "  WHERE k = ANY(%(features)s) ON CONFLICT DO NOTHING),"
                " kept AS ("
                "  SELECT entity_id, event_time, features - %(features)s::text[] AS features FROM old"
                "  WHERE features - %(features)s::text[] <> '{{}}'::jsonb)"
                " INSERT INTO feature_store.offline_rows (tenant_id, feature_group_id, entity_id, event_time, features,"
                "  job_id)"
                " SELECT %(tenant)s, %(group)s, entity_id, event_time,"
                "  coalesce(k.features, '{{}}'::jsonb) || coalesce(n.features, '{{}}'::jsonb), %(job)s"
                " FROM {source} n FULL JOIN kept k USING (entity_id, event_time)"
            ).format(replaced=replaced, source=source),
            {
                "tenant": tenant_id,
                "group": group_id,
                "start": window.start,
                "end": window.end,
                "features": list(features),
                "job": job_id,
            },
        )
        return cur.rowcount


def features_with_values_after(
    conn: psycopg.Connection, *, tenant_id: str, group_id: str, features: Sequence[str], after: datetime
) -> set[str]:
    """Those of `features` of which the offline store holds a value stamped after `after` (a later
    window). Usually there is no later row at all, which one probe finds (an InitPlan, run once);
    only then does each feature get a probe of its own, each stopping at its first row."""
    later = (
        "SELECT 1 FROM feature_store.offline_rows o WHERE o.tenant_id = %(tenant)s AND o.feature_group_id = %(group)s"
        " AND o.event_time > %(after)s"
    )
    rows = conn.execute(
        f"SELECT f FROM unnest(%(features)s::text[]) f"
        f" WHERE EXISTS ({later}) AND coalesce(({later} AND o.features ? f LIMIT 1) = 1, false)",
        {"tenant": tenant_id, "group": group_id, "after": after, "features": list(features)},
    ).fetchall()
    return {str(f) for (f,) in rows}


LATEST_VALUE = (
    "SELECT v.event_time, v.features -> {feature} AS value FROM feature_store.offline_rows v"
    " WHERE v.tenant_id = {tenant} AND v.feature_group_id = {group} AND v.entity_id = {entity}"
    " AND v.features ? {feature} {before} ORDER BY v.event_time DESC LIMIT 1"
)
"""The latest offline value of one feature of one entity (optionally at or before a time): for LATERAL joins."""


def latest_value(
    *,
    tenant: sql.Composable,
    group: sql.Composable,
    entity: sql.Composable,
    feature: sql.Composable,
    before: sql.Composable | None = None,
) -> sql.Composed:
    return sql.SQL(LATEST_VALUE).format(
        tenant=tenant,
        group=group,
        entity=entity,
        feature=feature,
        before=sql.SQL("AND v.event_time <= {}").format(before) if before is not None else sql.SQL(""),
    )


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
        # An index probe per row: the planner's cost of the subplans below would buy JIT compilation,
        # which takes longer (about a second) than the whole join.
        conn.execute("SET LOCAL jit = off")
        conn.execute(
            "CREATE TEMP TABLE IF NOT EXISTS _fp_entity_rows"
            " (row_no integer, entity_id text, ts timestamptz) ON COMMIT DROP"
        )
        with conn.cursor().copy("COPY _fp_entity_rows (row_no, entity_id, ts) FROM STDIN") as copy:
            for row_no, (entity_id, ts) in enumerate(entity_rows):
                copy.write_row((row_no, entity_id, ts))
        # Per group, one probe of the entity's latest row at or before the timestamp: it holds the
        # latest value of each feature it has. Only a feature missing from that row (sparse rows)
        # costs a probe of its own, for its latest value in an earlier row.
        selects = []
        joins = []
        row_alias: dict[str, sql.Identifier] = {}
        for group_id, _, _ in features:
            if group_id not in row_alias:
                alias = row_alias[group_id] = sql.Identifier(f"g{len(row_alias)}")
                joins.append(
                    sql.SQL(
                        "LEFT JOIN LATERAL (SELECT r.event_time, r.features FROM feature_store.offline_rows r"
                        " WHERE r.tenant_id = {tenant} AND r.feature_group_id = {group} AND r.entity_id = e.entity_id"
                        " AND r.event_time <= e.ts ORDER BY r.event_time DESC LIMIT 1) {alias} ON true"
                    ).format(tenant=sql.Literal(tenant_id), group=sql.Literal(group_id), alias=alias)
                )
        for group_id, feature_name, _ in features:
            latest = latest_value(
                tenant=sql.Literal(tenant_id),
                group=sql.Literal(group_id),
                entity=sql.SQL("e.entity_id"),
                feature=sql.Literal(feature_name),
                before=sql.SQL("e.ts"),
            )
            for column, stored in (("value::text", "(({a}.features -> {f})::text)"), ("event_time", "{a}.event_time")):
                selects.append(
                    sql.SQL(
                        "CASE WHEN {a}.features IS NULL THEN NULL WHEN {a}.features ? {f} THEN "
                        + stored
                        + " ELSE (SELECT v.{column} FROM ({latest}) v) END"
                    ).format(a=row_alias[group_id], f=sql.Literal(feature_name), column=sql.SQL(column), latest=latest)
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
        parsers = [PARSERS[value_type] for _, _, value_type in features]
        for record in conn.execute(query):
            values: dict[str, FeatureValue] = {}
            times: dict[str, datetime | None] = {}
            for i, (ref, parse) in enumerate(zip(refs, parsers, strict=True)):
                text = record[2 + 2 * i]
                values[ref] = None if text is None else parse(text)
                times[ref] = record[3 + 2 * i]
            # Built from checked parts: the model's validation would only copy them again.
            result.append(
                HistoricalRow.model_construct(
                    entity_id=record[0], timestamp=record[1], values=values, event_times=times
                )
            )
        return result
