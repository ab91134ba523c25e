"""Type aliases shared across modules."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeAlias

FeatureValue: TypeAlias = int | float | str | bool | None
"""A typed feature value as returned by reads (`None` where the store holds no value)."""

FeatureRef: TypeAlias = str
"""A feature named as `group:feature`, e.g. `user_engagement:message_count`."""

ProgressCallback: TypeAlias = Callable[[str], None]
"""Told what the pipeline is doing now ("transform acme/user_engagement/message_count"), e.g. for a progress bar."""
