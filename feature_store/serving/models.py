"""Pydantic models of reads: online values with their status, and point-in-time training rows."""

from __future__ import annotations

import enum
from datetime import datetime

from pydantic import BaseModel

from feature_store.types import FeatureValue

# -- Reads ---------------------------------------------------------------------------------------


class OnlineValueStatus(str, enum.Enum):
    PRESENT = "present"
    MISSING = "missing"
    EXPIRED = "expired"


class OnlineValue(BaseModel):
    value: FeatureValue = None
    event_time: datetime | None = None
    status: OnlineValueStatus = OnlineValueStatus.MISSING


class OnlineFeatureRow(BaseModel):
    """One requested entity: a value (or an explicit missing marker) for every requested feature."""

    entity_id: str
    features: dict[str, OnlineValue]


class HistoricalRow(BaseModel):
    """One training row: the latest value of each feature at or before `timestamp` (never after)."""

    entity_id: str
    timestamp: datetime
    values: dict[str, FeatureValue]
    event_times: dict[str, datetime | None]
