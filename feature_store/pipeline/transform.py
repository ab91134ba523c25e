"""Transform: run a feature's SQL server-side, for one tenant and window, into the job's staging table.

The SQL runs in the sandbox (see `sandbox`): on a connection of its own whose session user may read
the tenant-isolated source tables only, scoped to one tenant in a way the SQL cannot change, under a
statement timeout, with `tenant_id` / `start_time` / `end_time` always bound, never interpolated.

The sandbox keeps nothing, not even staging: its transaction is READ ONLY and always rolled back,
and its rows stream (binary COPY, block by block) into staging over the feature store's own
connection. A transaction that commits could leave something behind for the next tenant's run of
the same SQL to read: a large object, which any role may create, even in a READ ONLY transaction.

A group's own SQL (`FeatureGroup.transformation_sql`, a column per feature) runs once per job: the
first of its features to transform stages the SQL's rows whole (`job_N_source`), and every feature
takes its column from there inside PostgreSQL, so one relay of wide rows replaces one per feature.
Its column stays there (`staging.staged_rows`) unless validation finds rows to mark.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import psycopg
from psycopg import sql
from psycopg.abc import Buffer

from feature_store.config import Settings
from feature_store.db import advisory_xact_lock
from feature_store.definitions.models import AggregationFunction, FeatureDefinition, FeatureGroup, ValueType
from feature_store.errors import FeatureStoreError
from feature_store.pipeline import functions, tiles
from feature_store.pipeline.sandbox import SandboxSession, sandbox_session
from feature_store.pipeline.staging import (
    STAGED_COLUMNS,
    analyze_partition,
    create_staging,
    empty_partition,
    group_row_count,
    group_source_columns,
    group_source_table,
    has_group_columns,
    leave_in_group_rows,
    mark_unique_keys,
    table_exists,
)
from feature_store.windows import TimeWindow

PARAMETERS = ("tenant_id", "start_time", "end_time")
"""The only placeholders a transformation may use: %(tenant_id)s, %(start_time)s, %(end_time)s."""

REQUIRED_COLUMNS = ("entity_id", "value")
OPTIONAL_COLUMNS = ("event_time",)

# Result types (PostgreSQL type names) a feature's `value` may have, per declared value type.
_BINARY_INTEGER_TYPES = {"int2", "int4", "int8"}
_INTEGER_TYPES = _BINARY_INTEGER_TYPES | {"numeric"}
_ACCEPTED_VALUE_TYPES: dict[ValueType, set[str] | None] = {
    ValueType.INT64: _INTEGER_TYPES,
    ValueType.FLOAT64: _INTEGER_TYPES | {"float4", "float8"},
    ValueType.BOOL: {"bool"},
    ValueType.STRING: None,  # anything has a text form
}
_EVENT_TIME_TYPES = {"timestamptz", "timestamp", "date"}

# The JSON text of the staged value, per declared type; staging parses it into jsonb (see `_JSONB_WIRE`).
# A float64 value a double can hold is staged as one, in the text a double has (what to_jsonb of it
# would parse); anything else (1e400, NaN, Infinity) as it is, never failing the cast, for validate's
# value_type rule to quarantine. (Tiny numerics below the smallest normal double are also kept as they
# are: they are in range and round towards zero when read.) The comparisons are against numeric
# literals, so a float input is compared as a double and a numeric as a numeric. An integer's or a
# boolean's text is its JSON; any other type's comes from to_jsonb, as JSON has it.
# Each is a template of the value's column, `{v}`.
_JSON_TEXTS = {
    ValueType.FLOAT64: (
        "CASE WHEN abs({v}) BETWEEN 2.2250738585072014e-308 AND 1.7976931348623157e308 OR {v} = 0"
        " THEN {v}::float8::text ELSE to_jsonb({v})::text END"
    ),
    ValueType.BOOL: "{v}::text",  # true, false
    ValueType.STRING: "to_json({v}::text)::text",
}
_INTEGER_TEXT = "{v}::text"
_ANY_TEXT = "to_jsonb({v})::text"

_JSONB_WIRE = "chr(1) || "
"""Prefix of the staged value's JSON text in the binary COPY: jsonb's binary form is a version byte (1)
and its JSON text, so the staging side parses the text once, as it would parse a built jsonb's text,
and the sandbox builds no jsonb just to send it (to_jsonb of a double cost 2.5x its text, measured)."""


# The staged `number` of a numeric feature: the value as the statistics take it (a double; 0 for one
# too small for a double, NULL beyond a double's range, where the value_type rule quarantines it).
_NUMBER_EXPRESSIONS = {
    ValueType.INT64: "CASE WHEN {v} BETWEEN -1e19 AND 1e19 THEN {v}::float8 END",
    ValueType.FLOAT64: (
        "CASE WHEN abs({v}) < 1e-307 THEN 0 WHEN abs({v}) <= 1.7976931348623157e308 THEN {v}::float8 END"
    ),
}


class SqlShapeError(FeatureStoreError, ValueError):
    """The SQL is not a single SELECT returning entity_id, value[, event_time] of the right types."""


@dataclass(frozen=True)
class SqlShape:
    has_event_time: bool
    value_type: str | None
    """The PostgreSQL type of the SQL's `value` (None for a function feature: its function makes it)."""
    relations: tuple[str, ...]
    """The tables (`schema.table`) the SQL reads, views resolved to their tables."""
    columns: dict[str, str]
    """The SQL's columns and their PostgreSQL types."""


@dataclass(frozen=True)
class Staged:
    rows: int
    relations: tuple[str, ...]
    own_event_time: bool
    """The SQL returns event_time (else its rows are stamped with the window end)."""

    windows: tiles.Combined | None = None
    """For a window feature: the tiles written and the window values combined from them."""


def describe(
    session: SandboxSession,
    feature: FeatureDefinition,
    *,
    source_schemas: Sequence[str],
    group_sql: str | None = None,
) -> SqlShape:
    """Check a feature's SQL (its own, else `group_sql`, its group's) against the live database without
    running it, and return its shape.

    The SQL is planned as a subquery of a read-only transaction in the sandbox, so anything but one
    SELECT (several statements, DML, data-modifying CTEs, tables the sandbox may not read) is
    refused by PostgreSQL itself. Its plan must scan the source schemas only: not the catalog
    (`pg_catalog`, `information_schema`), whose tables PostgreSQL lets every login read.
    """
    text = feature.transformation_sql or group_sql
    if text is None:
        raise SqlShapeError("is missing: the feature has no transformation_sql and its group has none")
    if "%(tenant_id)s" not in text:
        raise SqlShapeError("must filter its sources by the bound %(tenant_id)s parameter (tenant isolation)")
    now = datetime.now(timezone.utc)
    params = {"tenant_id": "", "start_time": now, "end_time": now}
    subquery = "SELECT * FROM (\n" + text + "\n) AS q"
    conn = session.conn
    try:
        with conn.transaction(force_rollback=True):
            conn.execute("SET LOCAL transaction_read_only = on")
            cur = session.execute(subquery + " LIMIT 0", params)
            assert cur.description is not None
            columns = {d.name: _type_name(conn, d.type_code) for d in cur.description}
            plan = session.execute("EXPLAIN (VERBOSE, FORMAT JSON) " + subquery, params).fetchone()
    except psycopg.errors.SyntaxError as exc:
        raise SqlShapeError(f"is not a single SELECT statement: {_pg_message(exc)}") from exc
    except psycopg.errors.FeatureNotSupported as exc:
        raise SqlShapeError(f"must be a single SELECT that does not modify data: {_pg_message(exc)}") from exc
    except psycopg.errors.InsufficientPrivilege as exc:
        raise SqlShapeError(
            f"reads something outside the declared source schemas or modifies data: {_pg_message(exc)}"
        ) from exc
    except (psycopg.Error, TypeError) as exc:
        if isinstance(exc, psycopg.Error) and exc.sqlstate is not None:
            raise SqlShapeError(_pg_message(exc)) from exc
        # Raised by psycopg itself, before sending: an unknown or positional placeholder.
        raise SqlShapeError(
            f"uses a placeholder other than {', '.join(f'%({p})s' for p in PARAMETERS)} ({exc});"
            " write a literal % as %%"
        ) from exc
    if feature.function is not None:
        functions.load(feature)  # any columns: the function reads them; it must load and be callable
    elif feature.transformation_sql is None:
        _check_group_columns(columns, feature)
    else:
        _check_columns(columns, _source_value_type(feature))
    relations = tuple(sorted(set(_relations(plan[0] if plan else []))))
    outside = [r for r in relations if r.split(".", 1)[0] not in source_schemas]
    if outside:
        raise SqlShapeError(
            f"reads {', '.join(outside)}, outside the declared source schemas ({', '.join(source_schemas) or 'none'})"
        )
    value_column = "value" if feature.transformation_sql is not None else feature.name
    return SqlShape(
        has_event_time="event_time" in columns and feature.function is None,
        value_type=columns.get(value_column) if feature.function is None else None,
        relations=relations,
        columns=columns,
    )


def _source_value_type(feature: FeatureDefinition) -> ValueType | None:
    """The type the SQL's `value` must have: the feature's, or what its aggregation aggregates (None: any)."""
    if feature.aggregation is None:
        return feature.value_type
    function = feature.aggregation.function
    if function in (AggregationFunction.COUNT, AggregationFunction.APPROX_COUNT_DISTINCT):
        return None
    if function is AggregationFunction.AVG:
        return ValueType.FLOAT64  # ints or floats
    return feature.value_type


def _relations(plan: Any) -> Iterator[str]:
    """`schema.table` of every scan in an EXPLAIN (VERBOSE, FORMAT JSON) plan."""
    if isinstance(plan, list):
        for item in plan:
            yield from _relations(item)
    elif isinstance(plan, dict):
        if "Relation Name" in plan and "Schema" in plan:
            yield f"{plan['Schema']}.{plan['Relation Name']}"
        for value in plan.values():
            if isinstance(value, list | dict):
                yield from _relations(value)


def stage_rows(
    conn: psycopg.Connection,
    *,
    settings: Settings,
    job_id: int,
    tenant_id: str,
    feature: FeatureDefinition,
    windows: Sequence[TimeWindow],
    source_schemas: Sequence[str],
    group: FeatureGroup,
) -> Staged:
    """Stage the feature's rows: replace its staged rows with fresh runs of its SQL, one per window.

    `conn` is the feature store's own connection (it clears the staged rows and records the
    sandbox's scope); the SQL itself runs in a sandbox session for `tenant_id`. Rows without an
    `event_time` column are stamped with their window's end: the value as known then.

    A window feature's SQL runs once per hour; its rows become that hour's tiles and the staged rows
    its window values (see `tiles`). A function feature's rows go through its function (see `functions`).
    A feature without SQL of its own takes its column of the group's SQL, staged once for the job.
    """
    if feature.aggregation is not None:
        windows = tiles.hourly(windows, feature.name)
    create_staging(conn, job_id)  # the job's first transform creates it (or a rerun of a finished job)
    partition = empty_partition(conn, job_id, feature.name)
    with sandbox_session(
        conn,
        database_url=settings.database_url,
        password=settings.sandbox_password,
        tenant_id=tenant_id,
        timeout_s=settings.statement_timeout_s,
    ) as session:
        shape = describe(session, feature, source_schemas=source_schemas, group_sql=group.transformation_sql)
        if feature.transformation_sql is None:
            _stage_group_rows(
                session, conn, job_id=job_id, tenant_id=tenant_id, group=group, shape=shape, windows=windows
            )
        else:
            query = (
                _select_query(session.conn, feature, shape) if feature.function is None else feature.transformation_sql
            )
            rows = 0
            with session.conn.transaction(force_rollback=True):
                session.conn.execute("SET TRANSACTION READ ONLY")
                for window in windows:
                    params = {"tenant_id": tenant_id, "start_time": window.start, "end_time": window.end}
                    if feature.function is not None:
                        rows += functions.pipe(
                            session, conn, feature, query, params, partition, tenant_id=tenant_id, window=window
                        )
                    else:
                        rows += _pipe(session, conn, query, params, partition)
    if feature.transformation_sql is None:
        rows = _take_group_column(conn, job_id, feature)
    combined = None
    if feature.aggregation is not None:
        combined = tiles.combine(
            conn,
            job_id=job_id,
            tenant_id=tenant_id,
            group_id=group.id,
            feature=feature,
            hours=windows,
            partition=partition,
        )
    if feature.transformation_sql is not None:  # a group column's partition stays empty (see fill_partitions)
        analyze_partition(conn, partition)
    own = shape.has_event_time or combined is not None or feature.function is not None
    return Staged(rows=rows, relations=shape.relations, own_event_time=own, windows=combined)


def _pipe(
    session: SandboxSession,
    conn: psycopg.Connection,
    query: str,
    params: dict[str, Any],
    partition: sql.Composed,
    columns: sql.Composable = STAGED_COLUMNS,
) -> int:
    """Stream one run of the SQL from the sandbox into the partition (or `columns` of another
    staging table); returns the rows staged.

    COPY cannot take server-side parameters, so psycopg binds them into the statement client-side
    (quoted as literals by the driver, never by string formatting of ours).
    """
    copy_in = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT binary)").format(partition, columns)
    copy_out = f"COPY ({query}) TO STDOUT (FORMAT binary)"
    with conn.cursor() as dest:
        with dest.copy(copy_in) as writer, session.copy_out(copy_out, params) as reader:
            # PostgreSQL sends a row per message: written on in chunks, they cost a third less.
            chunk: list[Buffer] = []
            size = 0
            for block in reader:
                chunk.append(block)
                size += len(block)
                if size >= _RELAY_CHUNK_BYTES:
                    writer.write(b"".join(chunk))
                    chunk.clear()
                    size = 0
            if chunk:
                writer.write(b"".join(chunk))
        return max(dest.rowcount, 0)


_RELAY_CHUNK_BYTES = 1 << 16


def _select_query(conn: psycopg.Connection, feature: FeatureDefinition, shape: SqlShape) -> str:
    """The feature's SQL wrapped to produce staging's columns in their binary forms (binary COPY needs
    them exact): in staging's types, the value as jsonb's wire form (`_JSONB_WIRE`)."""
    name = sql.Literal(feature.name).as_string(conn)
    value, number = _staged_value(feature, shape.value_type, "q.value")
    wrapper = (
        f"SELECT {name}::text, q.entity_id::text, {_event_time(shape)}, {value},"
        f" %(start_time)s::timestamptz, %(end_time)s::timestamptz, {number} FROM (\n"
    )
    return wrapper + feature.transformation_sql + "\n) AS q"  # type: ignore[operator]


def _staged_value(
    feature: FeatureDefinition, value_type: str | None, column: str, *, bare_doubles: bool = False
) -> tuple[str, str]:
    """SQL of the staged `value` (jsonb's wire form) and `number` (float8) of a `column` of the SQL's
    rows, whose PostgreSQL type is `value_type`.

    `bare_doubles` (the group rows, see `staging.group_value`): a float64 value that its number holds
    exactly has no staged value (NULL), since its jsonb is to_jsonb of the number: staging then parses
    no JSON for it (at a million rows of five floats, half the COPY's time)."""
    source_type = _source_value_type(feature)
    # An int64, or what an aggregation counts (any type), unless the type has a text of its own.
    fallback = _INTEGER_TEXT if value_type in _BINARY_INTEGER_TYPES else _ANY_TEXT
    text = _JSON_TEXTS.get(source_type, fallback) if source_type is not None else fallback
    value = f"{_JSONB_WIRE}({text.format(v=column)})"
    number = _NUMBER_EXPRESSIONS.get(feature.value_type) if feature.aggregation is None else None
    if bare_doubles and number and source_type is ValueType.FLOAT64:
        value = f"CASE WHEN {_EXACT_DOUBLE.format(v=column)} THEN NULL ELSE {value} END"
    return value, f"({number.format(v=column) if number else 'NULL'})::float8"


_EXACT_DOUBLE = "abs({v}) BETWEEN 1e-307 AND 1.7976931348623157e308 OR {v} = 0"
"""A float64 value whose staged number is the double its JSON text spells (see `_JSON_TEXTS`,
`_NUMBER_EXPRESSIONS`; 0 for -0, which jsonb reads as 0 too)."""


def _event_time(shape: SqlShape) -> str:
    """The staged event time: the SQL's own, or its window's end."""
    return "q.event_time::timestamptz" if shape.has_event_time else "%(end_time)s::timestamptz"


def _stage_group_rows(
    session: SandboxSession,
    conn: psycopg.Connection,
    *,
    job_id: int,
    tenant_id: str,
    group: FeatureGroup,
    shape: SqlShape,
    windows: Sequence[TimeWindow],
) -> None:
    """Stage the group SQL's rows for the job, one run per window, unless one of its features did.

    Each feature whose column the SQL returns in a type it accepts gets its staged value and number
    (one of the wrong type fails its own transform, in `describe`). The rows commit together and
    siblings wait for them, so every feature of the job reads one run of the SQL, and a failed run
    leaves nothing behind for a retry to mistake for its rows.
    """
    source = group_source_table(job_id)
    with conn.transaction():
        advisory_xact_lock(conn, f"featurepipe group rows {int(job_id)}")
        if table_exists(conn, source):
            return
        features = [f for f in group.group_sql_features if _fits(shape.columns, f)]
        pairs = [tuple(map(sql.Identifier, group_source_columns(f.name))) for f in features]  # value, number
        conn.execute(
            sql.SQL(
                "CREATE UNLOGGED TABLE {} (entity_id text, event_time timestamptz,"
                " window_start timestamptz NOT NULL, window_end timestamptz NOT NULL{})"
            ).format(source, sql.SQL("").join(sql.SQL(", {} jsonb, {} float8").format(*pair) for pair in pairs))
        )
        session_conn = session.conn
        selected = "".join(
            ", "
            + ", ".join(
                _staged_value(
                    f, shape.columns[f.name], "q." + sql.Identifier(f.name).as_string(session_conn), bare_doubles=True
                )
            )
            for f in features
        )
        query = (
            f"SELECT q.entity_id::text, {_event_time(shape)}, %(start_time)s::timestamptz,"
            f" %(end_time)s::timestamptz{selected} FROM (\n{group.transformation_sql}\n) AS q"
        )
        into = sql.SQL(", ").join(
            [sql.SQL("entity_id, event_time, window_start, window_end"), *(c for pair in pairs for c in pair)]
        )
        with session_conn.transaction(force_rollback=True):
            session_conn.execute("SET TRANSACTION READ ONLY")
            for window in windows:
                params = {"tenant_id": tenant_id, "start_time": window.start, "end_time": window.end}
                _pipe(session, conn, query, params, source, into)
        conn.execute("SET LOCAL work_mem = '64MB'")  # the search for duplicate keys sorts in memory
        mark_unique_keys(conn, job_id)


def _take_group_column(conn: psycopg.Connection, job_id: int, feature: FeatureDefinition) -> int:
    """Stage the feature's column of the job's group rows: they stay there, its partition empty, until a
    stage must mark or group them (see `staging.fill_partitions`); returns the rows staged."""
    if not has_group_columns(conn, job_id, [feature.name]):
        raise SqlShapeError(
            f"the group's SQL had no column {feature.name!r} when this job staged its rows (did the group"
            " change while the job ran?); run the job again"
        )
    leave_in_group_rows(conn, job_id, feature.name)
    return group_row_count(conn, job_id)


def _fits(columns: dict[str, str], feature: FeatureDefinition) -> bool:
    try:
        _check_group_columns(columns, feature)
    except SqlShapeError:
        return False
    return True


def _check_group_columns(columns: dict[str, str], feature: FeatureDefinition) -> None:
    """The group's SQL must return entity_id[, event_time] and the feature's column, of its type."""
    got = ", ".join(columns) or "no columns"
    if feature.name in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS):
        raise SqlShapeError(
            f"of the group cannot have a feature named {feature.name!r}: that column means something else"
        )
    if "entity_id" not in columns:
        raise SqlShapeError(
            f"of the group must return entity_id[, event_time] and a column per feature; it returns {got}"
        )
    if feature.name not in columns:
        raise SqlShapeError(f"of the group returns no column {feature.name!r} for this feature; it returns {got}")
    _check_value_type(columns[feature.name], feature.value_type, column=feature.name)
    _check_event_time(columns)


def _check_columns(columns: dict[str, str], value_type: ValueType | None) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    extra = [c for c in columns if c not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
    if missing or extra:
        got = ", ".join(columns) or "no columns"
        raise SqlShapeError(f"must return columns entity_id, value[, event_time]; it returns {got}")
    if value_type is not None:
        _check_value_type(columns["value"], value_type, column="value")
    _check_event_time(columns)


def _check_value_type(pg_type: str, value_type: ValueType, *, column: str) -> None:
    accepted = _ACCEPTED_VALUE_TYPES[value_type]
    if accepted is not None and pg_type not in accepted:
        raise SqlShapeError(
            f"returns {column} of type {pg_type}, which is not a {value_type.value}"
            f" (accepted: {', '.join(sorted(accepted))})"
        )


def _check_event_time(columns: dict[str, str]) -> None:
    if "event_time" in columns and columns["event_time"] not in _EVENT_TIME_TYPES:
        raise SqlShapeError(
            f"returns event_time of type {columns['event_time']};"
            f" expected one of {', '.join(sorted(_EVENT_TIME_TYPES))}"
        )


def _type_name(conn: psycopg.Connection, oid: int) -> str:
    info = conn.adapters.types.get(oid)
    if info is not None:
        return info.name
    row = conn.execute("SELECT typname FROM pg_type WHERE oid = %s", (oid,)).fetchone()
    return str(row[0]) if row else str(oid)


def _pg_message(exc: psycopg.Error) -> str:
    diag = exc.diag
    text = diag.message_primary or str(exc).splitlines()[0]
    return f"{text} ({diag.message_hint})" if diag.message_hint else text
