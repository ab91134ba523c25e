"""Settings read from the environment (the only place the library looks for configuration)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/featurepipe"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds, got {raw!r}") from None


@dataclass(frozen=True, kw_only=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    """PostgreSQL holding the registry, jobs, offline store and the source tables (FEATURE_STORE_DATABASE_URL)."""

    redis_url: str = DEFAULT_REDIS_URL
    """Redis holding the online store (FEATURE_STORE_REDIS_URL)."""

    redis_prefix: str = "fs"
    """Prefix of every online-store key, so several stores can share one Redis (FEATURE_STORE_REDIS_PREFIX)."""

    statement_timeout_s: float = 300.0
    """Longest a feature's transformation SQL may run (FEATURE_STORE_STATEMENT_TIMEOUT)."""

    online_batch_size: int = field(default=2000)
    """Entities per Lua call when publishing online values: one round trip per batch."""

    max_entity_id_length: int = 256
    """Longest entity id, in characters; longer (and empty) ids are quarantined (FEATURE_STORE_MAX_ENTITY_ID_LENGTH)."""

    max_value_bytes: int = 64 * 1024
    """Longest string value, in UTF-8 bytes; longer ones are quarantined (FEATURE_STORE_MAX_VALUE_BYTES)."""

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        return cls(
            database_url=env.get("FEATURE_STORE_DATABASE_URL") or DEFAULT_DATABASE_URL,
            redis_url=env.get("FEATURE_STORE_REDIS_URL") or DEFAULT_REDIS_URL,
            redis_prefix=env.get("FEATURE_STORE_REDIS_PREFIX") or "fs",
            statement_timeout_s=_env_float("FEATURE_STORE_STATEMENT_TIMEOUT", 300.0),
            max_entity_id_length=_env_positive_int("FEATURE_STORE_MAX_ENTITY_ID_LENGTH", 256),
            max_value_bytes=_env_positive_int("FEATURE_STORE_MAX_VALUE_BYTES", 64 * 1024),
        )


def _env_positive_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be a whole number, got {raw!r}") from None
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")
    return value
