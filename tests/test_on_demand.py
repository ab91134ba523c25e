"""On-demand features: computed at read time from fresh stored inputs and request data, checked by their rules."""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import pytest
from test_stream import T0, feedback

from feature_store import FeatureStore
from feature_store.errors import DefinitionError, OnDemandError
from feature_store.serving.models import OnlineValueStatus
from feature_store.stores.online.base import OnlineWrite
from featurepipe_demo import demo_repo_path

SCORE = "user_live_scores:engagement_score"
BUDGET = "user_live_scores:reply_token_budget"


def set_message_count(store: FeatureStore, user: str, count: int) -> None:
    store.online.write_values(
        tenant_id="acme",
        group_id="user_engagement",
        values=[OnlineWrite(user, "message_count", T0, count)],
        ttl_seconds=None,
        write_time_us=time.time_ns() // 1000,
    )


def test_batch_stream_and_on_demand_features_in_one_read(store: FeatureStore) -> None:
    set_message_count(store, "u1", 9)
    store.handle_event(feedback("f1", 4))
    read = store.get_online_features(
        "acme", "user", ["u1", "u2"], ["user_engagement:message_count", "user_realtime:feedback_tendency", SCORE]
    )
    assert read.values("user_engagement:message_count") == [9, None]
    assert read.values("user_realtime:feedback_tendency") == [0.3 * 4, None]
    # u2 has neither input: no messages gives 0 whatever the (neutral) tendency.
    assert read.values(SCORE) == [round(math.log1p(9) * 0.3 * 4 / 2, 6), 0.0]
    assert read.statuses(SCORE) == [OnlineValueStatus.PRESENT, OnlineValueStatus.PRESENT]
    assert read.event_times(SCORE) == [T0, None]


def test_on_demand_values_follow_fresh_inputs(store: FeatureStore) -> None:
    set_message_count(store, "u1", 3)
    before = store.get_online_features("acme", "user", ["u1"], [SCORE]).values(SCORE)
    store.handle_event(feedback("f1", 5))
    after = store.get_online_features("acme", "user", ["u1"], [SCORE]).values(SCORE)
    assert before == [round(math.log1p(3) * 2.5 / 2, 6)]
    assert after == [round(math.log1p(3) * 1.5 / 2, 6)]


def test_request_data_reaches_the_function(store: FeatureStore) -> None:
    store.handle_event(feedback("f1", 1, user="grumpy"))
    read = store.get_online_features("acme", "user", ["grumpy", "u9"], [BUDGET], request_data={"max_tokens": 800})
    assert read.values(BUDGET) == [400, 800]
    with pytest.raises(OnDemandError, match=r"user_live_scores:reply_token_budget needs request data max_tokens"):
        store.get_online_features("acme", "user", ["u9"], [BUDGET])


def test_a_function_that_raises_fails_the_read_naming_feature_and_entity(store: FeatureStore) -> None:
    with pytest.raises(
        OnDemandError,
        match=r"tenant 'acme': on-demand feature user_live_scores:reply_token_budget"
        r" \(featurepipe_demo.on_demand:reply_token_budget\) raised for entity 'u1': ValueError: invalid literal",
    ):
        store.get_online_features("acme", "user", ["u1"], [BUDGET], request_data={"max_tokens": "lots"})


def test_a_value_the_rules_refuse_is_invalid(store: FeatureStore) -> None:
    read = store.get_online_features("acme", "user", ["u1"], [BUDGET], request_data={"max_tokens": -5})
    assert read.values(BUDGET) == [None]
    assert read.statuses(BUDGET) == [OnlineValueStatus.INVALID]


def test_apply_checks_functions_and_inputs(store: FeatureStore, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(demo_repo_path(), repo)
    text = (repo / "realtime.yaml").read_text()
    text = text.replace("on_demand:engagement_score", "on_demand:no_such_function")
    text = text.replace("inputs: [user_realtime:feedback_tendency]", "inputs: [conversation_realtime:message_count]")
    (repo / "realtime.yaml").write_text(text)
    with pytest.raises(DefinitionError) as failed:
        store.apply(repo)
    message = str(failed.value)
    assert (
        "feature 'engagement_score': on_demand.function: cannot load featurepipe_demo.on_demand:no_such_function"
        in message
    )
    assert (
        "feature 'reply_token_budget': on_demand.inputs: 'conversation_realtime:message_count' is a conversation"
        " feature, not user" in message
    )
