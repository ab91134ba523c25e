"""Settings read from the environment (the only place the library looks for configuration)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from psycopg import ProgrammingError
from psycopg.conninfo import conninfo_to_dict
from redis.connection import parse_url

from feature_store.errors import ConfigurationError, first_line

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/featurepipe"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_REDIS_PREFIX = "fs"

DATABASE_URL_FIX = (
    "set FEATURE_STORE_DATABASE_URL to a URL like postgresql://user:password@host:5432/dbname"
    " or to key=value pairs like 'host=127.0.0.1 port=5432 user=postgres dbname=featurepipe'"
)
REDIS_URL_FIX = "set FEATURE_STORE_REDIS_URL to a URL like redis://host:6379/0 or redis://:password@host:6379/0"

REDIS_PREFIX_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}")
"""Online-store key prefixes: no `:` (the key separator) and no glob character (`*?[]\\`), so the
pattern `{prefix}:*` that clears a store can only ever match that store's keys."""


def check_database_url(url: str) -> None:
    """Raise ConfigurationError unless libpq can read `url` (URI or key=value form) and its port is a number."""
    try:
        params = conninfo_to_dict(url)
    except ProgrammingError as exc:
        raise ConfigurationError("FEATURE_STORE_DATABASE_URL", url, first_line(exc), DATABASE_URL_FIX) from None
    for port in str(params.get("port") or "").split(","):
        if port and not (re.fullmatch(r"[0-9]{1,5}", port) and 0 < int(port) < 65536):
            raise ConfigurationError(
                "FEATURE_STORE_DATABASE_URL", url, f"port {port!r} is not a number from 1 to 65535", DATABASE_URL_FIX
            )


def check_redis_url(url: str) -> None:
    """Raise ConfigurationError unless redis-py can read `url`."""
    try:
        parse_url(url)
    except ValueError as exc:
        raise ConfigurationError("FEATURE_STORE_REDIS_URL", url, first_line(exc), REDIS_URL_FIX) from None


ONLINE_BACKENDS = ("redis", "redis-cluster")
"""Names of the online store backends (see feature_store.stores.online.BACKENDS)."""


def check_redis_prefix(prefix: str) -> None:
    """Raise ConfigurationError unless `prefix` is a safe online-store key prefix (see REDIS_PREFIX_PATTERN)."""
    if not REDIS_PREFIX_PATTERN.fullmatch(prefix):
        raise ConfigurationError(
            "FEATURE_STORE_REDIS_PREFIX",
            prefix,
            "a key prefix is 1 to 63 letters, digits, '_', '.' or '-' (starting with a letter or digit),"
            " without ':' or glob characters, so that one store's keys can never match another's",
            "choose a prefix like 'fs' or 'fs-staging'",
        )


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigurationError(name, raw, "not a number", "set it to a number of seconds, e.g. 300") from None


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything the feature store is configured with; invalid values raise ConfigurationError on creation."""

    database_url: str = DEFAULT_DATABASE_URL
    """PostgreSQL holding the registry, jobs, offline store and the source tables (FEATURE_STORE_DATABASE_URL)."""

    redis_url: str = DEFAULT_REDIS_URL
    """Redis holding the online store (FEATURE_STORE_REDIS_URL)."""

    redis_prefix: str = DEFAULT_REDIS_PREFIX
    """Prefix of every online-store key, so several stores can share one Redis (FEATURE_STORE_REDIS_PREFIX)."""

    statement_timeout_s: float = 300.0
    """Longest a feature's transformation SQL may run (FEATURE_STORE_STATEMENT_TIMEOUT)."""

    online_batch_size: int = field(default=2000)
    """Entities per Lua call when publishing online values: one round trip per batch."""

    sandbox_password: str | None = field(default=None, repr=False)
    """Password of the `featurepipe_transform` login role transforms run as (FEATURE_STORE_SANDBOX_PASSWORD);
    `init` sets it. Not needed where PostgreSQL trusts local connections."""

    max_clock_skew_s: float = 300.0
    """How far past this machine's clock a window may end (FEATURE_STORE_MAX_CLOCK_SKEW, seconds)."""

    max_full_windows: int = 24 * 400
    """Most schedule windows (hours) one full-mode job may recompute (FEATURE_STORE_MAX_FULL_WINDOWS)."""

    online_backend: str = "redis"
    """Where online values live (FEATURE_STORE_ONLINE_BACKEND): `redis` (one server) or `redis-cluster`
    (FEATURE_STORE_REDIS_URL names any node of the cluster)."""

    max_entity_id_length: int = 256
    """Longest entity id, in characters; longer (and empty) ids are quarantined (FEATURE_STORE_MAX_ENTITY_ID_LENGTH)."""

    max_value_bytes: int = 64 * 1024
    """Longest string value, in UTF-8 bytes; longer ones are quarantined (FEATURE_STORE_MAX_VALUE_BYTES)."""

    event_partitions: int = 16
    """Redis Streams events are spread over, by a hash of (tenant, user) (FEATURE_STORE_EVENT_PARTITIONS).
    Every publisher and consumer of one store must agree on it."""

    event_lease_s: float = 10.0
    """How long a consumer holds a partition without renewing its lease; a dead consumer's partitions
    move to the others after that (FEATURE_STORE_EVENT_LEASE_SECONDS)."""

    def __post_init__(self) -> None:
        check_database_url(self.database_url)
        check_redis_url(self.redis_url)
        check_redis_prefix(self.redis_prefix)
        if self.online_backend not in ONLINE_BACKENDS:
            raise ConfigurationError(
                "FEATURE_STORE_ONLINE_BACKEND",
                self.online_backend,
                "not a known online store backend",
                f"choose one of {', '.join(ONLINE_BACKENDS)}",
            )

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        return cls(
            database_url=env.get("FEATURE_STORE_DATABASE_URL") or DEFAULT_DATABASE_URL,
            redis_url=env.get("FEATURE_STORE_REDIS_URL") or DEFAULT_REDIS_URL,
            redis_prefix=env.get("FEATURE_STORE_REDIS_PREFIX") or DEFAULT_REDIS_PREFIX,
            statement_timeout_s=_env_float("FEATURE_STORE_STATEMENT_TIMEOUT", 300.0),
            sandbox_password=env.get("FEATURE_STORE_SANDBOX_PASSWORD") or None,
            max_clock_skew_s=_env_float("FEATURE_STORE_MAX_CLOCK_SKEW", 300.0),
            max_full_windows=_env_positive_int("FEATURE_STORE_MAX_FULL_WINDOWS", 24 * 400),
            online_backend=env.get("FEATURE_STORE_ONLINE_BACKEND") or "redis",
            max_entity_id_length=_env_positive_int("FEATURE_STORE_MAX_ENTITY_ID_LENGTH", 256),
            max_value_bytes=_env_positive_int("FEATURE_STORE_MAX_VALUE_BYTES", 64 * 1024),
            event_partitions=_env_positive_int("FEATURE_STORE_EVENT_PARTITIONS", 16),
            event_lease_s=_env_float("FEATURE_STORE_EVENT_LEASE_SECONDS", 10.0),
        )


def _env_positive_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigurationError(name, raw, "not a whole number", "set it to a whole number of at least 1") from None
    if value < 1:
        raise ConfigurationError(name, raw, "below 1", "set it to a whole number of at least 1")
    return value
