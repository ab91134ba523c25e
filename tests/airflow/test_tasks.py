"""How a run picks its window, the DAG's only piece of logic of its own."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest

from feature_store import TimeWindow

pytestmark = pytest.mark.airflow


def utc(hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 11, 25, hour, minute, tzinfo=timezone.utc)


def context(interval_start: datetime, interval_end: datetime, **params: Any) -> dict[str, Any]:
    return {
        "params": {"start": None, "end": None, **params},
        "data_interval_start": interval_start,
        "data_interval_end": interval_end,
    }


def test_scheduled_and_backfill_runs_use_their_data_interval() -> None:
    from featurepipe_airflow.tasks import resolve_window

    assert resolve_window(context(utc(9), utc(10))) == TimeWindow(start=utc(9), end=utc(10))


def test_a_manual_run_with_a_zero_width_interval_takes_the_last_complete_hour() -> None:
    from featurepipe_airflow.tasks import resolve_window

    assert resolve_window(context(utc(10, 37), utc(10, 37))) == TimeWindow(start=utc(9), end=utc(10))


def test_explicit_start_and_end_params_win() -> None:
    from featurepipe_airflow.tasks import resolve_window

    window = resolve_window(context(utc(9), utc(10), start="2026-11-24T00:00:00Z", end="2026-11-24T06:00:00+00:00"))
    assert window == TimeWindow(
        start=datetime(2026, 11, 24, tzinfo=timezone.utc), end=datetime(2026, 11, 24, 6, tzinfo=timezone.utc)
    )


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"start": "2026-11-24T00:00:00Z"}, "start and end must be given together"),
        ({"start": "2026-11-24T00:00:00", "end": "2026-11-24T01:00:00"}, "has no time zone"),
        ({"start": "2026-11-24T02:00:00Z", "end": "2026-11-24T01:00:00Z"}, "is not before end"),
    ],
)
def test_bad_window_params_are_named(params: dict[str, str], message: str) -> None:
    from featurepipe_airflow.tasks import resolve_window

    with pytest.raises(ValueError, match=message):
        resolve_window(context(utc(9), utc(10), **params))
