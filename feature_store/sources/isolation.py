"""What transforms may read: the declared source schemas, tenant isolation of their tables, and expectations.

A table in a source schema is readable by the sandbox role only when it is tenant-isolated (row-level
security on, and every permissive policy that applies to the sandbox role compares a column with
`featurepipe_sandbox.current_tenant()`) or declared `shared` in the repo. Isolation therefore never
rests on the SQL's own `WHERE tenant_id = %(tenant_id)s`: a table without a policy is simply not
granted. Views must be `security_invoker` (otherwise they read their base tables with their owner's
rights, past row-level security). Expectations on source rows become a restrictive policy for the
sandbox role, composed from identifiers and literals only (never from repo SQL text)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import psycopg
from psycopg import sql

from feature_store.db import advisory_xact_lock, qualified_name
from feature_store.definitions.models import SourceTable
from feature_store.errors import SourceIsolationError
from feature_store.pipeline.sandbox import SANDBOX_ROLE, SCOPE_FUNCTION
from feature_store.sources.expectations import sync_policies

# Schemas the sandbox role needs besides the source schemas (see migration 003; since 007 it writes
# nothing, so not staging either).
_SANDBOX_SCHEMAS = ("featurepipe_sandbox",)

# pg_get_expr's rendering of `col = (SELECT featurepipe_sandbox.current_tenant())` and of the direct call.
_COLUMN = r'(?:"(?:[^"]|"")+"|[a-z_][a-z0-9_$]*)'
_SCOPE = re.escape(SCOPE_FUNCTION)
_TENANT_QUAL = re.compile(
    rf"^\((?:{_COLUMN}|\({_COLUMN}\)::text) = (?:\( SELECT {_SCOPE} AS current_tenant\)|{_SCOPE})\)$"
)

_KINDS = {"r": "table", "p": "partitioned table", "v": "view", "m": "materialized view", "f": "foreign table"}


@dataclass(frozen=True)
class SourceRelation:
    """One relation of a source schema and whether transforms may read it."""

    name: str
    kind: str
    shared: bool
    problem: str | None
    """Why transforms may not read it (None when they may)."""

    @property
    def readable(self) -> bool:
        return self.problem is None


def audit(conn: psycopg.Connection, schemas: Sequence[str], declared: Sequence[SourceTable]) -> list[SourceRelation]:
    """Every relation of the source schemas, with the reason transforms may not read it, if any."""
    shared = {d.table for d in declared if d.shared}
    rows = conn.execute(
        "SELECT n.nspname || '.' || c.relname, c.relkind::text, c.relrowsecurity,"
        " coalesce((SELECT o.option_value FROM pg_options_to_table(c.reloptions) o"
        "           WHERE o.option_name = 'security_invoker'), 'false') IN ('true', 'on', '1'),"
        " pg_get_userbyid(c.relowner) = %(role)s,"
        " coalesce((SELECT array_agg(pg_get_expr(p.polqual, p.polrelid) ORDER BY p.polname)"
        "           FROM pg_policy p WHERE p.polrelid = c.oid AND p.polpermissive AND p.polcmd IN ('r', '*')"
        "             AND (0 = ANY(p.polroles)"
        "                  OR (SELECT oid FROM pg_roles WHERE rolname = %(role)s) = ANY(p.polroles))"
        "          ), '{}')"
        " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = ANY(%(schemas)s) AND c.relkind IN ('r', 'p', 'v', 'm', 'f')"
        " ORDER BY 1",
        {"role": SANDBOX_ROLE, "schemas": list(schemas)},
    ).fetchall()
    result = []
    for name, kind, rls, invoker, owned_by_sandbox, quals in rows:
        is_shared = name in shared
        problem = None if is_shared else _isolation_problem(kind, rls, invoker, owned_by_sandbox, quals)
        result.append(SourceRelation(name=name, kind=_KINDS[kind], shared=is_shared, problem=problem))
    return result


def _isolation_problem(kind: str, rls: bool, invoker: bool, owned_by_sandbox: bool, quals: list[str]) -> str | None:
    fix = (
        f"add `CREATE POLICY featurepipe_tenant ON <table> FOR SELECT TO {SANDBOX_ROLE}"
        f" USING (tenant_id = (SELECT {SCOPE_FUNCTION}))` (with row-level security enabled),"
        " or declare it `shared: true` under `sources` in the repo"
    )
    if kind == "v":
        if invoker:
            return None  # its base tables are checked, with the sandbox's own rights
        return (
            "it is a view without security_invoker, so it reads its tables with its owner's rights;"
            " `ALTER VIEW ... SET (security_invoker = true)`, or declare it shared"
        )
    if kind in ("m", "f"):
        return f"a {_KINDS[kind]} cannot have row-level security; declare it shared if every tenant may read it"
    if owned_by_sandbox:
        return f"it is owned by {SANDBOX_ROLE}, which bypasses its row-level security"
    if not rls:
        return f"row-level security is not enabled, so it has no tenant isolation; {fix}"
    if not quals:
        return f"no policy lets {SANDBOX_ROLE} read it; {fix}"
    loose = [q for q in quals if not _TENANT_QUAL.match(q or "")]
    if loose:
        return (
            f"a policy that applies to {SANDBOX_ROLE} does not scope rows to the transform's tenant"
            f" ({loose[0]}): policies are OR-ed, so it widens what transforms see; {fix}"
        )
    return None


def unsafe_functions(conn: psycopg.Connection) -> list[str]:
    """SECURITY DEFINER functions the sandbox could call: each would run feature SQL with its owner's rights."""
    rows = conn.execute(
        "SELECT p.oid::regprocedure::text || ' (owner ' || pg_get_userbyid(p.proowner) || ')'"
        " FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
        " WHERE p.prosecdef AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'featurepipe_sandbox')"
        " AND has_schema_privilege(%(role)s, n.oid, 'USAGE') AND has_function_privilege(%(role)s, p.oid, 'EXECUTE')"
        " ORDER BY 1",
        {"role": SANDBOX_ROLE},
    ).fetchall()
    return [str(r[0]) for r in rows]


def check_declarations(
    conn: psycopg.Connection, schemas: Sequence[str], declared: Sequence[SourceTable]
) -> Iterable[tuple[SourceTable, str]]:
    """Problems with the declared source tables: unknown tables or columns, min/max on non-numbers."""
    for decl in declared:
        schema = decl.table.split(".", 1)[0]
        if schema not in schemas:
            yield decl, f"table {decl.table} is not in the source schemas ({', '.join(schemas) or 'none'})"
            continue
        row = conn.execute("SELECT to_regclass(%s)::oid", (decl.table,)).fetchone()
        if row is None or row[0] is None:
            yield decl, f"table {decl.table} does not exist"
            continue
        types: dict[str, str] = dict(
            conn.execute(
                "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute"
                " WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped",
                (row[0],),
            ).fetchall()
        )
        used = [decl.tenant_column, decl.time_column, *decl.expectations]
        if decl.expectations:
            used.append(decl.key_column)
        for column in used:
            if column is not None and column not in types:
                yield decl, f"table {decl.table} has no column {column!r}"
        for column, rules in decl.expectations.items():
            numeric = types.get(column, "").split("(")[0] in _NUMERIC_TYPES
            if (rules.min is not None or rules.max is not None) and column in types and not numeric:
                yield decl, f"expectation on {decl.table}.{column}: min/max need a numeric column, not {types[column]}"


_NUMERIC_TYPES = {"smallint", "integer", "bigint", "numeric", "real", "double precision"}


def sync(conn: psycopg.Connection, schemas: Sequence[str], declared: Sequence[SourceTable]) -> list[SourceRelation]:
    """Make the sandbox's privileges and expectation policies match the declarations; returns the audit.

    Committed on its own (the sandbox connection that checks feature SQL next must see it); `apply`
    calls it again with the stored declarations when the repo turns out invalid.
    """
    with conn.transaction():
        advisory_xact_lock(conn, "featurepipe sandbox grants")
        relations = audit(conn, schemas, declared)
        readable = {r.name for r in relations if r.readable}
        role = sql.Identifier(SANDBOX_ROLE)
        for name in _granted_relations(conn):
            if name not in readable:
                conn.execute(sql.SQL("REVOKE ALL ON TABLE {} FROM {}").format(qualified_name(name), role))
        for schema in _granted_schemas(conn):
            if schema not in schemas and schema not in _SANDBOX_SCHEMAS:
                conn.execute(sql.SQL("REVOKE ALL ON SCHEMA {} FROM {}").format(sql.Identifier(schema), role))
        for schema in schemas:
            conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), role))
        for name in sorted(readable - set(_granted_relations(conn, privilege="SELECT"))):
            conn.execute(sql.SQL("GRANT SELECT ON TABLE {} TO {}").format(qualified_name(name), role))
        sync_policies(conn, declared)
    return relations


def verify(conn: psycopg.Connection, schemas: Sequence[str], declared: Sequence[SourceTable]) -> None:
    """Refuse to run a transform when a table it may read lost its tenant isolation since `apply`."""
    granted = set(_granted_relations(conn, privilege="SELECT"))
    broken = [r for r in audit(conn, schemas, declared) if r.name in granted and not r.readable]
    if broken:
        first = broken[0]
        raise SourceIsolationError(
            f"source {first.kind} {first.name} is readable by transforms but no longer tenant-isolated: "
            f"{first.problem}; then run `feature-store apply` again"
        )


def _granted_relations(conn: psycopg.Connection, *, privilege: str | None = None) -> list[str]:
    """Relations on which the sandbox role holds a privilege of its own."""
    rows = conn.execute(
        "SELECT DISTINCT n.nspname || '.' || c.relname FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace, aclexplode(c.relacl) a"
        " WHERE a.grantee = (SELECT oid FROM pg_roles WHERE rolname = %s)"
        " AND (%s::text IS NULL OR a.privilege_type = %s)",
        (SANDBOX_ROLE, privilege, privilege),
    ).fetchall()
    return [str(r[0]) for r in rows]


def _granted_schemas(conn: psycopg.Connection) -> list[str]:
    rows = conn.execute(
        "SELECT n.nspname FROM pg_namespace n, aclexplode(n.nspacl) a"
        " WHERE a.grantee = (SELECT oid FROM pg_roles WHERE rolname = %s)",
        (SANDBOX_ROLE,),
    ).fetchall()
    return [str(r[0]) for r in rows]
