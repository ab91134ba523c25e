"""Time windows `(start, end]`: what a job reads and replaces, cut at the schedule's hours in full mode."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta, timezone

from pydantic import field_validator, model_validator

from feature_store.definitions.models import StrictModel

SCHEDULE = timedelta(hours=1)
"""The DAG's schedule: windows of one hour, on whole hours."""


def require_utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("timestamps must carry a time zone (e.g. 2026-01-01T00:00:00Z)")
    return value.astimezone(timezone.utc)


class TimeWindow(StrictModel):
    """A materialization window `(start, end]`: a window owns the feature rows stamped inside it."""

    start: datetime
    end: datetime

    _utc_start = field_validator("start")(require_utc)
    _utc_end = field_validator("end")(require_utc)

    @model_validator(mode="after")
    def _ordered(self) -> TimeWindow:
        if self.start >= self.end:
            raise ValueError(f"window start {self.start.isoformat()} is not before end {self.end.isoformat()}")
        return self

    def schedule_windows(self) -> list[TimeWindow]:
        """This window cut at every whole hour (the DAG's schedule), oldest first: what full mode recomputes."""
        cuts = [self.start]
        hour = self.start.replace(minute=0, second=0, microsecond=0) + SCHEDULE
        while hour < self.end:
            cuts.append(hour)
            hour += SCHEDULE
        cuts.append(self.end)
        return [TimeWindow(start=a, end=b) for a, b in itertools.pairwise(cuts)]

    def schedule_window_count(self) -> int:
        """How many schedule windows `schedule_windows` returns, without building them."""
        first = self.start.replace(minute=0, second=0, microsecond=0) + SCHEDULE
        if first >= self.end:
            return 1
        return 2 + int((self.end - first - timedelta(microseconds=1)) // SCHEDULE)

    @classmethod
    def last_complete_hour(cls, now: datetime | None = None) -> TimeWindow:
        end = (now or datetime.now(timezone.utc)).astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0)
        return cls(start=end - timedelta(hours=1), end=end)
