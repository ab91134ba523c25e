"""Turning stored JSON values back into typed Python values."""

from __future__ import annotations

from feature_store.definitions.models import ValueType
from feature_store.types import FeatureValue


def coerce(value: object, value_type: ValueType) -> FeatureValue:
    """A decoded JSON value as the feature's declared type (`None` stays `None`)."""
    if value is None:
        return None
    if value_type is ValueType.INT64:
        return int(value)  # type: ignore[call-overload]
    if value_type is ValueType.FLOAT64:
        return float(value)  # type: ignore[arg-type]
    if value_type is ValueType.BOOL:
        return bool(value)
    return str(value)
