"""End to end: real Airflow components (api-server, scheduler, dag-processor, triggerer; LocalExecutor;
a PostgreSQL metadata database of their own) backfill two hours through the REST API, against the
real PostgreSQL and Redis; then the Feature Store view is opened in headless Chromium.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_stack import BACKFILLED, DAG_ID, Stack, airflow_stack, wait_for

from feature_store import Settings
from support import HOURS, Sql

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
OUTPUT = ROOT / "tests" / "output"


@pytest.fixture
def stack(settings: Settings, tmp_path: Path) -> Iterator[Stack]:
    env = {
        "AIRFLOW__CORE__PARALLELISM": "4",
        # A deadline every run misses (3 s after it is queued), to see the triggerer record misses.
        "FEATURE_STORE_DEADLINE_MINUTES": "0.05",
        # The scheduler creates asset-triggered runs only when it creates runs at all (then also the
        # DAG's hourly run of the current hour, which the test stops: see below).
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "True",
    }
    with airflow_stack(home=tmp_path / "airflow_home", settings=settings, executor="LocalExecutor", env=env) as stack:
        yield stack


def test_a_backfill_through_the_rest_api_materializes_every_hour(stack: Stack, db: Sql) -> None:
    def scheduled_runs() -> list[dict[str, Any]]:
        return list(stack.api("GET", f"/dags/{DAG_ID}/dagRuns?run_type=scheduled")["dag_runs"])

    stack.unpause_when_parsed()
    # Unpaused, the DAG gets its hourly run of the current hour (after the test data: it would only compete
    # with the backfill for the four task slots, a quarter of the tasks). Stopped as an operator would.
    for hourly in wait_for("the hourly run of the current hour", scheduled_runs, 120, interval=0.5):
        stack.api("PATCH", f"/dags/{DAG_ID}/dagRuns/{hourly['dag_run_id']}", {"state": "failed"})
    stack.backfill()
    runs = stack.backfill_runs()
    assert [r["state"] for r in runs] == ["success"] * len(BACKFILLED), runs
    intervals = sorted((r["data_interval_start"], r["data_interval_end"]) for r in runs)
    assert [(s[:19], e[:19]) for s, e in intervals] == [
        (w.start.isoformat()[:19], w.end.isoformat()[:19]) for w in BACKFILLED
    ]

    jobs = db.rows(
        "SELECT run_id, status, start_time, end_time, dag_id FROM feature_store.materialization_jobs"
        " WHERE run_id = ANY(%s) ORDER BY id",
        ([r["dag_run_id"] for r in runs],),
    )
    assert len(jobs) == len(BACKFILLED) * 9  # hours x 3 tenants x 3 groups
    assert {status for _, status, *_ in jobs} == {"completed"}
    assert {run_id for run_id, *_ in jobs} == {r["dag_run_id"] for r in runs}
    assert sorted({(start, end) for _, _, start, end, _ in jobs}) == [(w.start, w.end) for w in BACKFILLED]
    assert db.value("SELECT count(*) FROM feature_store.feature_values") > 0

    # Every run missed its (deliberately tiny) deadline; the triggerer recorded each miss.
    wait_for(
        "the deadline misses to be recorded",
        lambda: db.value("SELECT count(DISTINCT run_id) FROM feature_store.deadline_misses") >= len(BACKFILLED),
        120,
    )

    # An application asks for a scoped run through an asset event: just acme's user_engagement, the hour before.
    asset = stack.api("GET", "/assets?name_pattern=feature_materialization_request")["assets"]
    assert [a["name"] for a in asset] == ["feature_materialization_request"], asset
    request = {
        "tenant_id": "acme",
        "feature_group_ids": ["user_engagement"],
        "start": HOURS[0].start.isoformat(),
        "end": HOURS[0].end.isoformat(),
    }
    stack.api("POST", "/assets/events", {"asset_id": asset[0]["id"], "extra": request})

    def requested_run() -> dict[str, Any] | None:
        runs = stack.api("GET", f"/dags/{DAG_ID}/dagRuns?run_type=asset_triggered&limit=5")["dag_runs"]
        return runs[0] if runs and runs[0]["state"] in ("success", "failed") else None

    scoped = wait_for("the asset-triggered run to finish", requested_run, 300)
    assert scoped["state"] == "success", scoped
    assert db.rows(
        "SELECT tenant_id, feature_group_id, start_time, end_time, status FROM feature_store.materialization_jobs"
        " WHERE run_id = %s",
        (scoped["dag_run_id"],),
    ) == [("acme", "user_engagement", HOURS[0].start, HOURS[0].end, "completed")]

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
