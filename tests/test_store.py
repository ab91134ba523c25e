"""The `FeatureStore` facade: the settings it keeps."""

from __future__ import annotations

import dataclasses

from feature_store import FeatureStore, Settings
from support import REDIS_URL


@dataclasses.dataclass(frozen=True, kw_only=True)
class TunedSettings(Settings):
    """Settings with a field the facade does not know about, as a future setting would be."""

    extra: int = 0


def test_the_store_keeps_every_setting_it_is_given() -> None:
    tuned = TunedSettings(
        database_url="postgresql://postgres@127.0.0.1:5432/tuned",
        redis_url="redis://127.0.0.1:1/0",
        redis_prefix="tuned",
        statement_timeout_s=12.5,
        online_batch_size=7,
        extra=42,
    )
    with FeatureStore(settings=tuned, redis_url=REDIS_URL) as store:
        assert store.settings == dataclasses.replace(tuned, redis_url=REDIS_URL)
