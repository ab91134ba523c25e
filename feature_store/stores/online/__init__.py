"""The online store: the latest value per entity and feature, for serving.

Backends are chosen by `Settings.online_backend` (FEATURE_STORE_ONLINE_BACKEND). Adding one is a module
with an `OnlineStore` subclass that has a `from_settings(settings, client=None)` constructor, and a
line in BACKENDS.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from feature_store.config import Settings
from feature_store.stores.online.base import OnlineStore

BACKENDS = {  # names as in feature_store.config.ONLINE_BACKENDS
    "redis": "feature_store.stores.online.redis:RedisOnlineStore",
    "redis-cluster": "feature_store.stores.online.redis_cluster:RedisClusterOnlineStore",
}
"""Backend name -> `module:class`."""


def open_online_store(settings: Settings, client: Any = None) -> OnlineStore:
    """The configured backend, on `client` if given (else it connects to `settings.redis_url`)."""
    module, _, name = BACKENDS[settings.online_backend].partition(":")
    backend: Any = getattr(import_module(module), name)
    store: OnlineStore = backend.from_settings(settings, client)
    return store
