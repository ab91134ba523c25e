"""The demo's event stream: the app's events replayed from its source rows, in the order they happened.

Every conversation becomes a `conversation.created`, every message a `message.created` (its length,
token count and intent), every rating a `feedback.received`. The demo data's deliberately broken rows
(a negative token count, a rating of 0 or 42) make invalid events, which consumers dead-letter.
"""

from __future__ import annotations

from typing import Any

import psycopg

EVENTS_SQL = """
SELECT * FROM (
    SELECT c.created_at, 'conversation.created' AS event_type, 'conversation:' || c.id AS event_id, c.tenant_id,
           c.user_id, c.id AS conversation_id, NULL::text AS message_id, '{}'::jsonb AS payload
    FROM app.conversations c WHERE c.tenant_id = ANY(%(tenants)s)
    UNION ALL
    SELECT m.created_at, 'message.created', 'message:' || m.id, m.tenant_id, m.user_id, m.conversation_id, m.id,
           jsonb_build_object('length', length(m.content), 'token_count', m.token_count,
                              'detected_intent', coalesce(m.intent, 'unknown'))
    FROM app.messages m WHERE m.tenant_id = ANY(%(tenants)s)
    UNION ALL
    SELECT f.created_at, 'feedback.received', 'feedback:' || f.id, f.tenant_id, f.user_id, NULL, f.message_id,
           jsonb_build_object('rating', f.rating)
    FROM app.feedback f WHERE f.tenant_id = ANY(%(tenants)s)
) e ORDER BY created_at, event_id
"""


def events_from_sources(conn: psycopg.Connection, *, tenants: list[str]) -> list[dict[str, Any]]:
    """The tenants' events as JSON-ready dicts, oldest first."""
    found = []
    for at, kind, event_id, tenant, user, conversation, message, payload in conn.execute(
        EVENTS_SQL, {"tenants": tenants}
    ):
        event: dict[str, Any] = {
            "event_type": kind,
            "event_id": event_id,
            "tenant_id": tenant,
            "user_id": user,
            "timestamp": at.isoformat(),
            "payload": payload,
        }
        if conversation is not None:
            event["conversation_id"] = conversation
        if message is not None:
            event["message_id"] = message
        found.append(event)
    return found
