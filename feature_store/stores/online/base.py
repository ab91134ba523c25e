"""The online store's interface: latest value per entity, newer-only writes, one-round-trip reads."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

from feature_store.definitions.models import ValueType
from feature_store.serving.models import OnlineValue
from feature_store.windows import TimeWindow

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class FeatureSpec:
    """What a read needs to know about one requested feature."""

    group_id: str
    name: str
    value_type: ValueType
    ttl_seconds: int | None


class OnlineStore(ABC):
    """Where the latest feature values live for serving."""

    @abstractmethod
    def write_batch(
        self,
        *,
        tenant_id: str,
        group_id: str,
        rows: Sequence[tuple[str, str]],
        ttl_seconds: int | None,
        write_time_us: int,
        replaces: TimeWindow | None = None,
        force: bool = False,
    ) -> int:
        """Write one batch so that each entity ends with its latest valid value.

        Args:
            rows: (entity_id, fields) pairs, `fields` a JSON array of [feature, event_time_us, value_json]
                to write or [feature] to remove.
            replaces: the window whose values were recomputed: stored values inside it give way to
                incoming ones even when those are older (a fallback), and may be removed.
            force: overwrite (or remove) whatever is stored: an audited corrective rerun.

        Returns:
            The number of feature values written or removed (older ones are skipped).
        """

    @abstractmethod
    def instance_id(self) -> str:
        """Identity of the running server: it changes when a restart may have lost data."""

    @abstractmethod
    def count_present(self, *, tenant_id: str, group_id: str, entity_ids: Sequence[str]) -> int:
        """How many of these entities have a stored value of the group, in one round trip."""

    @abstractmethod
    def read(
        self, *, tenant_id: str, entity_ids: Sequence[str], features: Sequence[FeatureSpec]
    ) -> list[dict[str, OnlineValue]]:
        """Read many entities and features in one round trip.

        Returns:
            A list of the same length as entity_ids; each maps `group:feature` to an OnlineValue
            whose status says present, missing or expired.
        """

    @abstractmethod
    def teardown(self, *, tenant_id: str | None = None) -> int:
        """Delete stored values (of one tenant, or all); returns the number of keys removed."""
