"""Function features of the demo repo: text features that SQL expresses badly, computed in Python.

Each function gets batches of its feature's SQL rows (tuples, in the SQL's column order) and yields
`(entity_id, value[, event_time])`; see the README's "Function features".
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime

# First matching keyword wins; a message matching none is "other".
TOPICS = (
    ("billing", ("billing", "invoice", "refund", "charge")),
    ("account", ("password", "login", "account")),
    ("data", ("export", "import", "chats")),
    ("integrations", ("slack", "integration", "api", "webhook")),
    ("plans", ("plan", "upgrade", "pricing")),
)


def topic(batch: Iterable[tuple[str, str, datetime]]) -> Iterator[tuple[str, str, datetime]]:
    """The topic of each user message, from the words of its content."""
    for message_id, content, created_at in batch:
        words = {w.strip(".,?!:;").lower() for w in content.split()}
        yield message_id, next((name for name, keys in TOPICS if words & set(keys)), "other"), created_at
