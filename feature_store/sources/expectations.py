"""Expectations on source rows: a restrictive policy for the sandbox role, and the quarantine of broken rows.

The policy is composed from identifiers and literals only (never from repo SQL text), so a row that
breaks an expectation is invisible to every transform; each transform of a feature reading the table
then records the window's broken rows with the reason."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from feature_store.db import qualified_name
from feature_store.definitions.models import SourceTable, ValidationRules
from feature_store.pipeline.sandbox import SANDBOX_ROLE

EXPECTATION_POLICY = "featurepipe_expectations"
EXPECTATION_RULE = "expectation"
"""The rule name quarantined source rows carry."""


# -- expectations on source rows -----------------------------------------------------------------


@dataclass(frozen=True)
class _Check:
    column: str
    condition: sql.Composable
    """True for a row that passes; never NULL."""
    reason: sql.Composable


def _checks(decl: SourceTable) -> list[_Check]:
    checks = []
    for column, rules in sorted(decl.expectations.items()):
        c = sql.Identifier(column)
        label = f"{decl.table}.{column}"
        for check in _column_checks(c, rules):
            condition, template = check
            reason = sql.SQL("format({}, {}::text)").format(sql.Literal(template.replace("{col}", label)), c)
            checks.append(_Check(column, condition, reason))
    return checks


def _column_checks(c: sql.Identifier, rules: ValidationRules) -> list[tuple[sql.Composable, str]]:
    out: list[tuple[sql.Composable, str]] = []
    if rules.not_null:
        out.append((sql.SQL("{} IS NOT NULL").format(c), "{col} is null"))
    if rules.min is not None:
        out.append(
            (
                sql.SQL("({c} IS NULL OR {c} >= {v})").format(c=c, v=sql.Literal(rules.min)),
                f"{{col}} %s is below min {rules.min:g}",
            )
        )
    if rules.max is not None:
        out.append(
            (
                sql.SQL("({c} IS NULL OR {c} <= {v})").format(c=c, v=sql.Literal(rules.max)),
                f"{{col}} %s is above max {rules.max:g}",
            )
        )
    if rules.allowed_values is not None:
        allowed = sql.Literal([Jsonb(v) for v in rules.allowed_values])
        shown = ", ".join(repr(v) for v in rules.allowed_values).replace("%", "%%")
        out.append(
            (
                sql.SQL("({c} IS NULL OR to_jsonb({c}) = ANY({v}))").format(c=c, v=allowed),
                f"{{col}} %s is not one of the allowed values [{shown}]",
            )
        )
    return out


def _condition(decl: SourceTable) -> sql.Composable:
    return sql.SQL(" AND ").join(sql.SQL("({})").format(c.condition) for c in _checks(decl))


def sync_policies(conn: psycopg.Connection, declared: Sequence[SourceTable]) -> None:
    """One restrictive policy per table with expectations; dropped from tables that no longer have any.

    Each policy's comment holds the expectations it enforces, so an unchanged one is left alone
    (CREATE POLICY locks the table).
    """
    wanted = {d.table: d for d in declared if d.expectations}
    existing = {
        str(r[0]): r[1]
        for r in conn.execute(
            "SELECT n.nspname || '.' || c.relname, obj_description(p.oid, 'pg_policy') FROM pg_policy p"
            " JOIN pg_class c ON c.oid = p.polrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE p.polname = %s",
            (EXPECTATION_POLICY,),
        ).fetchall()
    }
    policy = sql.Identifier(EXPECTATION_POLICY)
    for table in existing.keys() - wanted.keys():
        conn.execute(sql.SQL("DROP POLICY IF EXISTS {} ON {}").format(policy, qualified_name(table)))
    for table, decl in wanted.items():
        fingerprint = json.dumps(decl.expectations_data(), sort_keys=True)
        if existing.get(table) == fingerprint:
            continue
        conn.execute(sql.SQL("DROP POLICY IF EXISTS {} ON {}").format(policy, qualified_name(table)))
        conn.execute(
            sql.SQL("CREATE POLICY {} ON {} AS RESTRICTIVE FOR SELECT TO {} USING ({})").format(
                policy, qualified_name(table), sql.Identifier(SANDBOX_ROLE), _condition(decl)
            )
        )
        conn.execute(
            sql.SQL("COMMENT ON POLICY {} ON {} IS {}").format(policy, qualified_name(table), sql.Literal(fingerprint))
        )


def quarantine_source_rows(
    conn: psycopg.Connection,
    *,
    job_id: int,
    tenant_id: str,
    group_id: str,
    feature_name: str,
    declared: Sequence[SourceTable],
    relations: Iterable[str],
    start: datetime,
    end: datetime,
) -> int:
    """Record the window's source rows that break an expectation of a table the feature reads.

    Transforms never saw these rows (the expectation policy hides them); this says which and why.
    Returns the number of rows quarantined.
    """
    read = set(relations)
    total = 0
    for decl in declared:
        if not decl.expectations or decl.table not in read:
            continue
        assert decl.tenant_column and decl.time_column
        checks = _checks(decl)
        reason = sql.SQL("CASE {} END").format(
            sql.SQL(" ").join(sql.SQL("WHEN NOT ({}) THEN {}").format(c.condition, c.reason) for c in checks)
        )
        columns = sorted({c.column for c in checks})
        value = sql.SQL("jsonb_build_object({})").format(
            sql.SQL(", ").join(sql.SQL("{}, t.{}").format(sql.Literal(c), sql.Identifier(c)) for c in columns)
        )
        # No bound parameters: the reason templates hold `%s` for format(), which psycopg would take as one.
        total += conn.execute(
            sql.SQL(
                "INSERT INTO feature_store.quarantined_rows"
                " (job_id, tenant_id, feature_group_id, feature_name, entity_id, event_time, value, rule, reason)"
                " SELECT {job}, {tenant_id}, {group}, {feature}, t.{key}::text, t.{time}, {value}, {rule},"
                " format('source row %s %s: %s (excluded before aggregation)', {table_name}, t.{key}, {reason})"
                " FROM {table} t WHERE t.{tenant} = {tenant_id} AND t.{time} > {start} AND t.{time} <= {end}"
                " AND NOT ({condition})"
            ).format(
                job=sql.Literal(job_id),
                tenant_id=sql.Literal(tenant_id),
                group=sql.Literal(group_id),
                feature=sql.Literal(feature_name),
                rule=sql.Literal(EXPECTATION_RULE),
                table_name=sql.Literal(decl.table),
                start=sql.Literal(start),
                end=sql.Literal(end),
                key=sql.Identifier(decl.key_column),
                time=sql.Identifier(decl.time_column),
                tenant=sql.Identifier(decl.tenant_column),
                value=value,
                reason=reason,
                table=qualified_name(decl.table),
                condition=_condition(decl),
            )
        ).rowcount
    return total
