"""API sources against a local HTTP server that misbehaves on purpose (503, 429, slow answers, dropped
connections, bad JSON, wrong types): retried or rejected, never landed in part; landed rows feed a
transform like any source table."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from feature_store import FeatureStore, JobStatus, PipelineConfig
from featurepipe_demo import demo_repo_path
from support import HOURS, QuietHandler, Sql, http_server

TOKEN = "crm-s3cret-token"
PAGE_SIZE = 2
RATE = 40.0


def accounts(tenant: str) -> list[dict[str, Any]]:
    """What the API serves for a tenant: five accounts of three users, nested the way APIs nest."""
    return [
        {
            "id": f"{tenant}-acct-{i}",
            "owner": {"user_id": f"{tenant}-u00{i % 3 + 1}"},
            "seats": i + 1,
            "billing": {"mrr": 10.5 * (i + 1)},
            "active": i % 2 == 0,
            "updated_at": f"2026-11-02T11:{10 + i}:00Z",
        }
        for i in range(5)
    ]


@dataclass
class Api:
    port: int = 0
    faults: list[str] = field(default_factory=list)
    """What the next requests get instead of an answer: 503, 429, slow, drop, badjson, badtype."""
    sticky: str | None = None
    """A fault every request of this page number gets (e.g. "2:badjson")."""
    requests: list[tuple[float, str, dict[str, list[str]], str | None]] = field(default_factory=list)

    def served_rows(self, tenant: str) -> int:
        return len(accounts(tenant))


@pytest.fixture
def api() -> Iterator[Api]:
    state = Api()

    class Handler(QuietHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            url = urlparse(self.path)
            query = parse_qs(url.query)
            state.requests.append((time.monotonic(), url.path, query, self.headers.get("Authorization")))
            page = int(query["page"][0])
            fault = state.faults.pop(0) if state.faults else None
            if state.sticky and state.sticky.startswith(f"{page}:"):
                fault = state.sticky.split(":", 1)[1]
            if fault == "drop":
                self.close_connection = True
                self.connection.close()
                return
            if fault == "slow":
                time.sleep(1.0)  # past the source's 0.4 s timeout: the client gives up first
            if fault in ("503", "429", "500"):
                return self._send(int(fault), b"{}", {"Retry-After": "0"} if fault == "429" else {})
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                return self._send(401, b'{"error": "unauthorized"}')
            tenant = url.path.split("/")[2]
            records = accounts(tenant)[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]
            if fault == "badtype":
                records = [{**records[0], "seats": "many"}, *records[1:]]
            body = json.dumps({"data": records, "meta": {"page": page}}).encode()
            if fault == "badjson":
                body = b"<html>502 Bad Gateway</html>"
            self._send(200, body)

        def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    with http_server(Handler) as port:
        state.port = port
        yield state


API_YAML = """
api_sources:
  - name: crm_accounts
    table: app.crm_accounts
    url: "http://127.0.0.1:{port}/tenants/{{tenant_id}}/accounts?since={{start_time}}&until={{end_time}}"
    records_path: data
    auth: {{type: bearer, token_env: FP_TEST_CRM_TOKEN}}
    pagination: {{type: page, param: page, size_param: per_page, size: {size}}}
    rate_limit_per_second: {rate}
    max_retries: 4
    backoff_seconds: 0.01
    timeout_seconds: 0.4
    fields:
      account_id: {{path: id, type: string}}
      user_id: {{path: owner.user_id, type: string}}
      seats: {{path: seats, type: int64}}
      mrr: {{path: billing.mrr, type: float64}}
      active: {{path: active, type: bool}}
      updated_at: {{path: updated_at, type: timestamp}}
feature_groups:
  - id: crm
    entity_type: user
    features:
      - name: seats
        value_type: int64
        transformation_sql: |
          SELECT a.user_id AS entity_id, sum(a.seats) AS value FROM app.crm_accounts a
          WHERE a.tenant_id = %(tenant_id)s AND a.window_start = %(start_time)s AND a.window_end = %(end_time)s
          GROUP BY a.user_id
"""


@pytest.fixture
def crm(store: FeatureStore, api: Api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FeatureStore:
    repo = tmp_path / "repo"
    shutil.copytree(demo_repo_path(), repo)
    (repo / "api.yaml").write_text(API_YAML.format(port=api.port, size=PAGE_SIZE, rate=RATE))
    monkeypatch.setenv("FP_TEST_CRM_TOKEN", TOKEN)
    store.apply(repo)
    return store


def landed(db: Sql, tenant: str) -> list[tuple[Any, ...]]:
    return db.rows(
        "SELECT account_id, user_id, seats, mrr, active, updated_at, window_start, window_end FROM app.crm_accounts"
        " WHERE tenant_id = %s ORDER BY account_id",
        (tenant,),
    )


def test_landing_retries_through_faults_pages_and_feeds_a_transform(crm: FeatureStore, api: Api, db: Sql) -> None:
    window = HOURS[-1]
    api.faults = ["503", "429", "slow", "drop"]
    [result] = crm.land_api_sources(window=window, tenant_ids=["acme"])
    assert result.error is None and result.rows == 5

    rows = landed(db, "acme")
    expected = accounts("acme")
    assert [r[:5] for r in rows] == [
        (a["id"], a["owner"]["user_id"], a["seats"], a["billing"]["mrr"], a["active"]) for a in expected
    ]
    assert all(r[5].isoformat() == a["updated_at"].replace("Z", "+00:00") for r, a in zip(rows, expected, strict=True))
    assert {(r[6], r[7]) for r in rows} == {(window.start, window.end)}
    # Four faulty answers, then pages 1-3 (2 + 2 + 1 records); every request carried the token.
    pages = [int(q["page"][0]) for _, _, q, _ in api.requests]
    assert pages == [1, 1, 1, 1, 1, 2, 3]
    assert {q["per_page"][0] for _, _, q, _ in api.requests} == {str(PAGE_SIZE)}
    assert {q["since"][0] for _, _, q, _ in api.requests} == {window.start.isoformat()}
    assert {auth for *_, auth in api.requests} == {f"Bearer {TOKEN}"}
    # The rate limit spaced the requests: the three pages after the faults took at least two intervals.
    times = [t for t, *_ in api.requests]
    assert times[-1] - times[-3] >= 2 / RATE * 0.9

    # Landing again replaces the window's rows (no duplicates); the transform reads them.
    assert crm.land_api_sources(window=window, tenant_ids=["acme"])[0].rows == 5
    assert len(landed(db, "acme")) == 5
    result = crm.materialize(
        PipelineConfig(tenant_id="acme", feature_group_id="crm", start_time=window.start, end_time=window.end)
    )
    assert result.status is JobStatus.COMPLETED
    offline = dict(db.rows("SELECT entity_id, value FROM feature_store.feature_values WHERE feature_group_id = 'crm'"))
    sums: dict[str, int] = {}
    for a in expected:
        sums[a["owner"]["user_id"]] = sums.get(a["owner"]["user_id"], 0) + a["seats"]
    assert offline == sums


def test_a_malformed_page_lands_nothing_and_keeps_the_earlier_landing(crm: FeatureStore, api: Api, db: Sql) -> None:
    window = HOURS[-1]
    assert crm.land_api_sources(window=window, tenant_ids=["globex"])[0].rows == 5
    before = landed(db, "globex")

    api.sticky = "2:badjson"
    [result] = crm.land_api_sources(window=window, tenant_ids=["globex"])
    assert result.rows == 0
    assert result.error == (
        f"API source 'crm_accounts' for tenant 'globex', window ({window.start.isoformat()}, {window.end.isoformat()}]:"
        " page 2: the response is not JSON (starts '<html>502 Bad Gateway</html>')"
    )
    assert landed(db, "globex") == before

    api.sticky = "3:badtype"
    [result] = crm.land_api_sources(window=window, tenant_ids=["globex"])
    assert result.error is not None
    assert result.error.endswith("page 3, record 1: field 'seats' (seats) value 'many' is not a int64")
    assert landed(db, "globex") == before


def test_an_api_failing_past_its_retries_is_reported_per_tenant_without_the_token(
    crm: FeatureStore, api: Api, db: Sql
) -> None:
    api.sticky = "1:500"
    results = crm.land_api_sources(window=HOURS[-1], tenant_ids=["acme", "initech"])
    assert [(r.tenant_id, r.rows) for r in results] == [("acme", 0), ("initech", 0)]
    for r in results:
        assert r.error is not None and r.error.endswith("page 1: gave up after 5 attempts; last: HTTP 500")
        assert TOKEN not in r.error
    assert len(api.requests) == 10
    assert db.value("SELECT count(*) FROM app.crm_accounts") == 0


def test_a_refused_request_is_not_retried(crm: FeatureStore, api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FP_TEST_CRM_TOKEN", "wrong")
    [result] = crm.land_api_sources(window=HOURS[-1], tenant_ids=["acme"])
    assert result.error is not None and result.error.endswith(
        "page 1: HTTP 401 (not retried: the request itself is refused)"
    )
    assert len(api.requests) == 1
