"""Models of reads: online values with their status (columnar `OnlineFeatures`), and point-in-time training rows."""

from __future__ import annotations

import enum
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

from pydantic import BaseModel

from feature_store.types import FeatureValue


class OnlineValueStatus(str, enum.Enum):
    PRESENT = "present"
    MISSING = "missing"
    EXPIRED = "expired"
    INVALID = "invalid"
    """An on-demand value its feature's rules refuse (the value is left out)."""


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


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class OnlineFeatures:
    """An online read, columnar: for each requested feature, one value per entity, in request order.

    A read of 100 entities x 5 features is 500 values; building an object per value would cost more
    than the read itself, so values stay in plain lists (event times as microseconds) and rows
    (`OnlineFeatureRow`, pydantic) are built only when asked for: `features[i]`, iteration, `rows()`.
    """

    __slots__ = ("_event_us", "_status", "_values", "entity_ids", "features")

    def __init__(self, entity_ids: Sequence[str], features: Sequence[str]) -> None:
        self.entity_ids = list(entity_ids)
        self.features = list(features)
        self._values: dict[str, list[FeatureValue]] = {}
        self._event_us: dict[str, list[int | None]] = {}
        self._status: dict[str, list[OnlineValueStatus]] = {}

    def set_column(
        self,
        feature: str,
        values: list[FeatureValue],
        event_us: list[int | None],
        status: list[OnlineValueStatus],
    ) -> None:
        """Fill one feature's column (one entry per entity); what a backend's read does."""
        self._values[feature], self._event_us[feature], self._status[feature] = values, event_us, status

    def column(self, feature: str) -> tuple[list[FeatureValue], list[int | None], list[OnlineValueStatus]]:
        """One feature's (values, event times in microseconds, statuses), as `set_column` takes them."""
        return self._values[feature], self._event_us[feature], self._status[feature]

    def values(self, feature: str) -> list[FeatureValue]:
        """The feature's values, one per entity (None where missing or expired)."""
        return self._values[feature]

    def statuses(self, feature: str) -> list[OnlineValueStatus]:
        return self._status[feature]

    def event_times(self, feature: str) -> list[datetime | None]:
        return [None if us is None else _EPOCH + timedelta(microseconds=us) for us in self._event_us[feature]]

    def get(self, index: int, feature: str) -> OnlineValue:
        us = self._event_us[feature][index]
        return OnlineValue(
            value=self._values[feature][index],
            event_time=None if us is None else _EPOCH + timedelta(microseconds=us),
            status=self._status[feature][index],
        )

    def rows(self) -> list[OnlineFeatureRow]:
        return [self[i] for i in range(len(self.entity_ids))]

    def to_dict(self) -> dict[str, Any]:
        """The read as JSON-ready columns (what the HTTP server and `--json` print)."""
        return {
            "entity_ids": self.entity_ids,
            "features": {
                f: {
                    "values": self._values[f],
                    "statuses": [s.value for s in self._status[f]],
                    "event_times": [t.isoformat() if t else None for t in self.event_times(f)],
                }
                for f in self.features
            },
        }

    def __len__(self) -> int:
        return len(self.entity_ids)

    def __getitem__(self, index: int) -> OnlineFeatureRow:
        return OnlineFeatureRow(
            entity_id=self.entity_ids[index], features={f: self.get(index, f) for f in self.features}
        )

    def __iter__(self) -> Iterator[OnlineFeatureRow]:
        return (self[i] for i in range(len(self.entity_ids)))
