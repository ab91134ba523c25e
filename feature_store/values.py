"""Turning stored JSON values back into typed Python values."""

from __future__ import annotations

import json
from collections.abc import Callable

from feature_store.definitions.models import ValueType
from feature_store.types import FeatureValue

JsonText = str | bytes
"""A value's JSON text as stored (`value::text` of a jsonb, a field of an online hash)."""

_NULLS = ("null", b"null")


def _number(cast: Callable[[JsonText], FeatureValue]) -> Callable[[JsonText], FeatureValue]:
    def parse(raw: JsonText) -> FeatureValue:
        return None if raw in _NULLS else cast(raw)

    return parse


def _int64(raw: JsonText) -> int:
    try:
        return int(raw)
    except ValueError:  # written as 5.0 or 5e0
        return int(float(raw))


def _string(raw: JsonText) -> FeatureValue:
    value = json.loads(raw)
    return None if value is None else str(value)


PARSERS: dict[ValueType, Callable[[JsonText], FeatureValue]] = {
    ValueType.FLOAT64: _number(float),
    ValueType.INT64: _number(_int64),
    ValueType.BOOL: lambda raw: None if raw in _NULLS else raw in ("true", b"true"),
    ValueType.STRING: _string,
}
"""How a value's JSON text becomes its declared type without a general JSON decode (but for strings)."""
