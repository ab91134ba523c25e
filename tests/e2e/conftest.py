"""End-to-end tests: a test that fails while an Airflow stack runs reports the components' logs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from e2e_stack import Stack


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome: Any = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    for value in getattr(item, "funcargs", {}).values():
        if isinstance(value, Stack):
            report.sections.append(("Airflow component logs", value.logs()))
