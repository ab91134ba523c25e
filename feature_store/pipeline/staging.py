"""Staging: unlogged tables per in-flight job holding its rows until they reach the stores.

- `job_N`: one row per staged value (feature, entity, event time), as transforms insert them and
  validation marks them, partitioned by feature (each stage of a feature scans its own rows only);
  a number a double can hold is also staged as one (`number`), which validation and the statistics
  read instead of converting every jsonb value (NULL: not staged so, they convert it; never set
  for a value that is not a number);
- `job_N_wide`: the job's valid values, one row per (entity, event time) with all its features,
  built once when the job is flushed; the offline write and the online publish both read it (the
  publish takes an entity with one row straight from its `fields`). When they are the group rows
  as they are, one per entity, it is a view of them instead (nothing to group, sort or copy);
- `job_N_replaced`: the (feature, entity) pairs whose offline values of the window a flush replaced,
  which the publish re-checks (their online value may have to fall back, or go);
- `job_N_source`: the rows of the group's own SQL (see `transform`), one per SQL row with each of
  its features' staged value and number (a float64 that its number holds exactly is staged as the
  number only, see `group_value`: the COPY parses no JSON for it). A feature's partition holds its
  column of them only once a stage must mark or group its rows (`fill_partitions`): until then its
  staged rows are read where they lie (`staged_rows`), so a feature none of whose rows breaks a rule
  is never copied.

Tables per job (instead of shared ones) keep every scan to the job's own rows without an index to
maintain, and ending a job is a cheap `DROP TABLE`. The pipeline's stages own their lifetime: the
first transform creates them, finishing or failing the job drops them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import psycopg
from psycopg import sql

from feature_store.db import advisory_xact_lock
from feature_store.sources.expectations import EXPECTATION_RULE
from feature_store.stores.online.base import FIELD_SEPARATOR, VALUE_MARK

STAGING_SCHEMA = "feature_store_staging"

PRESENT = "(number IS NOT NULL OR (value IS NOT NULL AND jsonb_typeof(value) <> 'null'))"
"""SQL: the staged row's value is not null (a staged double is a number: its jsonb need not be read)."""


def staging_table(job_id: int) -> sql.Composed:
    return sql.SQL("{}.{}").format(sql.Identifier(STAGING_SCHEMA), sql.Identifier(f"job_{int(job_id)}"))


def replaced_table(job_id: int) -> sql.Composed:
    """(feature, entity) pairs whose offline rows in the window were replaced: the publish re-checks them."""
    return sql.SQL("{}.{}").format(sql.Identifier(STAGING_SCHEMA), sql.Identifier(f"job_{int(job_id)}_replaced"))


def wide_table(job_id: int) -> sql.Composed:
    """The job's valid values, one row per (entity, event time): `(entity_id, event_time, features jsonb,
    fields text, entity_rows)`: the features as one object (the offline row), as one text of names and
    JSON texts (the online payload, see `online.base.StampedValues`), and how many rows the entity has."""
    return sql.SQL("{}.{}").format(sql.Identifier(STAGING_SCHEMA), sql.Identifier(f"job_{int(job_id)}_wide"))


def group_source_table(job_id: int) -> sql.Composed:
    """The job's rows of its group's SQL, staged once for every feature reading a column of it."""
    return sql.SQL("{}.{}").format(sql.Identifier(STAGING_SCHEMA), sql.Identifier(f"job_{int(job_id)}_source"))


UNIQUE_KEYS = "entity_id, event_time"
"""Group rows none of whose (entity_id, event_time) occurs twice (see `mark_unique_keys`)."""

UNIQUE_ENTITIES = "entity_id"
"""Group rows none of whose entity_id occurs twice (so neither does any key)."""


@dataclass(frozen=True)
class GroupRows:
    """What staging found out once about a job's group rows, for every feature of the group: how many
    there are, and which key of theirs is unique (`UNIQUE_ENTITIES`, `UNIQUE_KEYS`, or None)."""

    rows: int
    unique: str | None


def mark_unique_keys(conn: psycopg.Connection, job_id: int) -> GroupRows:
    """Find out once, for all the group's features, how many group rows the job has and whether any
    (entity_id, event_time) of theirs occurs twice, and keep what was found in the table's comment
    (`group_rows`). The first search also finds out whether even each entity has one row (the usual
    case: one row per entity and window).

    Every feature's staged rows are the group rows, so none of them can then hold a duplicate, and
    its validation skips the search (one hash aggregate per feature, the largest part of validating
    at a million rows); their number spares each feature's stages a count of them.

    A key is unique when its distinct 64-bit hashes are as many as the rows: equal keys always hash
    equal, and a collision (or a second NULL key, hashed as 0; such rows are quarantined by other
    rules first) only yields a false "not unique", which costs the features their own search. A
    distinct count sorts the integers: at a million rows ~0.25 s, a third of grouping by them (a
    hash aggregate of a million groups) and of grouping by the ids themselves.
    """
    source = group_source_table(job_id)
    entity = "coalesce(hashtextextended(entity_id, 0), 0)"
    key = f"hashint8extended(coalesce((extract(epoch FROM event_time) * 1000000)::int8, 0), {entity})"
    found = GroupRows(rows=0, unique=None)
    for hashed, unique in ((entity, UNIQUE_ENTITIES), (key, UNIQUE_KEYS)):
        row = conn.execute(
            sql.SQL("SELECT count(DISTINCT {}) = count(*), count(*) FROM {}").format(sql.SQL(hashed), source)
        ).fetchone()
        found = GroupRows(rows=int(row[1]) if row else 0, unique=unique if row and row[0] else None)
        if found.unique is not None:
            break
    comment = json.dumps({"rows": found.rows, "unique": found.unique})
    conn.execute(sql.SQL("COMMENT ON TABLE {} IS {}").format(source, sql.Literal(comment)))
    return found


def group_rows(conn: psycopg.Connection, job_id: int) -> GroupRows | None:
    """What `mark_unique_keys` found about the job's group rows (None: the job has none)."""
    row = conn.execute(
        "SELECT obj_description(to_regclass(%s), 'pg_class')", (group_source_table(job_id).as_string(conn),)
    ).fetchone()
    try:
        found = json.loads(row[0]) if row and row[0] is not None else None
    except ValueError:
        return None  # staged by an earlier version, which kept only the unique key in the comment
    return GroupRows(rows=int(found["rows"]), unique=found["unique"]) if found is not None else None


def group_row_count(conn: psycopg.Connection, job_id: int) -> int:
    """How many group rows the job staged, as counted when they were (else counted now)."""
    found = group_rows(conn, job_id)
    if found is not None:
        return found.rows
    row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(group_source_table(job_id))).fetchone()
    return int(row[0]) if row else 0


def group_rows_have_unique_keys(conn: psycopg.Connection, job_id: int) -> bool:
    """Whether `mark_unique_keys` found the job's group rows free of duplicate keys."""
    found = group_rows(conn, job_id)
    return found is not None and found.unique is not None


IN_GROUP_ROWS = "staged rows in the group rows"
"""Comment of a feature's (empty) partition whose staged rows are its column of the job's group rows."""

STAGED_COLUMNS = sql.SQL("feature_name, entity_id, event_time, value, window_start, window_end, number")
"""The columns a stage writes of a staged row (validation marks the others)."""


def leave_in_group_rows(conn: psycopg.Connection, job_id: int, feature: str) -> None:
    """Say that the feature's staged rows are its column of the job's group rows (its transform's
    outcome): its partition stays empty until `fill_partitions` copies them in."""
    partition = partition_table(job_id, feature)
    conn.execute(sql.SQL("COMMENT ON TABLE {} IS {}").format(partition, sql.Literal(IN_GROUP_ROWS)))


def in_group_rows(conn: psycopg.Connection, job_id: int, features: list[str]) -> list[str]:
    """Those of `features` whose staged rows are still only in the group rows (see `leave_in_group_rows`)."""
    names = [partition_table(job_id, f).as_string(conn) for f in features]
    rows = conn.execute(
        "SELECT f FROM unnest(%s::text[], %s::text[]) AS p(f, t)"
        " WHERE obj_description(to_regclass(p.t), 'pg_class') = %s",
        (features, names, IN_GROUP_ROWS),
    ).fetchall()
    return [str(r[0]) for r in rows]


def staged_rows(conn: psycopg.Connection, job_id: int, feature: str) -> sql.Composable:
    """The feature's staged rows, as a relation with a partition's columns: its partition, or its column
    of the group rows while they are only there."""
    if not in_group_rows(conn, job_id, [feature]):
        return partition_table(job_id, feature)
    return group_column_rows(job_id, feature)


def group_column_rows(job_id: int, feature: str) -> sql.Composed:
    """The feature's column of the job's group rows as staged rows (a partition's columns, none marked)."""
    number = group_source_columns(feature)[1]
    return sql.SQL(
        "(SELECT {name}::text AS feature_name, entity_id, event_time, {value} AS value, window_start, window_end,"
        " {number} AS number, NULL::text AS rejected_rule, NULL::text AS rejected_reason FROM {source}) AS staged"
    ).format(
        name=sql.Literal(feature),
        value=group_value(feature),
        number=sql.Identifier(number),
        source=group_source_table(job_id),
    )


def fill_partitions(conn: psycopg.Connection, job_id: int, features: list[str]) -> None:
    """Copy into its partition the group rows' column of each of `features` whose staged rows are still
    only there, for a stage that marks or groups staged rows; safe when stages of the job call it at once."""
    for feature in in_group_rows(conn, job_id, features):
        partition = partition_table(job_id, feature)
        number = group_source_columns(feature)[1]
        with conn.transaction():
            advisory_xact_lock(conn, f"featurepipe partition {int(job_id)}\x1f{feature}")
            if not in_group_rows(conn, job_id, [feature]):
                continue  # another stage copied them meanwhile
            conn.execute(
                sql.SQL(
                    "INSERT INTO {} ({}) SELECT {}, entity_id, event_time, {}, window_start, window_end, {} FROM {}"
                ).format(
                    partition,
                    STAGED_COLUMNS,
                    sql.Literal(feature),
                    group_value(feature),
                    sql.Identifier(number),
                    group_source_table(job_id),
                )
            )
            conn.execute(sql.SQL("COMMENT ON TABLE {} IS NULL").format(partition))
            analyze_partition(conn, partition)


def analyze_partition(conn: psycopg.Connection, partition: sql.Composed) -> None:
    """Fresh statistics of a partition that was just filled, for the planner of the stages that read it.

    They let it pick hash joins and aggregates; of the columns it groups, joins and filters by only (the
    values' jsonb statistics cost twice as much), from a sample of 3 000 rows (the default 30 000 took 7x
    as long for the same choices)."""
    with conn.transaction():
        conn.execute("SET LOCAL default_statistics_target = 10")
        conn.execute(sql.SQL("ANALYZE {} (feature_name, entity_id, event_time, rejected_rule)").format(partition))


def group_source_columns(feature: str) -> tuple[str, str]:
    """The columns of `group_source_table` holding a feature's staged value and number (read the
    value through `group_value`)."""
    digest = _digest(feature)
    return f"value_{digest}", f"number_{digest}"


def group_value(feature: str) -> sql.Composed:
    """A feature's staged value (jsonb) in the group rows: a float64 that its number holds exactly is
    staged as the number only (see `transform._staged_value`), its jsonb is to_jsonb of it, built
    only where a stage reads it (never where the number serves, see PRESENT)."""
    value, number = group_source_columns(feature)
    return sql.SQL("coalesce({}, to_jsonb({}))").format(sql.Identifier(value), sql.Identifier(number))


def has_group_columns(conn: psycopg.Connection, job_id: int, features: list[str]) -> bool:
    """Whether the job's group rows hold the columns of every one of `features` (staged for them)."""
    columns = [c for f in features for c in group_source_columns(f)]
    row = conn.execute(
        "SELECT count(*) = cardinality(%(columns)s::text[]) FROM pg_attribute"
        " WHERE attrelid = %(source)s::regclass AND attname = ANY(%(columns)s) AND NOT attisdropped",
        {"source": group_source_table(job_id).as_string(conn), "columns": columns},
    ).fetchone()
    return bool(row and row[0])


def build_wide(
    conn: psycopg.Connection,
    job_id: int,
    features: list[str],
    *,
    connect: Callable[[], psycopg.Connection] | None = None,
    ways: int = 1,
    group_columns: bool = False,
) -> None:
    """(Re)build the job's wide rows from the valid staged values of `features`.

    With `ways` > 1 and a way to `connect`, that many connections each build the rows of a share of
    the entities at once (one aggregate uses one core, and nothing else runs while a job is flushed).

    `group_columns`: the features are all columns of the group's SQL (see `group_source_table`). If
    none of their staged rows was quarantined, their staged rows are exactly the group rows, one per
    (entity, event time) (duplicates would have been), so each wide row is built from one group row
    as it is, without grouping the staged values (the sort and aggregate of five times the rows).
    """
    wide = wide_table(job_id)
    if group_columns and _group_rows_are_the_valid_rows(conn, job_id, features):
        found = group_rows(conn, job_id)
        if found is not None and found.unique == UNIQUE_ENTITIES:
            # One row per entity: each wide row is its group row as it is, read where it lies.
            with conn.transaction():
                drop_wide(conn, job_id)
                conn.execute(sql.SQL("CREATE VIEW {} AS {}").format(wide, _view_of_group_rows(job_id, features)))
            return
        select = _from_group_rows(job_id, features)
    else:
        fill_partitions(conn, job_id, features)
        select = _from_staged_values(job_id)
    params = {"features": features}
    if ways <= 1 or connect is None:
        with conn.transaction():
            conn.execute("SET LOCAL work_mem = '64MB'")  # sort and aggregate ~1M staged values in memory
            drop_wide(conn, job_id)
            conn.execute(sql.SQL("CREATE UNLOGGED TABLE {} AS {}").format(wide, select(sql.SQL(""))), params)
        return
    with conn.transaction():
        drop_wide(conn, job_id)
        conn.execute(sql.SQL("CREATE UNLOGGED TABLE {} AS {} WITH NO DATA").format(wide, select(sql.SQL(""))), params)
    share = sql.SQL("AND abs(hashtext(entity_id) %% {ways}) = %(share)s").format(ways=sql.Literal(ways))
    insert = sql.SQL("INSERT INTO {} {}").format(wide, select(share))

    def build(part: int) -> None:
        with connect() as apart, apart.transaction():
            apart.execute("SET LOCAL work_mem = '64MB'")
            apart.execute(insert, {**params, "share": part})

    with ThreadPoolExecutor(max_workers=ways, thread_name_prefix="wide-rows") as pool:
        list(pool.map(build, range(ways)))


_FIELDS = {"fields_value": sql.Literal(FIELD_SEPARATOR + VALUE_MARK), "separator": sql.Literal(FIELD_SEPARATOR)}

# One sort serves the grouping and the count of each entity's rows (a window over the groups); in byte
# order ("C"), a third faster than the database's collation and the same groups (the table's column
# keeps the default collation).
_WIDE_FROM_STAGED = sql.SQL(
    'SELECT (entity_id COLLATE "C") COLLATE "default" AS entity_id, event_time,'
    "  jsonb_object_agg(feature_name, value) AS features,"
    "  string_agg(feature_name || {fields_value} || coalesce(value::text, 'null'), {separator}) AS fields,"
    '  count(*) OVER (PARTITION BY entity_id COLLATE "C") AS entity_rows'
    " FROM {staging} WHERE feature_name = ANY(%(features)s) AND rejected_rule IS NULL {share}"
    ' GROUP BY entity_id COLLATE "C", event_time'
)

_WIDE_FROM_GROUP_ROWS = sql.SQL(
    'SELECT (entity_id COLLATE "C") COLLATE "default" AS entity_id, event_time,'
    "  {features} AS features, {fields} AS fields,"
    '  count(*) OVER (PARTITION BY entity_id COLLATE "C") AS entity_rows'
    " FROM {source} WHERE true {share}"
)

_WIDE_FROM_UNIQUE_GROUP_ROWS = sql.SQL(
    "SELECT entity_id, event_time, {features} AS features, {fields} AS fields, 1::bigint AS entity_rows FROM {source}"
)


def _from_staged_values(job_id: int) -> Callable[[sql.Composable], sql.Composed]:
    staging = staging_table(job_id)
    return lambda share: _WIDE_FROM_STAGED.format(staging=staging, share=share, **_FIELDS)


def _from_group_rows(job_id: int, features: list[str]) -> Callable[[sql.Composable], sql.Composed]:
    objects, fields = _group_row_values(features)
    source = group_source_table(job_id)
    return lambda share: _WIDE_FROM_GROUP_ROWS.format(features=objects, fields=fields, source=source, share=share)


def _view_of_group_rows(job_id: int, features: list[str]) -> sql.Composed:
    objects, fields = _group_row_values(features)
    return _WIDE_FROM_UNIQUE_GROUP_ROWS.format(features=objects, fields=fields, source=group_source_table(job_id))


def _group_row_values(features: list[str]) -> tuple[sql.Composable, sql.Composable]:
    """The wide row's `features` object and `fields` text, of the group row's value columns.

    A double staged as its number only (see `group_value`) goes into both as a double: the object
    takes it as jsonb_build_object does (to_jsonb of it), and the text is the double's own where that
    is the jsonb's text too (no exponent), so neither converts it to jsonb and back."""
    columns = [tuple(map(sql.Identifier, group_source_columns(f))) for f in features]
    # jsonb_build_object takes up to 50 pairs (100 arguments): one per 50 features, concatenated; in each,
    # the doubles as they are when every value of the chunk is one (no staged jsonb), the usual row.
    chunks = []
    for i in range(0, len(features), 50):
        names = [sql.Literal(f) for f in features[i : i + 50]]
        part = columns[i : i + 50]
        doubles = sql.SQL(", ").join(sql.SQL("{}, {}").format(f, n) for f, (_, n) in zip(names, part, strict=True))
        values = sql.SQL(", ").join(
            sql.SQL("{}, {}").format(sql.Literal(f), group_value(f)) for f in features[i : i + 50]
        )
        chunks.append(
            sql.SQL("CASE WHEN {none} THEN jsonb_build_object({doubles}) ELSE jsonb_build_object({values}) END").format(
                none=sql.SQL(" AND ").join(sql.SQL("{} IS NULL").format(v) for v, _ in part),
                doubles=doubles,
                values=values,
            )
        )
    objects = sql.SQL(" || ").join(chunks)
    # The fields text as the staged values' string_agg builds it: name, mark, JSON text, separator, ...
    texts = [
        sql.SQL("{} || {fields_value} || {}").format(sql.Literal(f), sql.SQL(_JSON_TEXT).format(v=v, n=n), **_FIELDS)
        for f, (v, n) in zip(features, columns, strict=True)
    ]
    between = sql.SQL(" || {separator} || ").format(**_FIELDS)
    fields: sql.Composable = texts[0]
    for text in texts[1:]:
        fields = fields + between + text
    return objects, fields


# The JSON text of a group row's value (`v` jsonb or NULL, `n` its number): a double between 1e-4 and
# 1e15 (or 0) prints as its jsonb prints (no exponent), any other as its jsonb.
_JSON_TEXT = (
    "CASE WHEN {v} IS NOT NULL THEN {v}::text WHEN abs({n}) >= 1e-4 AND abs({n}) < 1e15 OR {n} = 0 THEN {n}::text"
    " ELSE coalesce(to_jsonb({n})::text, 'null') END"
)


def _group_rows_are_the_valid_rows(conn: psycopg.Connection, job_id: int, features: list[str]) -> bool:
    """Whether the job's group rows hold a column of every one of `features` and validation
    quarantined none of their staged rows: then each feature's valid staged rows are the group rows.

    Its transform left them in the group rows, or copied all of them into its emptied partition in one
    statement (`fill_partitions`), and validation records every row it marks in `quarantined_rows` in
    the transaction that marks it, so the job's quarantined rows (an index probe) tell what a scan of
    its staged rows would."""
    source = group_source_table(job_id)
    if not table_exists(conn, source) or not has_group_columns(conn, job_id, features):
        return False
    row = conn.execute(
        "SELECT NOT EXISTS (SELECT FROM feature_store.quarantined_rows WHERE job_id = %s AND feature_name = ANY(%s)"
        " AND rule <> %s)",
        (job_id, features, EXPECTATION_RULE),
    ).fetchone()
    return bool(row and row[0])


def create_staging(conn: psycopg.Connection, job_id: int) -> None:
    """Create the job's staging tables unless they exist, with a partition for each of its features;
    safe when parallel tasks of the job all call it.

    The partitions are made up front because attaching one locks the whole table: made by each
    feature's transform, they made the features of a job wait for each other's stages. Not so for a
    rerun of an ended job (a feature cleared in the orchestrator): there each transform makes its own,
    and only the features with a partition are flushed (`partitioned`), so the features not run again
    keep the values the job wrote before.
    """
    with conn.transaction():
        # Concurrent DDL on one table fails with "tuple concurrently updated": take turns.
        advisory_xact_lock(conn, f"featurepipe staging {int(job_id)}")
        if staging_exists(conn, job_id):
            upgrade_staging(conn, job_id)
        else:
            _create(conn, job_id)
            features = conn.execute(
                "SELECT f.feature_name FROM feature_store.materialization_job_features f"
                " JOIN feature_store.materialization_jobs j ON j.id = f.job_id"
                " WHERE f.job_id = %s AND j.status IN ('pending', 'running') ORDER BY f.feature_name",
                (job_id,),
            ).fetchall()
            for (feature,) in features:
                _create_partition(conn, job_id, feature)


def partitioned(conn: psycopg.Connection, job_id: int, features: list[str]) -> list[str]:
    """Those of `features` that have a staging partition (were staged since the staging was made)."""
    names = [partition_table(job_id, f).as_string(conn) for f in features]
    rows = conn.execute(
        "SELECT f FROM unnest(%s::text[], %s::text[]) AS p(f, t) WHERE to_regclass(p.t) IS NOT NULL",
        (features, names),
    ).fetchall()
    return [str(r[0]) for r in rows]


def _create(conn: psycopg.Connection, job_id: int) -> None:
    table = staging_table(job_id)
    conn.execute(
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} ("
            " feature_name text NOT NULL, entity_id text, event_time timestamptz, value jsonb,"
            " window_start timestamptz NOT NULL, window_end timestamptz NOT NULL,"
            " rejected_rule text, rejected_reason text, number float8) PARTITION BY LIST (feature_name)"
        ).format(table)
    )
    conn.execute(
        sql.SQL(
            "CREATE UNLOGGED TABLE IF NOT EXISTS {}"
            " (feature_name text, entity_id text, PRIMARY KEY (feature_name, entity_id))"
        ).format(replaced_table(job_id))
    )


def upgrade_staging(conn: psycopg.Connection, job_id: int) -> None:
    """Give staging made by an earlier version (a job in flight across an upgrade) today's columns;
    every stage that reads staging calls it (a catalog lookup, unless a column is missing)."""
    missing = conn.execute(
        "SELECT NOT EXISTS (SELECT FROM pg_attribute WHERE attrelid = %s::regclass AND attname = 'number'"
        " AND NOT attisdropped)",
        (staging_table(job_id).as_string(conn),),
    ).fetchone()
    if missing and missing[0]:
        with conn.transaction():
            advisory_xact_lock(conn, f"featurepipe staging {int(job_id)}")
            conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS number float8").format(staging_table(job_id)))


def partition_table(job_id: int, feature: str) -> sql.Composed:
    """The staging partition holding one feature's rows (named by a digest: feature names may be long)."""
    return sql.SQL("{}.{}").format(
        sql.Identifier(STAGING_SCHEMA), sql.Identifier(f"job_{int(job_id)}_{_digest(feature)}")
    )


def _digest(feature: str) -> str:
    """A short name for a feature in table and column names (feature names may be long)."""
    return hashlib.md5(feature.encode(), usedforsecurity=False).hexdigest()[:12]


def empty_partition(conn: psycopg.Connection, job_id: int, feature: str) -> sql.Composed:
    """The feature's staging partition, emptied for a (re)run of its transform (created if missing)."""
    partition = partition_table(job_id, feature)
    exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (partition.as_string(conn),)).fetchone()
    if exists and exists[0]:
        # Only a rerun finds rows: an empty partition is left alone (TRUNCATE locks it exclusively).
        if conn.execute(sql.SQL("SELECT EXISTS (SELECT FROM {})").format(partition)).fetchone() == (True,):
            conn.execute(sql.SQL("TRUNCATE {}").format(partition))
        return partition
    with conn.transaction():
        advisory_xact_lock(conn, f"featurepipe staging {int(job_id)}")
        _create_partition(conn, job_id, feature)
    return partition


def _create_partition(conn: psycopg.Connection, job_id: int, feature: str) -> None:
    conn.execute(
        sql.SQL("CREATE UNLOGGED TABLE IF NOT EXISTS {} PARTITION OF {} FOR VALUES IN ({})").format(
            partition_table(job_id, feature), staging_table(job_id), sql.Literal(feature)
        )
    )


def drop_staging(conn: psycopg.Connection, job_id: int) -> None:
    drop_wide(conn, job_id)
    conn.execute(
        sql.SQL("DROP TABLE IF EXISTS {}, {}, {}").format(
            staging_table(job_id), replaced_table(job_id), group_source_table(job_id)
        )
    )


def drop_wide(conn: psycopg.Connection, job_id: int) -> None:
    """Drop the job's wide rows, a table or a view of the group rows (see `build_wide`)."""
    wide = wide_table(job_id)
    row = conn.execute("SELECT relkind FROM pg_class WHERE oid = to_regclass(%s)", (wide.as_string(conn),)).fetchone()
    if row is not None:
        kind = "VIEW" if row[0] == "v" else "TABLE"
        conn.execute(sql.SQL("DROP {} IF EXISTS {}").format(sql.SQL(kind), wide))


def staging_exists(conn: psycopg.Connection, job_id: int) -> bool:
    return table_exists(conn, staging_table(job_id))


def table_exists(conn: psycopg.Connection, table: sql.Composed) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table.as_string(conn),)).fetchone()
    return bool(row and row[0])
