"""API sources: JSON pulled from an HTTP API for a tenant and window, landed into a source table.

A source is declared in the repo's `api_sources:` (URL template, auth, pagination, rate limit, field
mapping to typed columns). Landing fetches every page first (httpx; 429, 5xx, timeouts and dropped
connections retried with exponential backoff), checks and converts every record, and only then
replaces the (tenant, window)'s rows in one transaction: a window that failed lands nothing and keeps
what an earlier landing left. The table is tenant-isolated (row-level security on `tenant_id`), so
transforms read it like any source table.
"""

from __future__ import annotations

import contextlib
import enum
import random
import time
from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import quote

import httpx
import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb
from pydantic import BaseModel, Field, TypeAdapter, field_validator, model_validator

from feature_store.db import qualified_name
from feature_store.definitions.models import ColumnName, Identifier, QualifiedName, StrictModel
from feature_store.errors import ApiSourceError
from feature_store.pipeline.sandbox import SANDBOX_ROLE, SCOPE_FUNCTION
from feature_store.windows import TimeWindow

ENV_NAME = Annotated[str, Field(pattern=r"^[A-Z_][A-Z0-9_]{0,127}$")]
URL_FIELDS = ("tenant_id", "start_time", "end_time")
"""What a URL template may refer to: `{tenant_id}`, `{start_time}`, `{end_time}` (ISO 8601, URL-encoded)."""

MAX_RETRY_AFTER_S = 60.0
"""Longest a 429's Retry-After is honoured; a longer one waits this long."""


class ColumnType(str, enum.Enum):
    STRING = "string"
    INT64 = "int64"
    FLOAT64 = "float64"
    BOOL = "bool"
    TIMESTAMP = "timestamp"


_SQL_TYPES = {
    ColumnType.STRING: "text",
    ColumnType.INT64: "bigint",
    ColumnType.FLOAT64: "double precision",
    ColumnType.BOOL: "boolean",
    ColumnType.TIMESTAMP: "timestamptz",
}


class ApiField(StrictModel):
    """A column of the landed table, taken from a record's value at `path` (dots go into objects)."""

    path: str = Field(min_length=1)
    type: ColumnType
    required: bool = True
    """A record without the value (or with null) is an error; else the column is NULL."""


class ApiAuth(StrictModel):
    """A bearer token (or a named header), from an Airflow connection's password or an environment variable."""

    type: Literal["bearer", "header"] = "bearer"
    header: str = "Authorization"
    connection: Identifier | None = None
    token_env: ENV_NAME | None = None

    @model_validator(mode="after")
    def _one_source(self) -> ApiAuth:
        if (self.connection is None) == (self.token_env is None):
            raise ValueError("auth needs exactly one of connection and token_env")
        return self


class Pagination(StrictModel):
    """`page`: `?{param}=1,2,...` until a page has fewer than `size` records; `cursor`: the response's
    value at `cursor_path` goes into `?{param}=` until it is missing or null."""

    type: Literal["page", "cursor"]
    param: str = "page"
    size_param: str | None = None
    size: int = Field(default=100, gt=0)
    cursor_path: str | None = None

    @model_validator(mode="after")
    def _cursor_path(self) -> Pagination:
        if self.type == "cursor" and not self.cursor_path:
            raise ValueError("cursor pagination needs cursor_path (where the next cursor is in a response)")
        return self


class ApiSource(StrictModel):
    name: Identifier
    table: QualifiedName
    """Landed into; `apply` creates it (tenant_id, window_start, window_end, the fields, landed_at)."""
    url: str = Field(pattern=r"^https?://")
    records_path: str = ""
    """Where the records are in a response (dots go into objects); empty: the response is the list."""
    fields: dict[ColumnName, ApiField] = Field(min_length=1)
    auth: ApiAuth | None = None
    pagination: Pagination | None = None
    rate_limit_per_second: float | None = Field(default=None, gt=0)
    max_retries: int = Field(default=5, ge=0, le=20)
    backoff_seconds: float = Field(default=0.5, ge=0)
    timeout_seconds: float = Field(default=10.0, gt=0)
    max_pages: int = Field(default=1000, gt=0)

    @field_validator("url")
    @classmethod
    def _known_placeholders(cls, url: str) -> str:
        try:
            url.format(**{name: "x" for name in URL_FIELDS})
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"url may only refer to {', '.join('{' + f + '}' for f in URL_FIELDS)}: {exc}") from None
        return url

    @field_validator("fields")
    @classmethod
    def _no_reserved_columns(cls, fields: dict[str, ApiField]) -> dict[str, ApiField]:
        reserved = {"tenant_id", "window_start", "window_end", "landed_at"} & set(fields)
        if reserved:
            raise ValueError(f"{', '.join(sorted(reserved))} are columns the landing fills itself; rename the field")
        return fields


API_SOURCES = TypeAdapter(list[ApiSource])


class LandingResult(BaseModel):
    """What landing one API source for one tenant and window did: rows landed, or why none were."""

    source: str
    tenant_id: str
    rows: int
    error: str | None


# -- registry -----------------------------------------------------------------------------------------


def store_sources(conn: psycopg.Connection, sources: list[ApiSource]) -> None:
    """Replace the stored API source declarations with the repo's."""
    conn.execute("DELETE FROM feature_store.api_sources WHERE name <> ALL(%s)", ([s.name for s in sources],))
    for source in sources:
        conn.execute(
            "INSERT INTO feature_store.api_sources (name, definition) VALUES (%s, %s)"
            " ON CONFLICT (name) DO UPDATE SET definition = excluded.definition, updated_at = now()",
            (source.name, Jsonb(source.model_dump(mode="json"))),
        )


def load_sources(conn: psycopg.Connection) -> list[ApiSource]:
    rows = conn.execute("SELECT definition FROM feature_store.api_sources ORDER BY name").fetchall()
    return API_SOURCES.validate_python([r[0] for r in rows])


def create_table(conn: psycopg.Connection, source: ApiSource) -> None:
    """Create the landing table unless it exists, tenant-isolated for transforms (row-level security)."""
    table = qualified_name(source.table)
    columns = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(name), sql.SQL(_SQL_TYPES[f.type])) for name, f in source.fields.items()
    )
    conn.execute(
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {table} (tenant_id text NOT NULL, window_start timestamptz NOT NULL,"
            " window_end timestamptz NOT NULL, {columns}, landed_at timestamptz NOT NULL DEFAULT now())"
        ).format(table=table, columns=columns)
    )
    conn.execute(
        sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (tenant_id, window_start, window_end)").format(
            sql.Identifier(f"{source.table.split('.')[1]}_window"), table
        )
    )
    conn.execute(sql.SQL("ALTER TABLE {} ENABLE ROW LEVEL SECURITY").format(table))
    conn.execute(sql.SQL("DROP POLICY IF EXISTS tenant_isolation ON {}").format(table))
    conn.execute(
        sql.SQL("CREATE POLICY tenant_isolation ON {} FOR SELECT TO {} USING (tenant_id = (SELECT {}))").format(
            table, sql.Identifier(SANDBOX_ROLE), sql.SQL(SCOPE_FUNCTION)
        )
    )


# -- landing ------------------------------------------------------------------------------------------


def land(
    conn: psycopg.Connection,
    source: ApiSource,
    *,
    tenant_id: str,
    window: TimeWindow,
    token: str | None = None,
    transport: httpx.BaseTransport | None = None,
) -> int:
    """Fetch the (tenant, window)'s records and replace its rows in the source table; returns the rows.

    Raises ApiSourceError (nothing landed) when the API fails past the retries or a record does not fit."""
    rows = fetch(source, tenant_id=tenant_id, window=window, token=token, transport=transport)
    table = qualified_name(source.table)
    names = list(source.fields)
    with conn.transaction():
        conn.execute(
            sql.SQL("DELETE FROM {} WHERE tenant_id = %s AND window_start = %s AND window_end = %s").format(table),
            (tenant_id, window.start, window.end),
        )
        copy_sql = sql.SQL("COPY {} (tenant_id, window_start, window_end, {}) FROM STDIN").format(
            table, sql.SQL(", ").join(map(sql.Identifier, names))
        )
        with conn.cursor() as cur, cur.copy(copy_sql) as copy:
            for row in rows:
                copy.write_row((tenant_id, window.start, window.end, *row))
    return len(rows)


def fetch(
    source: ApiSource,
    *,
    tenant_id: str,
    window: TimeWindow,
    token: str | None = None,
    transport: httpx.BaseTransport | None = None,
) -> list[tuple[Any, ...]]:
    """Every record of every page, converted to the declared column types (one tuple per record)."""
    where = f"({window.start.isoformat()}, {window.end.isoformat()}]"

    def fail(message: str, *, retryable: bool = False) -> ApiSourceError:
        return ApiSourceError(
            source=source.name, tenant_id=tenant_id, window=where, message=message, retryable=retryable
        )

    url = source.url.format(
        tenant_id=quote(tenant_id, safe=""),
        start_time=quote(window.start.isoformat(), safe=""),
        end_time=quote(window.end.isoformat(), safe=""),
    )
    headers = {}
    if source.auth is not None:
        if not token:
            raise fail("its auth needs a token and none was given (check the connection or environment variable)")
        headers[source.auth.header] = f"Bearer {token}" if source.auth.type == "bearer" else token
    limiter = _RateLimiter(source.rate_limit_per_second)
    rows: list[tuple[Any, ...]] = []
    # The template's own query goes with every page's (httpx would replace it by `params`).
    parsed = httpx.URL(url)
    params: dict[str, Any] = dict(parsed.params.multi_items())
    url = str(parsed.copy_with(query=None))
    page = source.pagination
    if page and page.type == "page":
        params[page.param] = 1
        if page.size_param:
            params[page.size_param] = page.size
    with httpx.Client(timeout=source.timeout_seconds, transport=transport, headers=headers) as client:
        for number in range(1, source.max_pages + 1):
            body = _get(client, url, params, source, limiter, fail, number)
            records = _at(body, source.records_path)
            if not isinstance(records, list):
                found = type(records).__name__ if records is not _MISSING else "nothing"
                raise fail(
                    f"page {number}: expected a list of records at {source.records_path or 'the top level'!r},"
                    f" found {found}"
                )
            for i, record in enumerate(records):
                rows.append(_convert(record, source, fail, f"page {number}, record {i + 1}"))
            if page is None:
                return rows
            if page.type == "page":
                if len(records) < page.size:
                    return rows
                params[page.param] = number + 1
            else:
                assert page.cursor_path is not None
                cursor = _at(body, page.cursor_path)
                if cursor is _MISSING or cursor is None or cursor == "":
                    return rows
                params[page.param] = cursor
    raise fail(f"more than max_pages ({source.max_pages}) pages; raise max_pages if the API really has that many")


def _get(
    client: httpx.Client,
    url: str,
    params: dict[str, Any],
    source: ApiSource,
    limiter: _RateLimiter,
    fail: Any,
    page: int,
) -> Any:
    """One page as parsed JSON, retried on 429, 5xx, timeouts and transport errors with backoff."""
    problem = ""
    for attempt in range(source.max_retries + 1):
        if attempt:
            time.sleep(_backoff(source.backoff_seconds, attempt, problem))
        limiter.wait()
        try:
            response = client.get(url, params=params)
        except httpx.TimeoutException:
            problem = f"timed out after {source.timeout_seconds:g} s"
            continue
        except httpx.TransportError as exc:  # no URL in the text: it may hold a token
            problem = f"connection failed ({type(exc).__name__})"
            continue
        if response.status_code == 429 or response.status_code >= 500:
            problem = f"HTTP {response.status_code}"
            if response.status_code == 429:
                problem += f" (Retry-After {response.headers.get('Retry-After', 'none')})"
            continue
        if response.status_code >= 400:
            raise fail(f"page {page}: HTTP {response.status_code} (not retried: the request itself is refused)")
        try:
            return response.json()
        except ValueError:
            shown = response.text[:80].replace("\n", " ")
            raise fail(f"page {page}: the response is not JSON (starts {shown!r})") from None
    raise fail(f"page {page}: gave up after {source.max_retries + 1} attempts; last: {problem}", retryable=True)


def _backoff(base: float, attempt: int, problem: str) -> float:
    """Exponential backoff with jitter; a 429's Retry-After (seconds) when longer."""
    delay = base * 2 ** (attempt - 1) * (0.5 + random.random() / 2)
    if "Retry-After " in problem:
        value = problem.rsplit("Retry-After ", 1)[1].rstrip(")")
        with contextlib.suppress(ValueError):
            delay = max(delay, min(float(value), MAX_RETRY_AFTER_S))
    return delay


class _RateLimiter:
    """At most `per_second` requests a second: each waits until 1/per_second after the previous one."""

    def __init__(self, per_second: float | None) -> None:
        self._interval = 1 / per_second if per_second else 0.0
        self._next = 0.0

    def wait(self) -> None:
        now = time.monotonic()
        if now < self._next:
            time.sleep(self._next - now)
        self._next = max(now, self._next) + self._interval


_MISSING = object()


def _at(value: Any, path: str) -> Any:
    if not path:
        return value
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            return _MISSING
        value = value[key]
    return value


def _convert(record: Any, source: ApiSource, fail: Any, where: str) -> tuple[Any, ...]:
    """The record's declared fields as column values; `fail(message)` builds the error naming `where`."""
    if not isinstance(record, dict):
        raise fail(f"{where}: expected an object, found {type(record).__name__}")
    values: list[Any] = []
    for name, f in source.fields.items():
        raw = _at(record, f.path)
        if raw is _MISSING or raw is None:
            if f.required:
                raise fail(f"{where}: field {name!r} ({f.path}) is missing or null")
            values.append(None)
            continue
        try:
            values.append(_typed(raw, f.type))
        except (TypeError, ValueError):
            raise fail(f"{where}: field {name!r} ({f.path}) value {str(raw)[:60]!r} is not a {f.type.value}") from None
    return tuple(values)


def _typed(raw: Any, column: ColumnType) -> Any:
    if column is ColumnType.STRING:
        if not isinstance(raw, str):
            raise TypeError
        return raw
    if column is ColumnType.BOOL:
        if not isinstance(raw, bool):
            raise TypeError
        return raw
    if isinstance(raw, bool):
        raise TypeError
    if column is ColumnType.INT64:
        if isinstance(raw, float) and raw.is_integer():
            raw = int(raw)
        if not isinstance(raw, int) or not -(2**63) <= raw < 2**63:
            raise TypeError
        return raw
    if column is ColumnType.FLOAT64:
        if not isinstance(raw, int | float):
            raise TypeError
        return float(raw)
    if not isinstance(raw, str):
        raise TypeError
    parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError
    return parsed
