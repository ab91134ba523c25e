"""`FeatureStoreHook`: the feature store's PostgreSQL and Redis through Airflow connections.

Connections (define them the Airflow way, e.g. ``AIRFLOW_CONN_FEATURE_STORE_DB``):

* ``feature_store_db`` (postgres): host, port, login, password, schema = database name.
* ``feature_store_redis`` (redis): host, port, password; extras as in ``RedisHook``, plus an optional
  key prefix for the online store and the backend:

  .. code-block:: json

      {"db": 0, "key_prefix": "fs", "online_backend": "redis-cluster"}

Without a connection, ``FEATURE_STORE_DATABASE_URL`` / ``FEATURE_STORE_REDIS_URL`` /
``FEATURE_STORE_REDIS_PREFIX`` / ``FEATURE_STORE_ONLINE_BACKEND`` apply, as for the CLI.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowNotFoundException

if TYPE_CHECKING:
    from feature_store import FeatureStore, Settings

log = logging.getLogger(__name__)


class FeatureStoreHook(BaseHook):
    """Builds a `FeatureStore` on the `feature_store_db` and `feature_store_redis` connections."""

    conn_name_attr = "db_conn_id"
    default_conn_name = "feature_store_db"
    default_redis_conn_name = "feature_store_redis"
    conn_type = "postgres"
    hook_name = "Feature Store"

    def __init__(
        self, db_conn_id: str = default_conn_name, redis_conn_id: str = default_redis_conn_name, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.db_conn_id = db_conn_id
        self.redis_conn_id = redis_conn_id

    def settings(self) -> Settings:
        """The library's settings from the environment, with what the connections define on top."""
        from feature_store import Settings

        settings = Settings.from_env()
        db = self._connection(self.db_conn_id)
        if db is not None:
            settings = replace(settings, database_url=_postgres_url(db))
        redis_conn = self._connection(self.redis_conn_id)
        if redis_conn is not None:
            extra = redis_conn.extra_dejson
            settings = replace(
                settings,
                redis_url=_redis_url(redis_conn),
                redis_prefix=str(extra.get("key_prefix") or settings.redis_prefix),
                online_backend=str(extra.get("online_backend") or settings.online_backend),
            )
        return settings

    def get_store(self) -> FeatureStore:
        """A FeatureStore on the connections; it connects lazily (no Redis round trip if online is unused)."""
        from feature_store import FeatureStore

        return FeatureStore(settings=self.settings())

    def get_conn(self) -> FeatureStore:
        return self.get_store()

    def _connection(self, conn_id: str) -> Any:
        try:
            return self.get_connection(conn_id)
        except AirflowNotFoundException:
            log.info("connection %s is not defined; using the FEATURE_STORE_* environment variables", conn_id)
            return None


def _postgres_url(conn: Any) -> str:
    """The connection as a libpq URI (PostgresHook hands out SQLAlchemy-style `postgresql+psycopg://`)."""
    uri = str(conn.get_uri())
    scheme, _, rest = uri.partition("://")
    return f"postgresql://{rest}" if scheme.split("+")[0] in ("postgres", "postgresql") else uri


def _redis_url(conn: Any) -> str:
    db = conn.extra_dejson.get("db", 0)
    auth = f":{conn.password}@" if conn.password else ""
    return f"redis://{auth}{conn.host or '127.0.0.1'}:{conn.port or 6379}/{db}"


def open_store() -> FeatureStore:
    """A FeatureStore on the default connections (what every task body and the plugin use)."""
    return FeatureStoreHook().get_store()
