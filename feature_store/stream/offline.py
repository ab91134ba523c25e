"""Log stream-updated values to the offline store, a batch at a time, so point-in-time reads see them.

Each value lands in the group's wide row at (tenant, group, entity, event time), merged into whatever
the row holds (a batch feature's value of the same time stays). Writing the same values again (a
redelivered batch) leaves the same rows.
"""

from __future__ import annotations

import json
from datetime import datetime

import psycopg

from feature_store.db import advisory_xact_lock


def log_values(conn: psycopg.Connection, rows: dict[tuple[str, str, str, datetime], dict[str, object]]) -> int:
    """Upsert (tenant, group, entity, event time) -> {feature: value}; returns the rows written."""
    if not rows:
        return 0
    with conn.transaction():
        # The lock a batch write of the same (tenant, group) takes: its DELETE + INSERT of a window must
        # not meet a row inserted in between.
        for tenant_id, group_id in sorted({(t, g) for t, g, _, _ in rows}):
            advisory_xact_lock(conn, f"featurepipe offline {tenant_id}\x1f{group_id}")
        conn.execute(
            "CREATE TEMP TABLE IF NOT EXISTS _fp_stream_values (tenant_id text, feature_group_id text,"
            " entity_id text, event_time timestamptz, features jsonb) ON COMMIT DROP"
        )
        # COPY's text format built in one go: far cheaper than a row at a time, and this runs beside the
        # consumer's next batch (sharing its interpreter).
        lines = [
            f"{_text(t)}\t{_text(g)}\t{_text(e)}\t{at.isoformat()}\t{_text(json.dumps(features))}\n"
            for (t, g, e, at), features in rows.items()
        ]
        with conn.cursor().copy(
            "COPY _fp_stream_values (tenant_id, feature_group_id, entity_id, event_time, features) FROM STDIN"
        ) as copy:
            copy.write("".join(lines).encode())
        cur = conn.execute(
            "INSERT INTO feature_store.offline_rows (tenant_id, feature_group_id, entity_id, event_time, features)"
            " SELECT tenant_id, feature_group_id, entity_id, event_time, features FROM _fp_stream_values"
            " ON CONFLICT (tenant_id, feature_group_id, entity_id, event_time)"
            " DO UPDATE SET features = offline_rows.features || excluded.features"
        )
        return cur.rowcount


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _text(value: str) -> str:
    """A value as COPY's text format reads it (backslash, tab and line breaks escaped)."""
    return value.translate(_COPY_ESCAPES)
