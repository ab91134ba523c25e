"""End to end: real Airflow components (api-server, scheduler, dag-processor, triggerer; LocalExecutor;
their own SQLite metadata DB) backfill three hours through the REST API, against the real
PostgreSQL and Redis; then the Feature Store view is opened in headless Chromium.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from feature_store import Settings
from support import HOURS, Sql

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
OUTPUT = ROOT / "tests" / "output"
DAG_ID = "feature_materialization"
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Stack:
    url: str
    home: Path
    processes: dict[str, subprocess.Popen[bytes]]

    def api(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        request = urllib.request.Request(
            f"{self.url}/api/v2{path}",
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"null")

    def logs(self) -> str:
        return "\n".join(
            f"--- {name} ---\n" + (self.home / f"{name}.log").read_text(errors="replace")[-4000:]
            for name in self.processes
        )


def _wait(what: str, check: Any, timeout: float, stack: Stack | None = None) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except (urllib.error.URLError, ConnectionError, OSError) as exc:
            last = exc
        time.sleep(2)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what} (last: {last})\n{stack.logs() if stack else ''}")


@pytest.fixture
def stack(settings: Settings, tmp_path: Path) -> Iterator[Stack]:
    port = _free_port()
    home = tmp_path / "airflow_home"
    home.mkdir()
    redis_conn = {
        "conn_type": "redis",
        "host": "127.0.0.1",
        "port": 6379,
        "extra": {"db": 0, "key_prefix": settings.redis_prefix},
    }
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://localhost:{port}/execution/",
        "AIRFLOW__API__BASE_URL": f"http://localhost:{port}",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API_AUTH__JWT_SECRET": "featurepipe-e2e-secret",
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",  # only the backfill creates runs
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW_CONN_FEATURE_STORE_DB": settings.database_url,
        "AIRFLOW_CONN_FEATURE_STORE_REDIS": json.dumps(redis_conn),
        "FEATUREPIPE_RETRY_DELAY_SECONDS": "2",
        # A deadline every run misses (3 s after it is queued), to see the triggerer record misses.
        "FEATUREPIPE_DEADLINE_MINUTES": "0.05",
    }
    env.pop("FEATURE_STORE_DATABASE_URL", None)
    airflow = [sys.executable, "-m", "airflow"]
    migrate = subprocess.run([*airflow, "db", "migrate"], env=env, capture_output=True, text=True)
    assert migrate.returncode == 0, migrate.stderr[-3000:]
    processes: dict[str, subprocess.Popen[bytes]] = {}
    stack = Stack(url=f"http://localhost:{port}", home=home, processes=processes)
    try:
        for name in COMPONENTS:
            args = [*airflow, name] + (["--port", str(port)] if name == "api-server" else [])
            with (home / f"{name}.log").open("wb") as log:
                processes[name] = subprocess.Popen(
                    args, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )
        _wait("the api-server", lambda: stack.api("GET", "/monitor/health"), 120, stack)
        yield stack
    finally:
        for process in processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


def test_a_backfill_through_the_rest_api_materializes_every_hour(stack: Stack, db: Sql) -> None:
    _wait("the DAG to be parsed", lambda: stack.api("GET", f"/dags/{DAG_ID}"), 180, stack)
    stack.api("PATCH", f"/dags/{DAG_ID}", {"is_paused": False})
    backfill = stack.api(
        "POST",
        "/backfills",
        {
            "dag_id": DAG_ID,
            "from_date": HOURS[0].start.isoformat(),
            "to_date": HOURS[-1].start.isoformat(),
            "reprocess_behavior": "none",
            "max_active_runs": 3,
            "dag_run_conf": {},
        },
    )
    assert backfill["dag_id"] == DAG_ID

    def finished_runs() -> list[dict[str, Any]] | None:
        runs = stack.api("GET", f"/dags/{DAG_ID}/dagRuns?run_type=backfill&limit=50")["dag_runs"]
        done = [r for r in runs if r["state"] in ("success", "failed")]
        return runs if runs and len(done) == len(runs) else None

    runs = _wait("the backfill runs to finish", finished_runs, 600, stack)
    assert [r["state"] for r in runs] == ["success"] * 3, stack.logs()
    intervals = sorted((r["data_interval_start"], r["data_interval_end"]) for r in runs)
    assert [(s[:19], e[:19]) for s, e in intervals] == [
        (w.start.isoformat()[:19], w.end.isoformat()[:19]) for w in HOURS
    ]

    jobs = db.rows(
        "SELECT run_id, status, start_time, end_time, dag_id FROM feature_store.materialization_jobs ORDER BY id"
    )
    assert len(jobs) == 3 * 9  # 3 hours x 3 tenants x 3 groups
    assert {status for _, status, *_ in jobs} == {"completed"}
    assert {run_id for run_id, *_ in jobs} == {r["dag_run_id"] for r in runs}
    assert sorted({(start, end) for _, _, start, end, _ in jobs}) == [(w.start, w.end) for w in HOURS]
    assert db.value("SELECT count(*) FROM feature_store.feature_values") > 0

    # Every run missed its (deliberately tiny) deadline; the triggerer recorded each miss.
    _wait(
        "the deadline misses to be recorded",
        lambda: db.value("SELECT count(DISTINCT run_id) FROM feature_store.deadline_misses") >= 3,
        120,
        stack,
    )

    shot = _view_in_browser(
        stack,
        expected=[
            str(job_id) for (job_id,) in db.rows("SELECT id FROM feature_store.materialization_jobs ORDER BY id")
        ],
    )
    assert shot.exists() and shot.stat().st_size > 10_000


def _view_in_browser(stack: Stack, *, expected: list[str]) -> Path:
    """Open the plugin's view inside the Airflow UI and check the jobs are listed; save a screenshot."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    chromium = shutil.which("chromium")
    driver_path = shutil.which("chromedriver")
    assert chromium and driver_path, "Debian's chromium and chromium-driver are needed (.ci/setup.sh installs them)"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1600,1200",
        f"--user-data-dir={stack.home / 'chromium-profile'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    OUTPUT.mkdir(parents=True, exist_ok=True)
    shot = OUTPUT / "e2e_feature_store_view.png"
    try:
        driver.get(f"{stack.url}/plugin/featurepipe")
        wait = WebDriverWait(driver, 60)
        frame = wait.until(expected_conditions.presence_of_element_located((By.TAG_NAME, "iframe")))
        driver.switch_to.frame(frame)
        table = wait.until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "table.jobs")))
        shown = {
            row.find_elements(By.TAG_NAME, "td")[0].text for row in table.find_elements(By.CSS_SELECTOR, "tbody tr")
        }
        assert set(expected) <= shown, f"jobs missing from the view: {sorted(set(expected) - shown)}"
        assert "completed" in table.text
        driver.switch_to.default_content()
        driver.save_screenshot(str(shot))
    except Exception:
        driver.save_screenshot(str(shot))
        raise
    finally:
        driver.quit()
    return shot
