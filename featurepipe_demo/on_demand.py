"""On-demand feature functions of the demo repo (imported by whoever reads features, e.g. the feature server)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from feature_store.types import FeatureValue


def engagement_score(features: Mapping[str, FeatureValue], request: Mapping[str, Any]) -> FeatureValue:
    """How engaged a user is, 0..10: the last window's messages (log-scaled) weighted by how they rate answers.

    Without a rating yet the tendency counts as neutral (2.5 of 5); without messages the score is 0.
    """
    messages = features["message_count"] or 0
    tendency = features["feedback_tendency"]
    rating = 2.5 if tendency is None else float(tendency)
    return round(min(10.0, math.log1p(float(messages)) * rating / 2), 6)


def reply_token_budget(features: Mapping[str, FeatureValue], request: Mapping[str, Any]) -> FeatureValue:
    """Tokens the assistant may spend on its next reply: the request's limit, halved for users who rate it poorly."""
    tendency = features["feedback_tendency"]
    limit = int(request["max_tokens"])
    return limit // 2 if tendency is not None and float(tendency) < 1.0 else limit
