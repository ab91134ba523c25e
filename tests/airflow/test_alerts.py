"""Alerts end to end: breaches found in the real database, delivered by the Airflow notifiers to a real
SMTP server (aiosmtpd, in a thread) and a real HTTP webhook receiver; one per breach, one on recovery,
routed per group, and no credential in any message, log line or stored row."""

from __future__ import annotations

import json
import logging
import shutil
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from feature_store import FeatureStore, JobStatus, PipelineConfig
from feature_store.errors import DefinitionError
from featurepipe_demo import demo_repo_path
from support import HOURS, QuietHandler, Sql, http_server

pytestmark = pytest.mark.airflow

SMTP_PASSWORD = "s3cret-smtp-pw"
WEBHOOK_TOKEN = "bearer-s3cret-token"
PATH_TOKEN = "T0KEN-in-the-url"
SECRETS = (SMTP_PASSWORD, WEBHOOK_TOKEN, PATH_TOKEN)

ALERTS_YAML = """
alerts:
  channels:
    oncall-email: {{type: email, to: [oncall@example.com], connection: fp_smtp, from_email: featurepipe@example.com}}
    data-webhook: {{type: webhook, connection: fp_webhook}}
    messages-webhook: {{type: webhook, url_env: FP_TEST_MESSAGES_WEBHOOK}}
  routes:
    - groups: [user_engagement]
      kinds: [job_failed, quarantine_rate]
      channels: [oncall-email, data-webhook]
    - groups: [message_features]
      kinds: [quarantine_rate]
      quarantine_rate: 0.05
      channels: [messages-webhook]
    - {{kinds: [not_fresh, deadline_missed], channels: [data-webhook]{freshness_target}}}
"""


# -- the sinks ---------------------------------------------------------------------------------------


class _Mailbox:
    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.raw: list[bytes] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.raw.append(envelope.content)
        self.messages.append(message_from_bytes(envelope.content))
        return "250 OK"


def _authenticator(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
    ok = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login == b"alerts"
        and auth_data.password == SMTP_PASSWORD.encode()
    )
    return AuthResult(success=ok)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def mailbox() -> Iterator[_Mailbox]:
    """A real SMTP server on loopback that requires a login and keeps every message."""
    box = _Mailbox()
    controller = Controller(
        box,
        hostname="127.0.0.1",
        port=_free_port(),
        authenticator=_authenticator,
        auth_require_tls=False,
        auth_required=True,
    )
    controller.start()
    box.port = controller.port  # type: ignore[attr-defined]
    yield box
    controller.stop()


@dataclass
class _Webhooks:
    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    fail_next: int = 0
    port: int = 0

    def bodies(self, path: str) -> list[dict[str, Any]]:
        return [json.loads(body) for p, _, body in self.requests if p == path]


@pytest.fixture
def webhooks() -> Iterator[_Webhooks]:
    """A real HTTP server that records every POST and answers 500 to the next `fail_next` of them."""
    state = _Webhooks()

    class Handler(QuietHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state.requests.append((self.path, dict(self.headers), body))
            status = 200
            if state.fail_next:
                state.fail_next -= 1
                status = 500
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

    with http_server(Handler) as port:
        state.port = port
        yield state


@pytest.fixture
def freshness_target() -> str:
    """The not_fresh route's own target: so far off that the test data's old hours are fresh."""
    return ", freshness_target_seconds: 1000000000"


@pytest.fixture
def alerting(
    freshness_target: str,
    airflow_env: object,
    store: FeatureStore,
    mailbox: _Mailbox,
    webhooks: _Webhooks,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> FeatureStore:
    """The demo repo plus ALERTS_YAML applied; connections and env pointing at this test's sinks."""
    repo = tmp_path / "repo"
    shutil.copytree(demo_repo_path(), repo)
    (repo / "alerts.yaml").write_text(ALERTS_YAML.format(freshness_target=freshness_target))
    smtp = {
        "conn_type": "smtp",
        "host": "127.0.0.1",
        "port": mailbox.port,  # type: ignore[attr-defined]
        "login": "alerts",
        "password": SMTP_PASSWORD,
        "extra": {"disable_ssl": True, "disable_tls": True, "retry_limit": 0, "timeout": 10},
    }
    monkeypatch.setenv("AIRFLOW_CONN_FP_SMTP", json.dumps(smtp))
    hook = {
        "conn_type": "http",
        "password": WEBHOOK_TOKEN,
        "extra": {"url": f"http://127.0.0.1:{webhooks.port}/data/{PATH_TOKEN}"},
    }
    monkeypatch.setenv("AIRFLOW_CONN_FP_WEBHOOK", json.dumps(hook))
    monkeypatch.setenv("FP_TEST_MESSAGES_WEBHOOK", f"http://127.0.0.1:{webhooks.port}/messages/{PATH_TOKEN}")
    store.apply(repo)
    return store


def deliver(store: FeatureStore) -> dict[str, int]:
    from featurepipe_airflow.alerting import evaluate_and_deliver

    return evaluate_and_deliver(store)


def materialize(store: FeatureStore, tenant: str, group: str, index: int = -1) -> JobStatus:
    window = HOURS[index]
    return store.materialize(
        PipelineConfig(tenant_id=tenant, feature_group_id=group, start_time=window.start, end_time=window.end)
    ).status


def assert_no_secrets(db: Sql, mailbox: _Mailbox, webhooks: _Webhooks, caplog: pytest.LogCaptureFixture) -> None:
    stored = db.rows(
        "SELECT title, text, coalesce(last_error, '') FROM feature_store.alert_outbox"
        " UNION ALL SELECT key, summary, '' FROM feature_store.alerts"
        " UNION ALL SELECT routing::text, '', '' FROM feature_store.alert_routing"
    )
    texts = [b.decode() for b in mailbox.raw] + [body.decode() for _, _, body in webhooks.requests]
    texts += [" ".join(row) for row in stored] + [caplog.text]
    for secret in SECRETS:
        assert not [t for t in texts if secret in t], secret


# -- tests -------------------------------------------------------------------------------------------


def test_a_quarantine_breach_alerts_once_on_its_groups_channel_and_recovers(
    alerting: FeatureStore, db: Sql, mailbox: _Mailbox, webhooks: _Webhooks, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    window = HOURS[-1]
    messages = db.rows(
        "SELECT id FROM app.messages WHERE tenant_id = 'acme' AND role = 'user' AND created_at > %s"
        " AND created_at <= %s ORDER BY id",
        (window.start, window.end),
    )
    # Over the route's 5% threshold, within the group's max_failure_rate of 10% (the job completes).
    spam = messages[: len(messages) * 8 // 100]
    assert 0.05 < len(spam) / len(messages) <= 0.1
    db.execute("UPDATE app.messages SET intent = 'spam' WHERE id = ANY(%s)", ([r[0] for r in spam],))
    assert materialize(alerting, "acme", "message_features") is JobStatus.COMPLETED

    assert deliver(alerting) == {"queued": 1, "delivered": 1, "failed": 0}
    [fired] = webhooks.bodies(f"/messages/{PATH_TOKEN}")
    assert fired["featurepipe"] == {
        "notification_id": fired["featurepipe"]["notification_id"],
        "alert": "quarantine_rate:acme/message_features/intent",
        "kind": "quarantine_rate",
        "state": "firing",
        "tenant_id": "acme",
        "feature_group_id": "message_features",
        "feature_name": "intent",
    }
    assert fired["text"].startswith("[featurepipe] quarantine rate over threshold: acme/message_features/intent\n")
    assert f"{len(spam)} of {len(messages)} rows" in fired["text"]
    assert "above the alert threshold of 5.0%" in fired["text"]
    assert fired["blocks"][0]["type"] == "header"
    assert mailbox.messages == []  # message_features is routed to its webhook only

    # Still breaching: nothing new, however often alerts are evaluated (a rerun of the window too).
    materialize(alerting, "acme", "message_features")
    assert deliver(alerting) == {"queued": 0, "delivered": 0, "failed": 0}
    assert deliver(alerting)["queued"] == 0
    assert len(webhooks.requests) == 1

    db.execute("UPDATE app.messages SET intent = 'other' WHERE id = ANY(%s)", ([r[0] for r in spam],))
    materialize(alerting, "acme", "message_features")
    assert deliver(alerting) == {"queued": 1, "delivered": 1, "failed": 0}
    resolved = webhooks.bodies(f"/messages/{PATH_TOKEN}")[1]
    assert resolved["featurepipe"]["state"] == "resolved"
    assert resolved["text"].startswith("[featurepipe] resolved: quarantine rate over threshold: acme/")
    assert deliver(alerting)["queued"] == 0
    assert alerting.open_alerts() == []
    assert_no_secrets(db, mailbox, webhooks, caplog)


def test_a_failed_job_alerts_by_email_and_webhook_and_a_failed_delivery_is_retried_not_repeated(
    alerting: FeatureStore, db: Sql, mailbox: _Mailbox, webhooks: _Webhooks, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    db.execute("ALTER TABLE app.feedback RENAME TO feedback_moved")
    assert materialize(alerting, "acme", "user_engagement") is JobStatus.FAILED

    webhooks.fail_next = 1
    assert deliver(alerting) == {"queued": 2, "delivered": 1, "failed": 1}
    [mail] = mailbox.messages
    assert mail["Subject"] == "[featurepipe] materialization job failed: acme/user_engagement"
    assert mail["To"] == "oncall@example.com"
    assert "failed" in mail.get_payload(0).get_payload(decode=True).decode()
    error = db.value("SELECT last_error FROM feature_store.alert_outbox WHERE delivered_at IS NULL")
    assert error.startswith("webhook channel data-webhook answered HTTP 500 to notification ")

    # The next run delivers the webhook that failed, and sends the e-mail again? No: once per channel.
    assert deliver(alerting) == {"queued": 0, "delivered": 1, "failed": 0}
    assert len(mailbox.messages) == 1
    hooks = webhooks.requests
    assert [p for p, _, _ in hooks] == [f"/data/{PATH_TOKEN}"] * 2  # the 500, then the delivery
    assert hooks[1][1]["Authorization"] == f"Bearer {WEBHOOK_TOKEN}"
    assert json.loads(hooks[1][2])["featurepipe"]["alert"] == "job_failed:acme/user_engagement"

    db.execute("ALTER TABLE app.feedback_moved RENAME TO feedback")
    assert materialize(alerting, "acme", "user_engagement") is JobStatus.COMPLETED
    assert deliver(alerting) == {"queued": 2, "delivered": 2, "failed": 0}
    assert mailbox.messages[1]["Subject"] == "[featurepipe] resolved: materialization job failed: acme/user_engagement"
    assert json.loads(webhooks.requests[-1][2])["featurepipe"]["state"] == "resolved"
    assert_no_secrets(db, mailbox, webhooks, caplog)


@pytest.mark.parametrize("freshness_target", [""])  # the group's own target (2 h)
def test_stale_groups_and_missed_deadlines_alert_and_clear(
    alerting: FeatureStore, db: Sql, mailbox: _Mailbox, webhooks: _Webhooks, caplog: pytest.LogCaptureFixture
) -> None:
    # The test data's hours are long past: globex/user_engagement is older than its 2 h target. A group
    # nobody materialized yet (no job at all) does not alert.
    assert materialize(alerting, "globex", "user_engagement") is JobStatus.COMPLETED
    alerting.record_deadline_miss(
        dag_id="feature_materialization", run_id="scheduled__late", deadline_time=HOURS[-1].end, message="run late"
    )
    assert deliver(alerting)["delivered"] == 2
    fired = {b["featurepipe"]["alert"]: b for b in webhooks.bodies(f"/data/{PATH_TOKEN}")}
    assert set(fired) == {"not_fresh:globex/user_engagement", "deadline_missed:feature_materialization/scheduled__late"}
    assert "longer than its freshness target of 7200 s" in fired["not_fresh:globex/user_engagement"]["text"]
    assert mailbox.messages == []

    # A window that ended within the target makes it fresh; the late run's jobs ended, so it cleared.
    from datetime import datetime, timedelta, timezone

    end = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
    result = alerting.materialize(
        PipelineConfig(
            tenant_id="globex", feature_group_id="user_engagement", start_time=end - timedelta(hours=1), end_time=end
        )
    )
    assert result.status is JobStatus.COMPLETED
    db.execute(
        "UPDATE feature_store.materialization_jobs SET dag_id = 'feature_materialization', run_id = 'scheduled__late'"
        " WHERE id = %s",
        (result.job_id,),
    )
    assert deliver(alerting)["delivered"] == 2
    states = {b["featurepipe"]["alert"]: b["featurepipe"]["state"] for b in webhooks.bodies(f"/data/{PATH_TOKEN}")[2:]}
    assert states == {
        "not_fresh:globex/user_engagement": "resolved",
        "deadline_missed:feature_materialization/scheduled__late": "resolved",
    }
    assert_no_secrets(db, mailbox, webhooks, caplog)


def test_routes_naming_unknown_groups_or_channels_are_rejected_with_the_file(
    store: FeatureStore, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(demo_repo_path(), repo)
    (repo / "alerts.yaml").write_text(
        "alerts:\n  channels:\n    a: {type: webhook, url_env: HOOK}\n"
        "  routes:\n    - {groups: [user_engagment], channels: [a]}\n    - {channels: [b]}\n"
    )
    with pytest.raises(DefinitionError, match=r"alerts.yaml:\d+.*route 2 names unknown channel\(s\) b"):
        store.apply(repo)
    (repo / "alerts.yaml").write_text(
        "alerts:\n  channels:\n    a: {type: webhook, url_env: HOOK}\n"
        "  routes:\n    - {groups: [user_engagment], channels: [a]}\n"
    )
    with pytest.raises(DefinitionError, match=r"alerts.yaml:\d+: alerts route 1 names unknown feature group\(s\)"):
        store.apply(repo)
