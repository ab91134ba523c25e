"""Validate: check a feature's staged rows set-wise in PostgreSQL and quarantine the ones that fail.

Each failing row is marked in staging with the first rule it broke and a readable reason, then
copied to `feature_store.quarantined_rows`; only unmarked rows are ever written. If more than the
group's `max_failure_rate` of the rows fail, the feature fails (its quarantined rows stay, as evidence).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from feature_store.definitions.models import FeatureDefinition, ValueType
from feature_store.pipeline.staging import (
    PRESENT,
    fill_partitions,
    group_column_rows,
    group_row_count,
    in_group_rows,
    partition_table,
)
from feature_store.sources.expectations import EXPECTATION_RULE
from feature_store.windows import TimeWindow

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
FLOAT64_MAX = "1.7976931348623157e308"
"""The largest finite double, as a numeric literal: staged numbers beyond it cannot be a float64."""

QUARANTINE_KEEP_CHARS = 1024
"""Quarantine keeps an entity id or value (as JSON text) whole up to this many characters, a prefix beyond."""

# jsonb type a value of each declared type has (jsonb_typeof).
_JSON_TYPES = {
    ValueType.INT64: "number",
    ValueType.FLOAT64: "number",
    ValueType.STRING: "string",
    ValueType.BOOL: "boolean",
}

RULES = (
    "entity_id",
    "event_time",
    "not_null",
    "value_type",
    "value_size",
    "min",
    "max",
    "allowed_values",
    "unique",
)
"""Every rule a row can be quarantined for, in the order they are checked."""

# A value as shown in a reason: very large or small numbers in scientific notation (1e400, not 401
# digits), anything else cut short after 100 characters. Nested CASEs: a cast only ever sees a number.
_TEXT = "coalesce(value::text, 'null')"
_CUT = f"CASE WHEN length({_TEXT}) > 100 THEN left({_TEXT}, 100) || '…' ELSE {_TEXT} END"
_SHOWN = (
    "CASE WHEN jsonb_typeof(value) = 'number' AND length(value::text) > 24 THEN"
    "  CASE WHEN value::numeric <> 0 AND abs(value::numeric) NOT BETWEEN 1e-6 AND 1e21"
    "   THEN trim_scale(round(CASE WHEN abs(value::numeric) >= 1"
    "     THEN value::numeric / 10::numeric ^ floor(log(abs(value::numeric)))"
    "     ELSE value::numeric * 10::numeric ^ -floor(log(abs(value::numeric))) END, 16))"
    "    || 'e' || floor(log(abs(value::numeric)))"
    f"   ELSE {_CUT} END"
    f" ELSE {_CUT} END"
)
_SHOWN_ENTITY = "CASE WHEN char_length(entity_id) > 64 THEN left(entity_id, 64) || '…' ELSE entity_id END"


@dataclass(frozen=True)
class _Check:
    rule: str
    condition: sql.Composable
    reason: sql.Composable


@dataclass(frozen=True)
class ValidationOutcome:
    rows_total: int
    rows_failed: int
    failures_by_rule: dict[str, int] = field(default_factory=dict)
    example: str | None = None

    @property
    def failure_rate(self) -> float:
        return self.rows_failed / self.rows_total if self.rows_total else 0.0


def check_rules(
    conn: psycopg.Connection,
    *,
    job_id: int,
    tenant_id: str,
    group_id: str,
    feature: FeatureDefinition,
    window: TimeWindow,
    max_entity_id_length: int,
    max_value_bytes: int,
    unique_keys: bool = False,
) -> ValidationOutcome:
    """Check the feature's staged rows against its rules: mark and quarantine the failing ones; safe to
    rerun (it starts from a clean slate).

    Args:
        max_entity_id_length: longest entity id, in characters (`Settings.max_entity_id_length`).
        max_value_bytes: longest string value, in UTF-8 bytes (`Settings.max_value_bytes`).
        unique_keys: no (entity_id, event_time) of the staged rows occurs twice, as already checked
            (the group rows a feature of the group's SQL copied, see `staging.mark_unique_keys`).
    """
    table = partition_table(job_id, feature.name)
    name = feature.name
    with conn.transaction():
        conn.execute("SET LOCAL work_mem = '64MB'")  # the unique check's hash aggregate stays in memory
        conn.execute(
            # Source rows quarantined by the transform's expectations stay: they are that stage's record.
            "DELETE FROM feature_store.quarantined_rows WHERE job_id = %s AND feature_name = %s AND rule <> %s",
            (job_id, name, EXPECTATION_RULE),
        )
        checks = _row_checks(
            feature, window, max_entity_id_length=max_entity_id_length, max_value_bytes=max_value_bytes
        )
        rule_case = sql.SQL(" ").join(
            sql.SQL("WHEN {} THEN {}").format(c.condition, sql.Literal(c.rule)) for c in checks
        )
        reason_case = sql.SQL(" ").join(sql.SQL("WHEN {} THEN {}").format(c.condition, c.reason) for c in checks)
        any_failed = sql.SQL(" OR ").join(sql.SQL("({})").format(c.condition) for c in checks)
        if unique_keys and in_group_rows(conn, job_id, [name]):
            # Still only its column of the group rows: count the rows that fail where they lie, and copy
            # them into the partition to be marked only if any do (the usual case: none).
            row = conn.execute(
                sql.SQL("SELECT count(*), count(*) FILTER (WHERE {}) FROM {}").format(
                    any_failed, group_column_rows(job_id, name)
                )
            ).fetchone()
            if row is not None and not row[1]:
                return ValidationOutcome(rows_total=int(row[0]), rows_failed=0)
        fill_partitions(conn, job_id, [name])
        # One pass marks the failing rows and clears an earlier run's marks of rows that pass now (the
        # CASE has no ELSE): a rerun starts from a clean slate without a pass of its own.
        row = conn.execute(
            sql.SQL(
                "WITH marked AS ("
                " UPDATE {table} SET rejected_rule = CASE {rule_case} END, rejected_reason = CASE {reason_case} END"
                " WHERE feature_name = {name} AND (rejected_rule IS NOT NULL OR {any_failed})"
                " RETURNING rejected_rule)"
                " SELECT count(rejected_rule) FROM marked"
            ).format(
                table=table,
                rule_case=rule_case,
                reason_case=reason_case,
                name=sql.Literal(name),
                any_failed=any_failed,
            )
        ).fetchone()
        marked = int(row[0]) if row else 0
        duplicates, unmarked = (
            (0, count_valid(conn, job_id, name)) if unique_keys else _mark_duplicates(conn, table, name)
        )
        if not marked and not duplicates:  # the usual case: nothing to quarantine, every row counted
            return ValidationOutcome(rows_total=unmarked, rows_failed=0)
        # Oversized entity ids and values are evidence enough as a prefix (a 10 MB string stays in staging).
        keep = sql.Literal(QUARANTINE_KEEP_CHARS)
        conn.execute(
            sql.SQL(
                "INSERT INTO feature_store.quarantined_rows"
                " (job_id, tenant_id, feature_group_id, feature_name, entity_id, event_time, value, rule, reason)"
                " SELECT %s, %s, %s, feature_name,"
                "  CASE WHEN char_length(entity_id) > {keep} THEN left(entity_id, {keep}) || '…' ELSE entity_id END,"
                "  event_time,"
                "  CASE WHEN value IS NULL OR length(value::text) <= {keep} THEN value"
                "       WHEN jsonb_typeof(value) = 'string' THEN to_jsonb(left(value #>> '{{}}', {keep}) || '…')"
                "       ELSE to_jsonb({shown}) END,"
                "  rejected_rule, rejected_reason"
                " FROM {table} WHERE feature_name = %s AND rejected_rule IS NOT NULL"
            ).format(table=table, keep=keep, shown=sql.SQL(_SHOWN)),
            (job_id, tenant_id, group_id, name),
        )
        return _outcome(conn, table, name)


def _row_checks(
    feature: FeatureDefinition, window: TimeWindow, *, max_entity_id_length: int, max_value_bytes: int
) -> list[_Check]:
    rules = feature.validation
    value_type = feature.value_type
    present = sql.SQL(PRESENT)
    max_id = sql.Literal(max_entity_id_length)
    checks = [
        _Check(
            "entity_id",
            sql.SQL("entity_id IS NULL OR entity_id = '' OR char_length(entity_id) > {}").format(max_id),
            sql.SQL(
                "CASE WHEN entity_id IS NULL THEN format('entity_id is null (value %s)', {shown})"
                " WHEN entity_id = '' THEN format('entity_id is empty (value %s)', {shown})"
                " ELSE format('entity_id %s has %s characters, more than the limit of %s"
                " (FEATURE_STORE_MAX_ENTITY_ID_LENGTH)', quote_literal({entity}), char_length(entity_id), {max_id})"
                " END"
            ).format(shown=sql.SQL(_SHOWN), entity=sql.SQL(_SHOWN_ENTITY), max_id=max_id),
        ),
        # Each row against the window its SQL ran for (full mode runs it once per schedule window).
        _Check(
            "event_time",
            sql.SQL("event_time IS NULL OR event_time <= window_start OR event_time > window_end"),
            sql.SQL(
                "CASE WHEN event_time IS NULL THEN 'event_time is null'"
                " ELSE format('event_time %s is outside the window (%s, %s]', event_time,"
                " to_char(window_start AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS+00:00'),"
                " to_char(window_end AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS+00:00')) END"
            ),
        ),
    ]
    if rules.not_null:
        checks.append(_Check("not_null", sql.SQL("NOT {}").format(present), sql.Literal("value is null")))
    checks.append(
        _Check(
            "value_type",
            sql.SQL("{} AND NOT {}").format(present, _type_test(value_type)),
            _type_reason(value_type),
        )
    )
    if value_type is ValueType.STRING:
        max_bytes = sql.Literal(max_value_bytes)
        checks.append(
            _Check(
                "value_size",
                sql.SQL("jsonb_typeof(value) = 'string' AND octet_length(value #>> '{{}}') > {}").format(max_bytes),
                sql.SQL(
                    "format('value %s has %s bytes, more than the limit of %s bytes"
                    " (FEATURE_STORE_MAX_VALUE_BYTES)', {shown}, octet_length(value #>> '{{}}'), {max_bytes})"
                ).format(shown=sql.SQL(_SHOWN), max_bytes=max_bytes),
            )
        )
    if rules.min is not None:
        checks.append(_Check("min", _compare("<", rules.min), _reason(f"value %s is below min {rules.min:g}")))
    if rules.max is not None:
        checks.append(_Check("max", _compare(">", rules.max), _reason(f"value %s is above max {rules.max:g}")))
    if rules.allowed_values is not None:
        allowed = sql.Literal([Jsonb(v) for v in rules.allowed_values])
        shown = ", ".join(repr(v) for v in rules.allowed_values).replace("%", "%%")
        checks.append(
            _Check(
                "allowed_values",
                sql.SQL("{} AND NOT (value = ANY({}::jsonb[]))").format(present, allowed),
                _reason(f"value %s is not one of the allowed values [{shown}]"),
            )
        )
    return checks


def _type_test(value_type: ValueType) -> sql.Composable:
    json_type = sql.Literal(_JSON_TYPES[value_type])
    if value_type is ValueType.INT64:
        return sql.SQL(
            "(CASE WHEN jsonb_typeof(value) = 'number'"
            " THEN value::numeric = trunc(value::numeric) AND value::numeric BETWEEN {} AND {}"
            " ELSE false END)"
        ).format(sql.Literal(INT64_MIN), sql.Literal(INT64_MAX))
    if value_type is ValueType.FLOAT64:
        # Transform stages numbers a double cannot hold (1e400) as they are, and NaN/Infinity as strings;
        # it stages a `number` for the others only (see `transform`), which spares their conversion.
        return sql.SQL(
            "(number IS NOT NULL OR CASE WHEN jsonb_typeof(value) = 'number' THEN abs(value::numeric) <= {}"
            " ELSE false END)"
        ).format(sql.SQL(FLOAT64_MAX))
    return sql.SQL("(jsonb_typeof(value) = {})").format(json_type)


def _compare(operator: str, bound: float) -> sql.Composable:
    """Whether a number is `operator` (< or >) the bound, compared exactly as numerics.

    The staged `number` is the value rounded to the nearest double (unless 0, which a tiny value
    becomes, or NULL); rounding keeps order, so a `number` other than the bound's own double answers
    as the exact numeric comparison would, without converting the jsonb value (a third of the rule pass).
    """
    exact = sql.SQL("(CASE WHEN jsonb_typeof(value) = 'number' THEN value::numeric END) {} {}").format(
        sql.SQL(operator), sql.Literal(bound)
    )
    return sql.SQL(
        "(CASE WHEN number IS NOT NULL AND number <> 0 AND number <> {bound}::float8 THEN number {op} {bound}::float8"
        " ELSE {exact} END)"
    ).format(bound=sql.Literal(bound), op=sql.SQL(operator), exact=exact)


def _type_reason(value_type: ValueType) -> sql.Composable:
    if value_type is ValueType.INT64:
        return sql.SQL(
            "CASE WHEN jsonb_typeof(value) <> 'number' THEN {not_int}"
            " WHEN value::numeric <> trunc(value::numeric) THEN {fraction}"
            " ELSE {out_of_range} END"
        ).format(
            not_int=_reason("value %s is not an int64"),
            fraction=_reason("value %s is not a whole number (int64)"),
            out_of_range=_reason(f"value %s is out of int64 range [{INT64_MIN}, {INT64_MAX}]"),
        )
    if value_type is ValueType.FLOAT64:
        return sql.SQL(
            "CASE WHEN jsonb_typeof(value) = 'number' THEN {out_of_range}"
            " WHEN value #>> '{{}}' IN ('NaN', 'Infinity', '-Infinity')"
            "  THEN format('value %s is not a finite float64', value #>> '{{}}')"
            " ELSE {other} END"
        ).format(
            out_of_range=_reason("value %s is out of float64 range"),
            other=_reason("value %s is not a float64"),
        )
    return _reason(f"value %s is not a {value_type.value}")


def count_valid(conn: psycopg.Connection, job_id: int, feature_name: str) -> int:
    """The feature's staged rows that no rule marked: all of them while they are only in the group
    rows (marking copies them into the partition first)."""
    if in_group_rows(conn, job_id, [feature_name]):
        return group_row_count(conn, job_id)
    row = conn.execute(
        sql.SQL("SELECT count(*) FROM {} WHERE feature_name = %s AND rejected_rule IS NULL").format(
            partition_table(job_id, feature_name)
        ),
        (feature_name,),
    ).fetchone()
    return int(row[0]) if row else 0


def _mark_duplicates(conn: psycopg.Connection, table: sql.Composable, name: str) -> tuple[int, int]:
    """Quarantine every row of an (entity_id, event_time) seen more than once (which one is right is
    unknowable); returns the rows marked and the unmarked rows there were before."""
    grouped = sql.SQL(
        "SELECT entity_id, event_time, count(*) AS n FROM {t}"
        " WHERE feature_name = %(name)s AND rejected_rule IS NULL GROUP BY entity_id, event_time"
    ).format(t=table)
    # One hash aggregate answers the usual case (no duplicates) and counts the rows, writing none.
    row = conn.execute(
        sql.SQL("SELECT coalesce(bool_or(n > 1), false), coalesce(sum(n), 0) FROM ({}) g").format(grouped),
        {"name": name},
    ).fetchone()
    unmarked = int(row[1]) if row else 0
    if row is None or not row[0]:
        return 0, unmarked
    duplicated = sql.SQL("{} HAVING count(*) > 1").format(grouped)
    return conn.execute(
        sql.SQL(
            "UPDATE {t} s SET rejected_rule = 'unique', rejected_reason = format("
            "'entity %%s has %%s rows at event_time %%s; (entity_id, event_time) must be unique',"
            " s.entity_id, d.n, s.event_time)"
            " FROM ({duplicated}) d"
            " WHERE s.feature_name = %(name)s AND s.rejected_rule IS NULL"
            "   AND s.entity_id = d.entity_id AND s.event_time = d.event_time"
        ).format(t=table, duplicated=duplicated),
        {"name": name},
    ).rowcount, unmarked


def _outcome(conn: psycopg.Connection, table: sql.Composable, name: str) -> ValidationOutcome:
    rows = conn.execute(
        sql.SQL(
            "SELECT rejected_rule, count(*), min(format('entity %%s: %%s', {entity}, rejected_reason))"
            " FROM {table} WHERE feature_name = %s GROUP BY rejected_rule"
        ).format(table=table, entity=sql.SQL(_SHOWN_ENTITY)),
        (name,),
    ).fetchall()
    total = sum(int(r[1]) for r in rows)
    by_rule = {str(r[0]): int(r[1]) for r in rows if r[0] is not None}
    example = next((str(r[2]) for r in rows if r[0] is not None), None)
    return ValidationOutcome(
        rows_total=total, rows_failed=sum(by_rule.values()), failures_by_rule=by_rule, example=example
    )


def _reason(template: str) -> sql.Composable:
    """A reason built by PostgreSQL's format() with the row's value (as shown) in place of the template's %s."""
    return sql.SQL("format({}, {})").format(sql.Literal(template), sql.SQL(_SHOWN))
