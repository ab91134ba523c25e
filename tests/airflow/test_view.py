"""The Feature Store page escapes everything taken from the database; only its own badges are markup."""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser

import pytest
from fastapi.testclient import TestClient

from support import HOURS, Sql

pytestmark = pytest.mark.airflow

# Free-text columns hold whatever the source data or an exception message held.
HOSTILE = [
    "<script>alert(1)</script>",
    '<span onmouseover="alert(1)">x</span>',
    '"><img src=x onerror=alert(1)>',
    "{{7*7}}",
    "&amp;",
]

# Every element the page itself is made of; anything else came from data.
PAGE_TAGS = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "table", "thead", "tbody", "tr", "th", "td"}
PAGE_TAGS |= {"p", "span", "form", "label", "select", "option", "button"}
BADGES = {"fresh", "stale", "pending", "running", "completed", "failed"}


@dataclass
class Cell:
    text: str = ""
    spans: list[list[tuple[str, str | None]]] = field(default_factory=list)


class Page(HTMLParser):
    """The parsed page: every element with its attributes, and each section's table as rows of cells."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, list[tuple[str, str | None]]]] = []
        self.sections: dict[str, list[list[Cell]]] = {}  # by <h2> title
        self.empty: dict[str, str] = {}  # the empty-state text by <h2> title
        self._section = ""
        self._in = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, attrs))
        if tag in ("h2", "p"):
            self._in = tag
        elif tag == "tr" and self._section:
            self.sections[self._section].append([])
        elif tag == "td":
            self.sections[self._section][-1].append(Cell())
        elif tag == "span" and self._in == "td":
            self.sections[self._section][-1][-1].spans.append(attrs)
        if tag == "td":
            self._in = "td"

    def handle_endtag(self, tag: str) -> None:
        if tag in ("h2", "p", "td"):
            self._in = ""

    def handle_data(self, data: str) -> None:
        if self._in == "h2":
            self._section = data
            self.sections[data] = []
        elif self._in == "p":
            self.empty[self._section] = data
        elif self._in == "td":
            self.sections[self._section][-1][-1].text += data

    def rows(self, section: str) -> list[list[str]]:
        """The section's data rows (its header row has no <td>) as cell texts."""
        return [[cell.text for cell in row] for row in self.sections.get(section, []) if row]


def parse(html: str) -> Page:
    page = Page()
    page.feed(html)
    page.close()
    return page


def insert_hostile_rows(db: Sql) -> None:
    """One failed job, one quarantined row and one deadline miss per hostile value, straight into the tables."""
    for value in HOSTILE:
        job_id = db.value(
            "INSERT INTO feature_store.materialization_jobs"
            " (tenant_id, feature_group_id, job_type, start_time, end_time, status, error_message, dag_id, run_id)"
            " VALUES ('acme', 'user_engagement', 'incremental', %s, %s, 'failed', %s, 'feature_materialization', %s)"
            " RETURNING id",
            (HOURS[0].start, HOURS[0].end, value, value),
        )
        db.execute(
            "INSERT INTO feature_store.quarantined_rows"
            " (job_id, tenant_id, feature_group_id, feature_name, entity_id, event_time, value, rule, reason)"
            " VALUES (%s, 'acme', 'user_engagement', %s, %s, %s, to_jsonb(%s::text), %s, %s)",
            (job_id, value, value, HOURS[0].start, value, value, value),
        )
        db.execute(
            "INSERT INTO feature_store.deadline_misses (dag_id, run_id, deadline_time, message)"
            " VALUES ('feature_materialization', %s, %s, %s)",
            (value, HOURS[0].end, value),
        )


def test_hostile_values_from_the_database_are_shown_escaped_and_only_badges_are_markup(
    client: TestClient, db: Sql
) -> None:
    insert_hostile_rows(db)
    response = client.get("/")
    assert response.status_code == 200
    html = response.text

    # Nothing from the data became an element or an attribute.
    assert "<script" not in html
    assert "<img" not in html
    assert "<span onmouseover" not in html
    page = parse(html)
    assert {tag for tag, _ in page.elements} <= PAGE_TAGS
    assert not [(tag, name) for tag, attrs in page.elements for name, _ in attrs if name.startswith("on")]
    # It is shown as text, escaped, and a template expression in the data is not evaluated.
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;span onmouseover=" in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "<td>{{7*7}}</td>" in html
    assert "<td>&amp;amp;</td>" in html

    jobs = {row[10]: row for row in page.rows("Recent materialization jobs")}  # by run id
    quarantined = {row[3]: row for row in page.rows("Quarantined rows")}  # by entity id
    misses = {row[1]: row for row in page.rows("Missed deadlines")}  # by run id
    for value in HOSTILE:
        assert jobs[value][11] == value  # the error message
        assert jobs[value][5] == "failed"
        assert quarantined[value][2] == f"user_engagement:{value}"
        assert quarantined[value][5:] == [value, value]  # rule, reason
        assert misses[value][3] == value
    assert all("None" not in cell for section in page.sections for row in page.rows(section) for cell in row)

    # The page's own badges are still real elements: one per freshness row and per job, nothing else.
    assert '<span class="badge failed">failed</span>' in html
    assert '<span class="badge stale">stale</span>' in html
    badges = [
        (attrs, cell.text)
        for section in ("Freshness", "Recent materialization jobs")
        for row in page.sections[section]
        for cell in row
        for attrs in cell.spans
    ]
    assert len(badges) == len(page.rows("Freshness")) + len(HOSTILE)
    assert all(attrs == [("class", f"badge {text}")] and text in BADGES for attrs, text in badges)
    assert len(badges) == sum(1 for tag, _ in page.elements if tag == "span")


def test_the_view_shows_empty_states_and_keeps_refreshing(client: TestClient) -> None:
    html = client.get("/").text
    page = parse(html)
    assert page.empty == {
        "Recent materialization jobs": "no jobs yet",
        "Quarantined rows by feature and rule": "no quarantined rows",
        "Quarantined rows": "no quarantined rows",
        "Missed deadlines": "no missed deadlines",
    }
    assert '<p class="empty">no jobs yet</p>' in html
    assert '<meta http-equiv="refresh" content="30">' in html
    assert ".badge { padding:" in html
    # Nothing ran: every active (tenant, group) is stale, shown with a badge and empty time cells.
    freshness = page.rows("Freshness")
    assert {(row[0], row[1]) for row in freshness} >= {("acme", "user_engagement"), ("globex", "message_features")}
    assert all(row[3:6] == ["", "", ""] and row[7] == "stale" for row in freshness)


def test_the_view_filters_by_tenant_and_shows_shared_and_owned_groups(client: TestClient, db: Sql) -> None:
    db.execute(
        "INSERT INTO feature_store.feature_groups (id, entity_type, owner_tenant_id)"
        " VALUES ('acme_only', 'user', 'acme')"
    )
    db.execute(
        "INSERT INTO feature_store.tenant_group_settings (tenant_id, feature_group_id, enabled, ttl_seconds)"
        " VALUES ('acme', 'message_features', false, 60)"
    )
    everyone = parse(client.get("/").text)
    groups = {(r[0], r[1]): r[2:] for r in everyone.rows("Feature groups per tenant")}
    assert groups[("acme", "acme_only")] == ["owned", "yes", ""]
    assert groups[("acme", "message_features")] == ["shared", "disabled for this tenant", "ttl_seconds=60"]
    assert groups[("globex", "message_features")] == ["shared", "yes", ""]
    assert ("globex", "acme_only") not in groups

    page = parse(client.get("/", params={"tenant": "globex"}).text)
    assert {r[0] for r in page.rows("Feature groups per tenant")} == {"globex"}
    assert {r[0] for r in page.rows("Freshness")} == {"globex"}
    acme = parse(client.get("/", params={"tenant": "acme"}).text)
    assert ("acme", "message_features") not in {(r[0], r[1]) for r in acme.rows("Freshness")}  # disabled
    assert ("acme", "acme_only") in {(r[0], r[1]) for r in acme.rows("Freshness")}
    assert client.get("/api/groups", params={"tenant": "globex"}).json()[0]["tenant_id"] == "globex"
    missing = client.get("/", params={"tenant": "nobody"})
    assert missing.status_code == 404
    assert "tenant 'nobody' does not exist" in missing.json()["detail"]
