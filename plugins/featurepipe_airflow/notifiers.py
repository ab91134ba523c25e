"""Airflow notifiers that deliver one featurepipe alert notification: e-mail and a generic webhook.

The library decides what to alert (`FeatureStore.evaluate_alerts`); these only deliver. Alert text
is data (feature names, error messages), so no field is a template: Airflow renders nothing in it.
Credentials come from Airflow connections or the environment and never appear in a message, a log
line or an error: a failed delivery raises `DeliveryError` naming the channel, not the URL.
"""

from __future__ import annotations

import html
import logging
import os
from typing import Any

import httpx
from airflow.sdk import BaseHook, BaseNotifier

from feature_store.errors import FeatureStoreError
from feature_store.monitoring.alerts import AlertState, Notification
from feature_store.monitoring.routing import EmailChannel, WebhookChannel

log = logging.getLogger(__name__)

WEBHOOK_TIMEOUT_S = 10.0
"""Longest a webhook POST may take; a slow receiver fails the delivery, which is retried next time."""


class DeliveryError(FeatureStoreError):
    """A notification could not be delivered; the message names the channel and never a credential."""


class FeatureStoreEmailNotifier(BaseNotifier):
    """Sends a notification as e-mail through the SMTP server of an Airflow connection (SmtpHook)."""

    template_fields = ()

    def __init__(self, *, channel_name: str, channel: EmailChannel, notification: Notification) -> None:
        super().__init__()
        self.channel_name = channel_name
        self.channel = channel
        self.notification = notification

    def notify(self, context: Any) -> None:
        from airflow.providers.smtp.hooks.smtp import SmtpHook

        n = self.notification
        body = (
            f"<p>{html.escape(n.text)}</p>"
            f"<p>kind: {html.escape(n.kind.value)} · state: {html.escape(n.state.value)}"
            f" · alert: {html.escape(n.alert_key)}</p>"
        )
        try:
            with SmtpHook(smtp_conn_id=self.channel.connection) as hook:
                hook.send_email_smtp(
                    to=self.channel.to,
                    subject=n.title,
                    html_content=body,
                    from_email=self.channel.from_email,
                    mime_subtype="alternative",
                )
        except Exception as exc:
            raise DeliveryError(
                f"e-mail channel {self.channel_name} (connection {self.channel.connection}) could not send"
                f" notification {n.id}: {type(exc).__name__}"
            ) from None


class FeatureStoreWebhookNotifier(BaseNotifier):
    """POSTs a notification as a Slack-compatible JSON payload (`text`, `blocks`, plus `featurepipe`)."""

    template_fields = ()

    def __init__(self, *, channel_name: str, channel: WebhookChannel, notification: Notification) -> None:
        super().__init__()
        self.channel_name = channel_name
        self.channel = channel
        self.notification = notification

    def notify(self, context: Any) -> None:
        url, token = self._target()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            response = httpx.post(url, json=payload(self.notification), headers=headers, timeout=WEBHOOK_TIMEOUT_S)
        except httpx.HTTPError as exc:  # its text holds the URL: only the kind of failure goes on
            raise DeliveryError(
                f"webhook channel {self.channel_name} could not deliver notification {self.notification.id}:"
                f" {type(exc).__name__}"
            ) from None
        if response.status_code >= 300:
            raise DeliveryError(
                f"webhook channel {self.channel_name} answered HTTP {response.status_code} to notification"
                f" {self.notification.id}"
            )

    def _target(self) -> tuple[str, str | None]:
        """The URL and bearer token, from the channel's connection or environment variables."""
        if self.channel.url_env:
            url = os.environ.get(self.channel.url_env)
            if not url:
                raise DeliveryError(
                    f"webhook channel {self.channel_name}: environment variable {self.channel.url_env} is not set"
                )
            token = os.environ.get(self.channel.token_env) if self.channel.token_env else None
            return url, token
        assert self.channel.connection is not None
        conn = BaseHook.get_connection(self.channel.connection)
        url = str(conn.extra_dejson.get("url") or conn.host or "")
        if not url.startswith(("http://", "https://")):
            raise DeliveryError(
                f"webhook channel {self.channel_name}: connection {self.channel.connection} needs the whole URL"
                " (http:// or https://) in its host or its `url` extra"
            )
        return url, conn.password or None


def payload(n: Notification) -> dict[str, Any]:
    """Slack's incoming-webhook shape (`text` for any receiver, `blocks` for Slack) and the alert as data."""
    icon = ":red_circle:" if n.state is AlertState.FIRING else ":large_green_circle:"
    return {
        "text": f"{n.title}\n{n.text}",
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": n.title[:150]}},
            {"type": "section", "text": {"type": "mrkdwn", "text": f"{icon} {_mrkdwn(n.text)}"}},
        ],
        "featurepipe": {
            "notification_id": n.id,
            "alert": n.alert_key,
            "kind": n.kind.value,
            "state": n.state.value,
            "tenant_id": n.tenant_id,
            "feature_group_id": n.feature_group_id,
            "feature_name": n.feature_name,
        },
    }


def _mrkdwn(text: str) -> str:
    """Slack's escaping: &, < and > are control characters in mrkdwn."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
