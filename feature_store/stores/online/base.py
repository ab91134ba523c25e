"""The online store's interface: latest value per entity, newer-only writes, one-round-trip reads.

A backend is one module with a subclass of `OnlineStore`, registered by name in
`feature_store.stores.online.BACKENDS`. Writes come set-wise from PostgreSQL: the backend says, as a
SQL aggregate, how one entity's values are encoded for it (`encode_sql`), or, for an entity whose
values share one event time (the usual row of a window), how their JSON texts are put together in
Python without decoding them (`encode_stamped`); the pipeline streams one encoded payload per entity
(`write_encoded`). Code that has values in Python (tests, event consumers) uses `write_values`.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from psycopg import sql

from feature_store.definitions.models import ValueType
from feature_store.serving.models import OnlineFeatures
from feature_store.types import FeatureValue
from feature_store.windows import TimeWindow

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

REMOVE: Any = object()
"""The value of an OnlineWrite that removes the stored value instead of writing one."""


@dataclass(frozen=True)
class FeatureSpec:
    """What a read needs to know about one requested feature."""

    group_id: str
    name: str
    value_type: ValueType
    ttl_seconds: int | None

    @property
    def ref(self) -> str:
        return f"{self.group_id}:{self.name}"


Payload = str | bytes
"""One entity's encoded values: text from the backend's `encode_sql`, or what its Python encoders make."""

StampedValues = tuple[str, int, str]
"""One entity's values sharing one event time: (entity_id, event time in epoch microseconds, fields),
`fields` its feature names and values as JSON texts in one text, as PostgreSQL aggregates it: each
name, then FIELD_SEPARATOR and VALUE_MARK and the value's text, the pairs joined by FIELD_SEPARATOR.
One text costs a fraction of two arrays to fetch, and `fields.replace(VALUE_MARK, stamp).split(FIELD_SEPARATOR)`
gives the flat name/stamped value list in two C calls (see `split_fields` for names and texts apart)."""

FIELD_SEPARATOR = "\x1f"
"""Between names and values in `StampedValues`: neither holds it (names are identifiers, JSON text
escapes every control character)."""

VALUE_MARK = "\x1e"
"""Before each value's text in `StampedValues`: where a backend puts its own stamp, if any."""


def join_fields(names: Sequence[str], texts: Sequence[str]) -> str:
    """The fields text of `StampedValues` for these names and JSON texts (as PostgreSQL builds it)."""
    return FIELD_SEPARATOR.join(
        f"{name}{FIELD_SEPARATOR}{VALUE_MARK}{text}" for name, text in zip(names, texts, strict=True)
    )


def split_fields(fields: str) -> tuple[list[str], list[str]]:
    """The feature names and the values' JSON texts of a `StampedValues` fields text."""
    parts = fields.split(FIELD_SEPARATOR)
    return parts[::2], [text.removeprefix(VALUE_MARK) for text in parts[1::2]]


@dataclass(frozen=True, slots=True)
class OnlineWrite:
    """One typed value of one entity's feature, stamped with its event time (or REMOVE it)."""

    entity_id: str
    feature: str
    event_time: datetime
    value: FeatureValue | Any


class OnlineStore(ABC):
    """Where the latest feature values live for serving.

    Every write is newer-only per (entity, feature): an incoming value wins when its event time is
    later (or equal, with a later write time); a stored value inside the window being replaced gives
    way to any incoming one, and may be removed.
    """

    # -- writes --------------------------------------------------------------------------------

    @abstractmethod
    def encode_sql(self, *, write_time_us: int) -> sql.Composable:
        """A SQL aggregate over rows `x(feature_name text, event_time timestamptz, value jsonb)` of one
        entity that yields its payload as text for `write_encoded`; a row with a NULL event_time stands
        for removing that feature's stored value."""

    @abstractmethod
    def write_encoded(
        self,
        *,
        tenant_id: str,
        group_id: str,
        rows: Sequence[tuple[str, Payload]],
        ttl_seconds: int | None,
        write_time_us: int,
        replaces: TimeWindow | None = None,
        force: bool = False,
    ) -> int:
        """Write one batch of (entity_id, payload from `encode_sql`) pairs, newer-only.

        Args:
            replaces: the window whose values were recomputed: stored values inside it give way to
                incoming ones even when those are older (a fallback), and may be removed.
            force: overwrite (or remove) whatever is stored: an audited corrective rerun.

        Returns:
            The number of feature values written or removed (older ones are skipped).
        """

    @abstractmethod
    def encode(self, values: Sequence[OnlineWrite], *, write_time_us: int) -> list[tuple[str, Payload]]:
        """The (entity_id, payload) pairs `write_encoded` takes, built in Python (one pair per entity)."""

    def encode_stamped(self, rows: Sequence[StampedValues], *, write_time_us: int) -> list[tuple[str, Payload]]:
        """The (entity_id, payload) pair of each row of values sharing one event time, in order.

        This is the publish's hot path (one row per entity and window), so a backend should override
        it with an encoding that does not decode the values; this default goes through `encode`.
        """
        pairs: list[tuple[str, Payload]] = []
        for entity_id, event_us, fields in rows:
            event_time = EPOCH + timedelta(microseconds=event_us)
            names, texts = split_fields(fields)
            values = [OnlineWrite(entity_id, n, event_time, json.loads(t)) for n, t in zip(names, texts, strict=True)]
            pairs += self.encode(values, write_time_us=write_time_us)
        return pairs

    def write_values(
        self,
        *,
        tenant_id: str,
        group_id: str,
        values: Sequence[OnlineWrite],
        ttl_seconds: int | None,
        write_time_us: int,
        replaces: TimeWindow | None = None,
        force: bool = False,
    ) -> int:
        """Write typed values, newer-only; for callers that hold values in Python rather than in SQL."""
        return self.write_encoded(
            tenant_id=tenant_id,
            group_id=group_id,
            rows=self.encode(values, write_time_us=write_time_us),
            ttl_seconds=ttl_seconds,
            write_time_us=write_time_us,
            replaces=replaces,
            force=force,
        )

    # -- reads and upkeep ----------------------------------------------------------------------

    @abstractmethod
    def read(self, *, tenant_id: str, entity_ids: Sequence[str], features: Sequence[FeatureSpec]) -> OnlineFeatures:
        """Read many entities and features in one round trip.

        Returns:
            Columns of one value per requested entity (in order) for each feature, with a status
            (present, missing, expired) and the event time of each.
        """

    @abstractmethod
    def instance_id(self) -> str:
        """Identity of the running server(s): it changes when a restart may have lost data."""

    @abstractmethod
    def count_present(self, *, tenant_id: str, group_id: str, entity_ids: Sequence[str]) -> int:
        """How many of these entities have a stored value of the group, in one round trip."""

    @abstractmethod
    def teardown(self, *, tenant_id: str | None = None) -> int:
        """Delete stored values (of one tenant, or all); returns the number of keys removed."""

    def close(self) -> None:  # noqa: B027 - optional: backends without resources of their own
        """Release the backend's connections (when it opened them itself)."""
