"""The transform sandbox: feature SQL runs on a connection of its own, as a role that cannot gain privileges.

Feature SQL is untrusted. It runs on a connection whose *session* user is `featurepipe_transform`, a
login role without superuser, memberships or BYPASSRLS (created by `init`), so nothing inside the SQL
(`set_config('role', ...)`, `query_to_xml(...)`, any function) can act with more rights than that
role has: SELECT on the tenant-isolated or shared source tables, in a READ ONLY transaction that is always
rolled back (see `transform`).

The tenant a session may see is not a setting the SQL could change: the feature store's own
connection records (backend pid, backend start, tenant) in `feature_store.sandbox_sessions`, which
the sandbox role cannot write, and source-table policies compare with
`featurepipe_sandbox.current_tenant()`, which reads that row. The statement timeout is enforced from
outside the session too (a watchdog cancels the query), since the SQL could lift its own.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql
from psycopg.abc import Buffer

from feature_store.db import connect
from feature_store.errors import StatementTimeoutError

log = logging.getLogger(__name__)

SANDBOX_ROLE = "featurepipe_transform"
"""Session user of every transform connection (created by the schema migrations)."""

SCOPE_FUNCTION = "featurepipe_sandbox.current_tenant()"
"""What a source table's policy compares its tenant column with."""

# The server-side timeout normally fires first; the watchdog is for SQL that lifted its own.
_WATCHDOG_GRACE_S = 1.0


def sandbox_conninfo(database_url: str, *, password: str | None = None, timeout_s: float | None = None) -> str:
    """The feature store's database, reached as the sandbox role instead of the configured user."""
    params = psycopg.conninfo.conninfo_to_dict(database_url)
    params.pop("password", None)
    params["user"] = SANDBOX_ROLE
    params["application_name"] = "featurepipe-transform"
    if timeout_s is not None:
        params["options"] = f"-c statement_timeout={int(timeout_s * 1000)} -c TimeZone=UTC"
    if password:
        params["password"] = password
    return psycopg.conninfo.make_conninfo(**params)  # type: ignore[arg-type]


class SandboxSession:
    """One sandbox connection, scoped to one tenant for as long as it is open."""

    def __init__(self, conn: psycopg.Connection, *, timeout_s: float) -> None:
        self.conn = conn
        self._timeout_s = timeout_s

    def execute(self, query: Any, params: Mapping[str, Any] | None = None) -> psycopg.Cursor:
        """Run one statement under the statement timeout, enforced from outside the session."""
        with self._watchdog():
            return self.conn.execute(query, params)

    @contextmanager
    def copy_out(self, statement: str, params: Mapping[str, Any]) -> Iterator[Iterator[Buffer]]:
        """Run a `COPY (…) TO STDOUT` under the timeout and yield its data blocks as they arrive."""
        with self._watchdog(), self.conn.cursor() as cur, cur.copy(statement, params) as copy:
            yield iter(copy)

    def batches(
        self, statement: str, params: Mapping[str, Any], *, size: int
    ) -> Iterator[tuple[tuple[str, ...], list[tuple[Any, ...]]]]:
        """Run a query through a server-side cursor and yield (column names, rows) `size` rows at a time.

        Must run inside a transaction (the cursor lives in it); each fetch is under the timeout.
        """
        with self.conn.cursor(name="featurepipe_function_source") as cur:
            with self._watchdog():
                cur.execute(statement, params)
            names = tuple(d.name for d in cur.description or ())
            while True:
                with self._watchdog():
                    rows = cur.fetchmany(size)
                if not rows:
                    return
                yield names, rows

    @contextmanager
    def _watchdog(self) -> Iterator[None]:
        timed_out = threading.Event()

        def cancel() -> None:
            timed_out.set()
            self.conn.cancel_safe(timeout=5)

        watchdog = threading.Timer(self._timeout_s + _WATCHDOG_GRACE_S, cancel)
        watchdog.daemon = True
        watchdog.start()
        try:
            yield
        except psycopg.errors.QueryCanceled as exc:
            if timed_out.is_set() or "statement timeout" in str(exc):
                raise StatementTimeoutError(self._timeout_s) from exc
            raise
        finally:
            watchdog.cancel()


@contextmanager
def sandbox_session(
    admin: psycopg.Connection,
    *,
    database_url: str,
    password: str | None,
    tenant_id: str,
    timeout_s: float,
) -> Iterator[SandboxSession]:
    """Open a sandbox connection that may see `tenant_id`'s rows only, and close it afterwards.

    `admin` is the feature store's own (autocommit) connection: it records the scope, which must be
    committed before the sandbox can see it.
    """
    if admin.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        raise RuntimeError("the sandbox scope must be recorded outside a transaction")
    conn = connect(sandbox_conninfo(database_url, password=password, timeout_s=timeout_s))
    pid = conn.info.backend_pid
    try:
        admin.execute(
            "INSERT INTO feature_store.sandbox_sessions (pid, backend_start, tenant_id)"
            " SELECT a.pid, a.backend_start, %(tenant)s FROM pg_stat_get_activity(%(pid)s) a"
            " ON CONFLICT (pid) DO UPDATE SET backend_start = excluded.backend_start,"
            " tenant_id = excluded.tenant_id, created_at = now()",
            {"pid": pid, "tenant": tenant_id},
        )
        yield SandboxSession(conn, timeout_s=timeout_s)
    finally:
        conn.close()
        try:
            admin.execute("DELETE FROM feature_store.sandbox_sessions WHERE pid = %s", (pid,))
        except psycopg.Error:  # the admin connection died too; the row is harmless (tied to a dead backend)
            log.warning("could not clear the sandbox scope of backend %s", pid)


def set_password(conn: psycopg.Connection, password: str) -> None:
    """Give the sandbox role a password, sent as a SCRAM verifier so the secret never reaches a log."""
    verifier = conn.pgconn.encrypt_password(password.encode(), SANDBOX_ROLE.encode(), b"scram-sha-256")
    conn.execute(
        sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(SANDBOX_ROLE), sql.Literal(verifier.decode()))
    )
