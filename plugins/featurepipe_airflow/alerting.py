"""Evaluate featurepipe's alerts and deliver what is pending through the notifiers (the `feature_alerts` DAG)."""

from __future__ import annotations

import logging

from airflow.sdk import BaseNotifier

from feature_store import FeatureStore
from feature_store.monitoring.alerts import Notification
from feature_store.monitoring.routing import AlertRouting, EmailChannel
from featurepipe_airflow.notifiers import DeliveryError, FeatureStoreEmailNotifier, FeatureStoreWebhookNotifier

log = logging.getLogger(__name__)


def evaluate_and_deliver(store: FeatureStore) -> dict[str, int]:
    """Queue notifications for breaches that opened or cleared, then deliver every pending one (earlier
    failures too). Returns counts: queued, delivered, failed."""
    queued = store.evaluate_alerts()
    routing = store.alert_routing()
    delivered = failed = 0
    for notification in store.pending_alert_notifications():
        try:
            notifier_for(routing, notification).notify({})
        except DeliveryError as exc:
            log.warning("alert notification %s not delivered: %s", notification.id, exc)
            store.mark_alert_failed(notification.id, str(exc))
            failed += 1
        else:
            log.info(
                "delivered %s %s to channel %s", notification.state.value, notification.alert_key, notification.channel
            )
            store.mark_alert_delivered(notification.id)
            delivered += 1
    return {"queued": len(queued), "delivered": delivered, "failed": failed}


def notifier_for(routing: AlertRouting, notification: Notification) -> BaseNotifier:
    """The notifier of the notification's channel, as the applied repo declares it now."""
    channel = routing.channels.get(notification.channel)
    if channel is None:
        raise DeliveryError(
            f"channel {notification.channel} of notification {notification.id} is no longer declared in the repo's"
            f" alerts; declared: {', '.join(sorted(routing.channels)) or 'none'}"
        )
    if isinstance(channel, EmailChannel):
        return FeatureStoreEmailNotifier(channel_name=notification.channel, channel=channel, notification=notification)
    return FeatureStoreWebhookNotifier(channel_name=notification.channel, channel=channel, notification=notification)
