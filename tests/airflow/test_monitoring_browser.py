"""The monitoring page in headless Chromium: per-feature charts with quarantine and drift markers, and the
freshness timeline, served by the real view app over HTTP; screenshots go to tests/output/."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from feature_store import FeatureStore, JobStatus, PipelineConfig
from feature_store.windows import TimeWindow
from featurepipe_demo import generate_data
from support import DATA_END, Sql

pytestmark = pytest.mark.airflow

OUTPUT = Path(__file__).resolve().parents[1] / "output"
HOURS = 10
WINDOWS = [
    TimeWindow(start=DATA_END - timedelta(hours=h + 1), end=DATA_END - timedelta(hours=h)) for h in range(HOURS)
][::-1]


@pytest.fixture
def served(client: object) -> Iterator[str]:
    """The view app (login check bypassed by `client`) on a loopback port, in a thread."""
    import uvicorn

    from featurepipe_airflow import view

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(view.app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "the view app did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def materialize(store: FeatureStore, group: str, window: TimeWindow) -> JobStatus:
    return store.materialize(
        PipelineConfig(tenant_id="acme", feature_group_id=group, start_time=window.start, end_time=window.end)
    ).status


def test_monitoring_page_draws_statistics_markers_and_freshness_in_chromium(
    served: str, store: FeatureStore, db: Sql
) -> None:
    # Conversations start in (start, end]: generated past the last window, so that one has messages too.
    generate_data(
        db.conn, start=WINDOWS[0].start, end=WINDOWS[-1].end + timedelta(hours=3), users_per_tenant=12, seed=0.17
    )
    # Hour 7: some intents no rule allows (quarantine markers); the last two hours: messages ten times
    # longer (drift markers); one user_engagement job fails (a red span in the timeline).
    spam = WINDOWS[6]
    db.execute(
        "UPDATE app.messages SET intent = 'spam' WHERE id IN (SELECT id FROM app.messages WHERE tenant_id = 'acme'"
        " AND role = 'user' AND created_at > %s AND created_at <= %s ORDER BY id LIMIT 2)",
        (spam.start, spam.end),
    )
    db.execute(
        "UPDATE app.messages SET content = repeat(content, 10) WHERE tenant_id = 'acme' AND created_at > %s",
        (WINDOWS[-2].start,),
    )
    for window in WINDOWS:
        materialize(store, "message_features", window)
    for window in WINDOWS[-4:-1]:
        assert materialize(store, "user_engagement", window) is JobStatus.COMPLETED
    db.execute("ALTER TABLE app.feedback RENAME TO feedback_moved")
    assert materialize(store, "user_engagement", WINDOWS[-1]) is JobStatus.FAILED
    db.execute("ALTER TABLE app.feedback_moved RENAME TO feedback")

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver_path, "Debian's chromium and chromium-driver are needed (.ci/setup.sh installs them)"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--window-size=1400,2200"):
        options.add_argument(flag)
    OUTPUT.mkdir(parents=True, exist_ok=True)
    shot = OUTPUT / "monitoring_view.png"
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        driver.get(f"{served}/monitoring?tenant_id=acme&group_id=message_features")
        WebDriverWait(driver, 30).until(
            expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "section.feature svg"))
        )
        sections = {
            s.get_attribute("data-feature"): s for s in driver.find_elements(By.CSS_SELECTOR, "section.feature")
        }
        assert set(sections) == {f.name for f in store.registry.get_group("message_features").batch_features}
        length = sections["length"]
        # Three charts per feature; every one is drawn (the browser laid it out with a real size).
        svgs = length.find_elements(By.TAG_NAME, "svg")
        assert len(svgs) == 3 and all(svg.size["width"] > 200 and svg.size["height"] > 60 for svg in svgs)
        assert len(length.find_elements(By.CSS_SELECTOR, "polygon.band-outer")) == 1
        points = length.find_element(By.CSS_SELECTOR, "polyline.median").get_attribute("points") or ""
        assert len(points.split()) == HOURS
        # Drift: the last two windows are red bars over the threshold line, with markers on the values.
        bars = sorted(
            length.find_elements(By.CSS_SELECTOR, "rect.drifted, rect.stable"),
            key=lambda bar: float(bar.get_attribute("x") or 0),
        )
        assert len(bars) == HOURS - 1  # the first window has no baseline
        assert [bar.get_attribute("class") for bar in bars[-2:]] == ["drifted", "drifted"]
        assert length.find_elements(By.CSS_SELECTOR, "line.threshold")
        drift_tips = [
            t.get_attribute("textContent") or "" for t in length.find_elements(By.CSS_SELECTOR, "circle.marker title")
        ]
        drifted = [bar for bar in bars if bar.get_attribute("class") == "drifted"]
        assert len(drift_tips) == len(drifted) and all("drift, PSI" in t for t in drift_tips)
        # Quarantine: one marker on the intent rate chart, at the window with the bad intents.
        intent = sections["intent"]
        tips = [
            t.get_attribute("textContent") or "" for t in intent.find_elements(By.CSS_SELECTOR, "circle.marker title")
        ]
        assert any(t.startswith(f"{spam.end:%m-%d %H:%M}: 2 of ") and t.endswith("rows quarantined") for t in tips)
        # Freshness timeline: acme/user_engagement's jobs, the failed one in red.
        timeline = driver.find_element(By.CSS_SELECTOR, '.timeline[data-group="acme/user_engagement"]')
        assert len(timeline.find_elements(By.CSS_SELECTOR, "rect.completed")) == 3
        assert len(timeline.find_elements(By.CSS_SELECTOR, "rect.failed")) == 1
        assert "stale" in timeline.text
        driver.execute_script("document.body.style.zoom = '1'")
        driver.save_screenshot(str(shot))
    except Exception:
        driver.save_screenshot(str(shot))
        raise
    finally:
        driver.quit()
    assert shot.stat().st_size > 20_000
