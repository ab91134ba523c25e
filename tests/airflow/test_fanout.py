"""How a run is cut into mapped items: one per tenant while small, tenant shards beyond, within max_map_length."""

from __future__ import annotations

from collections import Counter

import pytest

from featurepipe_airflow.fanout import FanOutError, PlannedJob, fan_out, shard_of

pytestmark = pytest.mark.airflow


def platform(tenants: int, groups: int, features: int) -> list[PlannedJob]:
    names = tuple(f"f{i}" for i in range(features))
    return [
        PlannedJob(job_id=t * groups + g, tenant_id=f"t{t:03d}", group_id=f"g{g}", features=names)
        for t in range(tenants)
        for g in range(groups)
    ]


def test_a_small_run_gets_one_item_per_tenant_group_and_feature() -> None:
    jobs = [PlannedJob(7, "acme", "user_engagement", ("a", "b")), PlannedJob(8, "globex", "user_engagement", ("a",))]
    cut = fan_out(jobs)
    assert cut.work == [
        {"job_ids": [7], "feature": "a", "label": "acme/user_engagement/a"},
        {"job_ids": [7], "feature": "b", "label": "acme/user_engagement/b"},
        {"job_ids": [8], "feature": "a", "label": "globex/user_engagement/a"},
    ]
    assert [(f["job_ids"], f["label"]) for f in cut.finish] == [
        ([7], "acme/user_engagement"),
        ([8], "globex/user_engagement"),
    ]
    assert cut.shards == {} and cut.shard_size is None


def test_a_large_run_groups_tenants_into_shards_near_the_target() -> None:
    jobs = platform(50, 4, 5)  # 1 000 items one per tenant: past the limit's comfort
    cut = fan_out(jobs, target_items=48)
    assert len(cut.work) <= 48 and cut.shard_size == 25
    assert cut.work[0]["label"] == "g0/f0/shard 1 of 2"
    assert [f["label"] for f in cut.finish][:2] == ["g0/shard 1 of 2", "g0/shard 2 of 2"]
    # Every (job, feature) is covered exactly once, and each job belongs to one shard of its group.
    covered = Counter((job_id, w["feature"]) for w in cut.work for job_id in w["job_ids"])
    assert covered == Counter({(j.job_id, f): 1 for j in jobs for f in j.features})
    assert sorted(cut.shards) == sorted(j.job_id for j in jobs)
    assert {shard_of(w["label"]) for w in cut.work} == {1, 2}


def test_five_hundred_tenants_with_forty_features_plan_within_max_map_length() -> None:
    cut = fan_out(platform(500, 4, 10), max_map_length=1024)
    assert 0 < len(cut.work) <= 48 and len(cut.finish) <= 48
    assert sum(len(w["job_ids"]) for w in cut.work) == 500 * 4 * 10


def test_shard_size_can_be_set_and_tenant_granularity_forced() -> None:
    shards = fan_out(platform(5, 1, 2), granularity="shard", shard_size=2)
    assert [w["label"] for w in shards.work] == [
        "g0/f0/shard 1 of 3",
        "g0/f1/shard 1 of 3",
        "g0/f0/shard 2 of 3",
        "g0/f1/shard 2 of 3",
        "g0/f0/shard 3 of 3",
        "g0/f1/shard 3 of 3",
    ]
    per_tenant = fan_out(platform(50, 4, 5), granularity="tenant", max_map_length=5000)
    assert len(per_tenant.work) == 1000


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"granularity": "tenant"},
            r"needs 1000 mapped task instances .* more than Airflow's \[core\] max_map_length of 999",
        ),
        ({"granularity": "shard", "shard_size": 1}, r"AIRFLOW__CORE__MAX_MAP_LENGTH"),
        ({"granularity": "shard"}, r"fanout shard needs shard_size"),
        ({"granularity": "tenants"}, r"fanout 'tenants' is not one of auto, tenant, shard"),
    ],
)
def test_a_plan_that_cannot_fit_says_which_setting_to_change(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(FanOutError, match=message):
        fan_out(platform(50, 4, 5), max_map_length=999, **kwargs)  # type: ignore[arg-type]


def test_even_one_shard_per_group_can_be_too_many_items() -> None:
    with pytest.raises(
        FanOutError, match=r"needs 1200 mapped task instances .* raise it \(AIRFLOW__CORE__MAX_MAP_LENGTH\)"
    ):
        fan_out(platform(3, 1, 1200))
