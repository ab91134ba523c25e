"""Publish: make each affected entity's online value its latest valid offline value.

After a window is written, the entities it touched are: those with staged rows (valid or
quarantined) and those whose offline values of the window were replaced. Each gets its latest valid
value from the job's wide rows; an entity without one falls back to its latest offline value, or
loses its online value when it has none. The online store applies this newer-only, except that a
stored value inside the recomputed window always gives way (see online_write.lua).

PostgreSQL builds each entity's fields as JSON text, so Python only joins strings; the next batch is
fetched while two worker threads write the previous ones (a batch's keys and arguments are put
together in Python while the store runs the other batch). Their order does not matter: no two rows
write the same (entity, feature), and each write is newer-only per feature. A publish checks that
the server did not restart meanwhile and that a sample of what it wrote is there; `reconcile`
restores online values from the offline store after the online store lost data.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Collection, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from enum import Enum
from typing import Any

import psycopg
from psycopg import sql

from feature_store.definitions.models import FeatureGroup
from feature_store.errors import OnlineStoreLostDataError
from feature_store.pipeline.staging import fill_partitions, replaced_table, staging_table, wide_table
from feature_store.stores.offline import postgres as offline
from feature_store.stores.online.base import OnlineStore, Payload
from feature_store.windows import TimeWindow

WRITERS = 2
"""Batches written at once: while one writer prepares its batch, the store runs the other's."""

SAMPLE_SIZE = 50
"""Entities of the first and of the last batch checked for presence after a publish."""

# The rows a publish streams: (entity_id, event_us, fields, payload, has_value). An entity's values
# sharing one event time come as its fields text of names and value JSON texts (payload NULL, see
# `StampedValues`), for the backend to encode in Python; any other entity as its payload, built by the
# backend's SQL aggregate over rows x(feature_name, event_time, value) of the entity. has_value: it
# writes (not only removes) a value.
_PAYLOAD = "{encoded}, bool_or(x.event_time IS NOT NULL)"
_NOT_STAMPED = sql.SQL("NULL::bigint, NULL::text")
_EVENT_US = "(extract(epoch FROM {time}) * 1000000)::bigint"


@dataclass(frozen=True)
class Published:
    values: int
    """Feature values written or removed online."""

    entities: int


class Part(Enum):
    """The two parts of a job's publish, which may run apart (see `FeaturePipeline._flush`)."""

    WIDE_ROWS = "wide rows"
    """The values of the job's wide rows: they need only staging, so they may go while the offline
    write of the window is still running."""

    FALLBACKS = "fallbacks"
    """The entities whose window values were quarantined or replaced: their latest offline value, read
    after the offline write committed."""


def publish_job(
    conn: psycopg.Connection,
    online: OnlineStore,
    *,
    job_id: int,
    tenant_id: str,
    group: FeatureGroup,
    features: Sequence[str],
    window: TimeWindow,
    offline_written: bool,
    force: bool,
    batch_size: int,
    parts: Collection[Part] = (Part.WIDE_ROWS, Part.FALLBACKS),
) -> Published:
    """Publish `parts` of the job's written features (both by default) from its wide rows (see staging).

    An entity with one wide row (the usual case) is sent as that row's names and value texts, which
    the backend encodes in Python (`encode_stamped`): PostgreSQL only reads them. Entities with
    several rows, and those whose values were quarantined or replaced, get their payloads built by
    the backend's SQL aggregate (`encode_sql`). The two parts never write the same (entity, feature).
    Raises OnlineStoreLostDataError (retryable) if the store lost data meanwhile.
    """
    staging, replaced, wide = staging_table(job_id), replaced_table(job_id), wide_table(job_id)
    later, fresh = _later_and_fresh(conn, tenant_id, group, features, window, offline_written)
    write_time_us = time.time_ns() // 1000
    payload = _payload(online, write_time_us)
    queries = []
    if Part.WIDE_ROWS in parts:
        several = sql.SQL(_SEVERAL).format(
            none=_NOT_STAMPED, payload=payload, wide=wide, which=sql.SQL("w.entity_rows > 1" if not later else "true")
        )
        if not later:
            # Every written feature is fresh: a single row is its entity's latest values, as it is.
            queries.append(
                sql.SQL(
                    "SELECT w.entity_id, {event_us}, w.fields, NULL::text, true FROM {wide} w"
                    " WHERE w.entity_rows = 1 UNION ALL {several}"
                ).format(event_us=sql.SQL(_EVENT_US.format(time="w.event_time")), wide=wide, several=several)
            )
        else:
            queries.append(several)
    if Part.FALLBACKS in parts:
        fill_partitions(conn, job_id, later)  # every staged entity of those: their rows must be in staging
        affected = sql.SQL(
            "SELECT s.feature_name, s.entity_id FROM {staging} s WHERE s.feature_name = ANY(%(features)s)"
            " AND s.entity_id IS NOT NULL AND (s.rejected_rule IS NOT NULL OR s.feature_name = ANY(%(later)s))"
            " UNION SELECT r.feature_name, r.entity_id FROM {replaced} r WHERE r.feature_name = ANY(%(features)s)"
        ).format(staging=staging, replaced=replaced)
        unless = sql.SQL(
            "WHERE NOT EXISTS (SELECT 1 FROM {wide} w WHERE w.entity_id = m.entity_id AND w.features ? m.feature_name"
            " AND m.feature_name = ANY(%(fresh)s))"
        ).format(wide=wide)
        queries.append(_latest_offline(affected, unless, payload))
    params = {
        "features": list(features),
        "fresh": fresh,
        "later": later,
        "offline": offline_written,
        "tenant": tenant_id,
        "group": group.id,
    }
    if not queries:
        return Published(values=0, entities=0)
    return _stream(
        conn,
        online,
        sql.SQL(" UNION ALL ").join(queries),
        params,
        tenant_id=tenant_id,
        group=group,
        write_time_us=write_time_us,
        batch_size=batch_size,
        replaces=window,
        force=force,
    )


def restore_wide_rows(
    conn: psycopg.Connection,
    online: OnlineStore,
    *,
    job_id: int,
    tenant_id: str,
    group: FeatureGroup,
    features: Sequence[str],
    window: TimeWindow,
    force: bool,
    batch_size: int,
) -> Published:
    """Undo a publish of the job's wide rows (`Part.WIDE_ROWS`) whose offline write then failed: each
    value it may have written goes back to the latest offline value of its entity, or goes.

    Run after the failed write rolled back, so the offline store holds what it held before the job.
    `window` spans what the write replaces (the job's window, and the later ones its window features
    recomputed): the published values lie inside it and so give way (`replaces`); newer ones stay.
    """
    write_time_us = time.time_ns() // 1000
    published = sql.SQL(
        "SELECT e.key AS feature_name, w.entity_id FROM {wide} w, jsonb_object_keys(w.features) e(key)"
        " WHERE e.key = ANY(%(features)s) GROUP BY 1, 2"
    ).format(wide=wide_table(job_id))
    return _stream(
        conn,
        online,
        _latest_offline(published, sql.SQL(""), _payload(online, write_time_us)),
        {"features": list(features), "offline": True, "tenant": tenant_id, "group": group.id},
        tenant_id=tenant_id,
        group=group,
        write_time_us=write_time_us,
        batch_size=batch_size,
        replaces=window,
        force=force,
    )


_SEVERAL = (
    "SELECT x.entity_id, {none}, {payload} FROM ("
    "  SELECT DISTINCT ON (w.entity_id, e.key) w.entity_id, e.key AS feature_name, w.event_time, e.value"
    "  FROM {wide} w, jsonb_each(w.features) e WHERE e.key = ANY(%(fresh)s) AND {which}"
    "  ORDER BY w.entity_id, e.key, w.event_time DESC) x GROUP BY x.entity_id"
)
"""Each entity's latest value of each fresh feature in the wide rows `which` says, as a payload."""


def _latest_offline(pairs: sql.Composable, unless: sql.Composable, payload: sql.Composable) -> sql.Composed:
    """Each (feature_name, entity_id) of the `pairs` query (`unless` filters them, as `m`) with its latest
    offline value (none when `%(offline)s` is false), as a payload per entity: a missing value removes."""
    lookup = offline.latest_value(
        tenant=sql.SQL("%(tenant)s"),
        group=sql.SQL("%(group)s"),
        entity=sql.SQL("m.entity_id"),
        feature=sql.SQL("m.feature_name"),
    )
    return sql.SQL(
        "SELECT x.entity_id, {none}, {payload} FROM ("
        "  SELECT m.entity_id, m.feature_name, f.event_time, f.value FROM ({pairs}) m"
        "  LEFT JOIN LATERAL ({lookup}) f ON %(offline)s {unless}) x"
        " GROUP BY x.entity_id"
    ).format(none=_NOT_STAMPED, payload=payload, pairs=pairs, lookup=lookup, unless=unless)


def _payload(online: OnlineStore, write_time_us: int) -> sql.Composed:
    return sql.SQL(_PAYLOAD).format(encoded=online.encode_sql(write_time_us=write_time_us))


def _later_and_fresh(
    conn: psycopg.Connection,
    tenant_id: str,
    group: FeatureGroup,
    features: Sequence[str],
    window: TimeWindow,
    offline_written: bool,
) -> tuple[list[str], list[str]]:
    """`features` split into those with offline values after the window (a backfill: their latest value
    is not this job's) and the others."""
    after = (
        offline.features_with_values_after(
            conn, tenant_id=tenant_id, group_id=group.id, features=features, after=window.end
        )
        if offline_written
        else set()
    )
    return [f for f in features if f in after], [f for f in features if f not in after]


def reconcile_group(
    conn: psycopg.Connection,
    online: OnlineStore,
    *,
    tenant_id: str,
    group: FeatureGroup,
    features: Sequence[str],
    batch_size: int,
) -> Published:
    """Write each entity's latest valid offline value of the group's features online, newer-only.

    Values whose last write is older than the group's TTL stay out: online they would have expired.
    """
    write_time_us = time.time_ns() // 1000
    query = sql.SQL(
        "SELECT x.entity_id, {none}, {payload} FROM ("
        "  SELECT DISTINCT ON (r.entity_id, e.key) r.entity_id, e.key AS feature_name, r.event_time, e.value,"
        "   r.created_at"
        "  FROM feature_store.offline_rows r, jsonb_each(r.features) e"
        "  WHERE r.tenant_id = %(tenant)s AND r.feature_group_id = %(group)s AND e.key = ANY(%(features)s)"
        "  ORDER BY r.entity_id, e.key, r.event_time DESC) x"
        " WHERE %(ttl)s::int IS NULL OR x.created_at > now() - make_interval(secs => %(ttl)s::int)"
        " GROUP BY x.entity_id"
    ).format(none=_NOT_STAMPED, payload=_payload(online, write_time_us))
    params = {"tenant": tenant_id, "group": group.id, "features": list(features), "ttl": group.ttl_seconds}

    return _stream(
        conn,
        online,
        query,
        params,
        tenant_id=tenant_id,
        group=group,
        write_time_us=write_time_us,
        batch_size=batch_size,
    )


def _stream(
    conn: psycopg.Connection,
    online: OnlineStore,
    query: sql.Composed,
    params: dict[str, Any],
    *,
    tenant_id: str,
    group: FeatureGroup,
    write_time_us: int,
    batch_size: int,
    replaces: TimeWindow | None = None,
    force: bool = False,
) -> Published:
    """Stream the query's rows (see `_PAYLOAD`) to the online store as (entity, payload) batches, then
    check the store kept them. The next batch is fetched and encoded while WRITERS threads write the
    last ones.

    `replaces` and `force` are the online store's (see `OnlineStore.write_encoded`)."""
    group_id = group.id

    def write(rows: list[tuple[str, Payload]]) -> int:
        return online.write_encoded(
            tenant_id=tenant_id,
            group_id=group_id,
            rows=rows,
            ttl_seconds=group.ttl_seconds,
            write_time_us=write_time_us,
            replaces=replaces,
            force=force,
        )

    instance = online.instance_id()
    written = entities = 0
    samples: list[str] = []
    pending: deque[Future[int]] = deque()
    last: list[tuple[Any, ...]] = []
    with (
        ThreadPoolExecutor(max_workers=WRITERS, thread_name_prefix="online-publish") as writer,
        conn.transaction(),
        conn.cursor(name="featurepipe_publish") as cur,
    ):
        conn.execute("SET LOCAL work_mem = '64MB'")  # sort in memory up to ~1M values
        cur.execute(query, params)
        while batch := cur.fetchmany(batch_size):
            if not samples:
                samples = [r[0] for r in batch if r[4]][:SAMPLE_SIZE]
            last = batch
            entities += len(batch)
            rows = _payloads(online, batch, write_time_us)
            if len(pending) == WRITERS:
                written += pending.popleft().result()
            pending.append(writer.submit(write, rows))
        while pending:
            written += pending.popleft().result()
    samples += [r[0] for r in last if r[4]][-SAMPLE_SIZE:]
    _check_kept(online, tenant_id, group_id, instance, samples)
    return Published(values=written, entities=entities)


def _payloads(online: OnlineStore, batch: list[tuple[Any, ...]], write_time_us: int) -> list[tuple[str, Payload]]:
    """(entity, payload) of each streamed row, in order: those without a payload are encoded here."""
    stamped = [(r[0], r[1], r[2]) for r in batch if r[3] is None]
    if not stamped:
        return [(r[0], r[3]) for r in batch]
    encoded = iter(online.encode_stamped(stamped, write_time_us=write_time_us))
    return [(r[0], r[3]) if r[3] is not None else next(encoded) for r in batch]


def _check_kept(online: OnlineStore, tenant_id: str, group_id: str, instance: str, samples: list[str]) -> None:
    label = f"{tenant_id}/{group_id}"
    if online.instance_id() != instance:
        raise OnlineStoreLostDataError(
            f"the online store restarted while {label} was being published (server id changed), so values"
            " written before the restart may be lost; publish again"
        )
    unique = sorted(set(samples))
    present = online.count_present(tenant_id=tenant_id, group_id=group_id, entity_ids=unique)
    if present != len(unique):
        raise OnlineStoreLostDataError(
            f"{len(unique) - present} of {len(unique)} sampled entities of {label} are missing online right"
            " after being published (flushed or evicted?); publish again"
        )
