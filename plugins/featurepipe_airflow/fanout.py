"""How a run's jobs become mapped task items: one per tenant, or one per tenant shard, within Airflow's limits.

A mapped item is one batch feature of one job (`tenant/group/feature`), or of a shard of tenants of
one group (`group/feature/shard 2 of 3`), whose tasks loop over the shard's jobs. `auto` keeps one
item per tenant while the run is small and groups tenants into shards when it is not, so that the
run's task instances stay few enough for their overhead not to dominate the work, and never more
than `[core] max_map_length`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypedDict

GRANULARITIES = ("auto", "tenant", "shard")
SHARD_MARK = "shard "
"""Labels of shard items end in `shard N of M` (a space no tenant id can hold)."""


class WorkItem(TypedDict):
    """One batch feature for one job or a shard of jobs: what a mapped transform/validate/write task runs."""

    job_ids: list[int]
    feature: str
    label: str


class FinishItem(TypedDict):
    """One job, or a shard of jobs, to publish and end: what a mapped finish task runs."""

    job_ids: list[int]
    label: str
    work: list[WorkItem]
    """Its feature items (what `work_items` lists for the mapped feature stages)."""


@dataclass(frozen=True)
class PlannedJob:
    job_id: int
    tenant_id: str
    group_id: str
    features: tuple[str, ...]


@dataclass
class FanOut:
    finish: list[FinishItem] = field(default_factory=list)
    shards: dict[int, int] = field(default_factory=dict)
    """Job id -> shard number, for sharded jobs."""

    shard_size: int | None = None

    @property
    def work(self) -> list[WorkItem]:
        return [w for item in self.finish for w in item["work"]]


class FanOutError(ValueError):
    """The run cannot be cut into few enough mapped items; says which setting to change."""


def fan_out(
    jobs: Sequence[PlannedJob],
    *,
    granularity: str = "auto",
    shard_size: int | None = None,
    max_map_length: int = 1024,
    target_items: int = 48,
) -> FanOut:
    """Cut the jobs into mapped items.

    Args:
        granularity: `tenant` (one item per job and feature), `shard` (tenants of a group in shards of
            `shard_size`), or `auto` (`tenant` while the run needs at most `target_items` items, else
            shards sized so that it needs about that many).
        max_map_length: Airflow's `[core] max_map_length`; no list of items may be longer.
    """
    if granularity not in GRANULARITIES:
        raise FanOutError(f"fanout {granularity!r} is not one of {', '.join(GRANULARITIES)}")
    if shard_size is not None and shard_size < 1:
        raise FanOutError(f"shard_size must be at least 1, not {shard_size}")
    by_group: dict[str, list[PlannedJob]] = {}
    for job in sorted(jobs, key=lambda j: (j.group_id, j.tenant_id)):
        by_group.setdefault(job.group_id, []).append(job)
    per_tenant = sum(len(j.features) for j in jobs)
    if granularity == "tenant" or (granularity == "auto" and max(per_tenant, len(jobs)) <= target_items):
        result = _per_tenant(by_group)
    else:
        if granularity == "shard" and shard_size is None:
            raise FanOutError("fanout shard needs shard_size (tenants per shard)")
        size = shard_size or _auto_shard_size(by_group, target_items=target_items, max_map_length=max_map_length)
        result = _sharded(by_group, size)
    longest = max(len(result.work), len(result.finish))
    if longest > max_map_length:
        raise FanOutError(
            f"this run needs {longest} mapped task instances ({len(result.work)} feature items, {len(result.finish)}"
            f" finish items), more than Airflow's [core] max_map_length of {max_map_length}: raise it"
            " (AIRFLOW__CORE__MAX_MAP_LENGTH), or use fanout=shard with a larger shard_size"
        )
    return result


def _per_tenant(by_group: dict[str, list[PlannedJob]]) -> FanOut:
    result = FanOut()
    for jobs in by_group.values():
        for job in jobs:
            label = f"{job.tenant_id}/{job.group_id}"
            work: list[WorkItem] = [
                {"job_ids": [job.job_id], "feature": f, "label": f"{label}/{f}"} for f in job.features
            ]
            result.finish.append({"job_ids": [job.job_id], "label": label, "work": work})
    return result


def _sharded(by_group: dict[str, list[PlannedJob]], size: int) -> FanOut:
    """Items ordered group, shard, feature: a shard's features run side by side, so its jobs finish early."""
    result = FanOut(shard_size=size)
    for group_id, jobs in by_group.items():
        count = math.ceil(len(jobs) / size)
        for number in range(1, count + 1):
            shard = jobs[(number - 1) * size : number * size]
            ids = [j.job_id for j in shard]
            result.shards.update(dict.fromkeys(ids, number))
            name = f"{SHARD_MARK}{number} of {count}"
            work: list[WorkItem] = [
                {
                    "job_ids": [j.job_id for j in shard if feature in j.features],
                    "feature": feature,
                    "label": f"{group_id}/{feature}/{name}",
                }
                for feature in _features(shard)
            ]
            result.finish.append({"job_ids": ids, "label": f"{group_id}/{name}", "work": work})
    return result


def _features(jobs: Sequence[PlannedJob]) -> list[str]:
    seen: dict[str, None] = {}
    for job in jobs:
        seen.update(dict.fromkeys(job.features))
    return list(seen)


def _auto_shard_size(by_group: dict[str, list[PlannedJob]], *, target_items: int, max_map_length: int) -> int:
    """The smallest shard size that keeps the run near `target_items` feature items (and within the limit)."""
    features = sum(len(_features(jobs)) for jobs in by_group.values())
    widest = max((len(jobs) for jobs in by_group.values()), default=1)
    budget = max(min(target_items, max_map_length), 1)
    shards = max(1, budget // max(features, 1))
    size = math.ceil(widest / shards)
    # Finish items are one per (group, shard): they must fit too.
    while len(by_group) * math.ceil(widest / size) > max_map_length and size < widest:
        size += 1
    return size


def shard_of(label: str) -> int | None:
    """The shard number of a shard item's label (`group/feature/shard 2 of 3` -> 2), None for tenant items."""
    last = label.rsplit("/", 1)[-1]
    if not last.startswith(SHARD_MARK):
        return None
    return int(last[len(SHARD_MARK) :].split(" of ", 1)[0])
