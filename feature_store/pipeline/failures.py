"""What a failure means: could a retry fix it, and what caused it, in words."""

from __future__ import annotations

import psycopg
import redis

from feature_store.errors import (
    FeatureStoreError,
)
from feature_store.pipeline import transform

# SQLSTATE classes worth a retry: connection, transaction rollback (deadlock, serialization),
# insufficient resources, operator intervention (statement timeout, cancel, terminated backend), system error.
_TRANSIENT_SQLSTATE_CLASSES = ("08", "40", "53", "57", "58")


def is_transient(exc: BaseException) -> bool:
    """Could running the same step again succeed?"""
    exc = database_cause(exc)
    if isinstance(exc, psycopg.Error):
        if exc.sqlstate:
            return exc.sqlstate[:2] in _TRANSIENT_SQLSTATE_CLASSES
        return isinstance(exc, psycopg.OperationalError)  # raised by psycopg itself: the connection is gone
    if isinstance(exc, FeatureStoreError):
        return exc.retryable
    # A Redis that is down, restarting, loading its data or timing out; not a script or command error.
    return isinstance(exc, redis.ConnectionError | redis.TimeoutError)


def describe_failure(exc: BaseException, timeout_s: float | None = None) -> str:
    """The cause of a failure in words, telling apart what a bare SQLSTATE or exception class does not."""
    exc = database_cause(exc)
    if isinstance(exc, psycopg.Error):
        primary = exc.diag.message_primary or (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if isinstance(exc, psycopg.errors.QueryCanceled):
            # 57014 covers both; the server's message says which (PostgreSQL's English texts).
            if "statement timeout" in primary:
                if timeout_s is not None:
                    return f"exceeded the statement timeout of {timeout_s:g}s (FEATURE_STORE_STATEMENT_TIMEOUT)"
                return f"exceeded the database's statement timeout ({primary})"
            if "user request" in primary:
                return f"the statement was cancelled by a cancel request, e.g. pg_cancel_backend ({primary})"
            return f"the statement was cancelled ({primary})"
        if isinstance(exc, psycopg.errors.AdminShutdown):
            return f"the database connection was terminated, e.g. by pg_terminate_backend or a restart ({primary})"
        sqlstate = exc.sqlstate or ""
        if sqlstate.startswith("08") or (not sqlstate and isinstance(exc, psycopg.OperationalError)):
            return f"lost the database connection ({primary})"
        return primary
    if isinstance(exc, redis.TimeoutError):
        return f"Redis did not answer in time ({exc})"
    if isinstance(exc, redis.ConnectionError):
        return f"Redis is unreachable ({exc})"
    return str(exc)


def database_cause(exc: BaseException) -> BaseException:
    """A bad-SQL verdict that was really a database failure (the check of a feature's SQL met a
    terminated connection or a cancel) is that failure."""
    cause = exc.__cause__
    if isinstance(exc, transform.SqlShapeError) and isinstance(cause, psycopg.Error) and is_transient(cause):
        return cause
    return exc


def retry_note(exc: Exception, try_number: int | None) -> str:
    """What a failure that will be retried leaves as the error message meanwhile."""
    after = f"after try {try_number}" if try_number is not None else "after a failed attempt"
    return f"retrying {after}: {exc}"
