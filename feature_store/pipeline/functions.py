"""Function features: a Python function over batches of its SQL's rows, its output COPY'd into staging.

The SQL runs in the sandbox like every feature's (READ ONLY, rolled back, scoped to one tenant) and
its rows stream out through a server-side cursor, `BATCH_SIZE` at a time; the function runs here, in
the task process, and what it yields for a batch is COPY'd into staging before the next batch is
fetched. Memory is bounded by a batch, whatever the number of rows. The staged rows then go through
the same validation, quarantine, window and online rules as a SQL feature's.

The function's module source comes from the registry (read from the repo's folder at apply), so
every worker runs the code that was applied. It is the repo's own code, trusted like a DAG file; the
untrusted part, the SQL, stays in the sandbox.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql

from feature_store.definitions.models import FeatureDefinition, ValueType
from feature_store.errors import FeatureStoreError
from feature_store.pipeline.sandbox import SandboxSession
from feature_store.windows import TimeWindow

BATCH_SIZE = 5000
"""Source rows per batch handed to a function (and fetched per round trip from the sandbox)."""

_ROW_SHOWN = 300  # characters of an offending input row quoted in an error


@dataclass(frozen=True)
class Batch:
    """Rows of a function feature's SQL, typed as psycopg reads them (int, float, Decimal, str, datetime...)."""

    columns: tuple[str, ...]
    rows: list[tuple[Any, ...]]
    tenant_id: str
    window: TimeWindow

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def dicts(self) -> Iterator[dict[str, Any]]:
        """The rows as column -> value mappings."""
        return (dict(zip(self.columns, row, strict=True)) for row in self.rows)


FeatureFunction = Callable[[Batch], Iterable[tuple[Any, ...]]]
"""Takes a batch, yields (entity_id, value) or (entity_id, value, event_time) tuples."""


class FunctionFeatureError(FeatureStoreError):
    """A function feature could not be loaded, raised, or yielded something that is not a feature row."""

    def __init__(self, feature: FeatureDefinition, message: str, *, tenant_id: str | None = None) -> None:
        scope = f" for tenant {tenant_id!r}" if tenant_id is not None else ""
        super().__init__(f"function {feature.function} of feature {feature.name!r}{scope}: {message}")


_loaded: dict[str, FeatureFunction] = {}


def load(feature: FeatureDefinition) -> FeatureFunction:
    """The feature's function, from the module source stored with its definition (cached per source)."""
    assert feature.function is not None
    source = feature.function_source or ""
    digest = hashlib.sha256(f"{feature.function}\0{source}".encode()).hexdigest()[:16]
    if digest in _loaded:
        return _loaded[digest]
    module, attribute = feature.function.split(":", 1)
    namespace: dict[str, Any] = {"__name__": f"featurepipe_functions.{module}_{digest}"}
    try:
        exec(compile(source, f"{module.replace('.', '/')}.py (feature repo)", "exec"), namespace)
    except Exception as exc:
        raise FunctionFeatureError(feature, f"its module failed to load: {type(exc).__name__}: {exc}") from exc
    function = namespace.get(attribute)
    if not callable(function):
        raise FunctionFeatureError(feature, f"module {module} has no function {attribute!r}")
    _loaded[digest] = function
    return function


def pipe(
    session: SandboxSession,
    conn: psycopg.Connection,
    feature: FeatureDefinition,
    query: str,
    params: dict[str, Any],
    partition: sql.Composed,
    *,
    tenant_id: str,
    window: TimeWindow,
) -> int:
    """Run one window's SQL in the sandbox, the function over its batches, and COPY the output into staging."""
    function = load(feature)
    copy_in = sql.SQL(
        "COPY {} (feature_name, entity_id, event_time, value, window_start, window_end) FROM STDIN"
    ).format(partition)
    staged = 0
    fixed = (_escape(feature.name), window.start.isoformat(), window.end.isoformat())
    with conn.cursor() as dest, dest.copy(copy_in) as writer:
        for columns, rows in session.batches(query, params, size=BATCH_SIZE):
            batch = Batch(columns=columns, rows=rows, tenant_id=tenant_id, window=window)
            outputs = _run(function, feature, batch)
            # One block of COPY text per batch: formatting rows here is several times faster than write_row.
            writer.write("".join(_copy_line(feature, output, window, tenant_id, fixed) for output in outputs))
            staged += len(outputs)
    return staged


def _run(function: FeatureFunction, feature: FeatureDefinition, batch: Batch) -> list[tuple[Any, ...]]:
    """The function's output for a batch; if it raises, the error names the input row that makes it raise."""
    try:
        return list(function(batch))
    except Exception as exc:
        row = _offending_row(function, batch)
        where = f"on input row {_show(batch.columns, row)}" if row is not None else f"on a batch of {len(batch)} rows"
        raise FunctionFeatureError(
            feature,
            f"raised {type(exc).__name__}: {exc} {where} (window {batch.window.start.isoformat()} to"
            f" {batch.window.end.isoformat()})",
            tenant_id=batch.tenant_id,
        ) from exc


def _offending_row(function: FeatureFunction, batch: Batch) -> tuple[Any, ...] | None:
    """The first row that makes the function raise on its own (None if only the batch as a whole does)."""
    for row in batch.rows:
        try:
            list(function(Batch(columns=batch.columns, rows=[row], tenant_id=batch.tenant_id, window=batch.window)))
        except Exception:
            return row
    return None


def _show(columns: tuple[str, ...], row: tuple[Any, ...]) -> str:
    text = repr(dict(zip(columns, row, strict=True)))
    return text if len(text) <= _ROW_SHOWN else text[: _ROW_SHOWN - 3] + "..."


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _escape(text: str) -> str:
    """A value in COPY's text format."""
    return text.translate(_COPY_ESCAPES)


def _copy_line(
    feature: FeatureDefinition, output: Any, window: TimeWindow, tenant_id: str, fixed: tuple[str, str, str]
) -> str:
    """A COPY text line (feature, entity, event time, value, window) from one output tuple of the function."""
    if not isinstance(output, tuple | list) or len(output) not in (2, 3):
        raise FunctionFeatureError(
            feature,
            f"yielded {output!r:.200}; it must yield (entity_id, value) or (entity_id, value, event_time)",
            tenant_id=tenant_id,
        )
    entity_id, value = output[0], output[1]
    event_time = output[2] if len(output) == 3 else window.end
    if not isinstance(event_time, datetime) or event_time.tzinfo is None:
        raise FunctionFeatureError(
            feature,
            f"yielded event_time {event_time!r} for entity {entity_id!r}; it must be a datetime with a time zone",
            tenant_id=tenant_id,
        )
    staged = _json_value(value, feature.value_type)
    name, start, end = fixed
    entity = "\\N" if entity_id is None else _escape(str(entity_id))
    json_text = "\\N" if staged is None else _escape(json.dumps(staged))
    return f"{name}\t{entity}\t{event_time.isoformat()}\t{json_text}\t{start}\t{end}\n"


def _json_value(value: Any, value_type: ValueType) -> Any:
    """The value as staged, like a SQL feature's: of the declared type where it is one, else as it is
    (text for what JSON cannot hold), for validation's value_type rule to quarantine."""
    if value is None:
        return None
    if isinstance(value, Decimal):
        value = int(value) if value_type is ValueType.INT64 and value == value.to_integral_value() else float(value)
    if value_type is ValueType.STRING:
        return value if isinstance(value, str) else str(value)
    if value_type is ValueType.FLOAT64 and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str | int | float | bool):
        return value
    return str(value)
