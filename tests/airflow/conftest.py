"""Airflow fixtures: a temporary AIRFLOW_HOME with a SQLite metadata DB, migrated once per session.

The environment is set here, before anything imports Airflow, which reads its configuration once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

ROOT = Path(__file__).resolve().parents[2]
AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="fp_airflow_home_"))

os.environ.update(
    {
        "AIRFLOW_HOME": str(AIRFLOW_HOME),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{AIRFLOW_HOME}/airflow.db",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        # Retries stay on, but short, so failure tests do not wait minutes.
        "FEATURE_STORE_RETRY_DELAY_SECONDS": "1",
        # Airflow 3.3.2's dag.test() cannot prune deadlines of a successful run (it passes the
        # serialized alert dicts where ids are expected); the e2e test covers deadlines for real.
        "FEATURE_STORE_DEADLINE_MINUTES": "0",
    }
)


@pytest.fixture(scope="session")
def airflow_db() -> Iterator[Path]:
    result = subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"], capture_output=True, text=True, env=os.environ.copy()
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    yield AIRFLOW_HOME


@pytest.fixture
def airflow_env(airflow_db: Path, settings: object, monkeypatch: pytest.MonkeyPatch) -> object:
    """Point the `feature_store_db` / `feature_store_redis` connections at this test's database and prefix."""
    from feature_store import Settings

    assert isinstance(settings, Settings)
    monkeypatch.setenv("AIRFLOW_CONN_FEATURE_STORE_DB", settings.database_url)
    redis_conn = {
        "conn_type": "redis",
        "host": "127.0.0.1",
        "port": 6379,
        "extra": {"db": 0, "key_prefix": settings.redis_prefix},
    }
    monkeypatch.setenv("AIRFLOW_CONN_FEATURE_STORE_REDIS", json.dumps(redis_conn))
    monkeypatch.delenv("FEATURE_STORE_DATABASE_URL", raising=False)
    return settings


@pytest.fixture
def client(airflow_env: object) -> Iterator[TestClient]:
    """A test client of the view app on this test's database, with Airflow's login check bypassed."""
    from featurepipe_airflow import view

    view.app.dependency_overrides[view.require_user] = lambda: None
    yield TestClient(view.app)
    view.app.dependency_overrides.clear()
