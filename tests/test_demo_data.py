"""The demo data is as varied as it claims, repeatable by seed, and still holds its invalid rows."""

from __future__ import annotations

from featurepipe_demo import generate_data
from support import HOURS, Sql


def distribution(db: Sql, table: str, key: str) -> dict[int, int]:
    """How many parents have n children: {n: parents}."""
    return dict(db.rows(f"SELECT n, count(*) FROM (SELECT count(*) AS n FROM app.{table} GROUP BY {key}) s GROUP BY n"))


def fingerprint(db: Sql) -> tuple[str, str, str]:
    return (
        db.value("SELECT md5(string_agg(c::text, ',' ORDER BY id)) FROM app.conversations c"),
        db.value("SELECT md5(string_agg(m::text, ',' ORDER BY id)) FROM app.messages m"),
        db.value("SELECT md5(string_agg(f::text, ',' ORDER BY id)) FROM app.feedback f"),
    )


def test_conversation_and_message_counts_vary_per_row(db: Sql) -> None:
    # The template's data (12 users per tenant, seed 0.17).
    per_user = distribution(db, "conversations", "user_id")
    assert len(per_user) > 1, f"every user has the same number of conversations: {per_user}"
    assert set(per_user) <= {1, 2, 3, 4}
    per_conversation = distribution(db, "messages", "conversation_id")
    assert len(per_conversation) > 3, f"conversations have too few distinct lengths: {per_conversation}"
    assert set(per_conversation) <= set(range(2, 25))
    # Every user has a conversation and every conversation has messages.
    assert sum(per_user.values()) == db.value("SELECT count(*) FROM app.users")
    assert sum(per_conversation.values()) == db.value("SELECT count(*) FROM app.conversations")


def test_the_same_seed_gives_the_same_data_and_another_seed_other_data(db: Sql) -> None:
    template = fingerprint(db)
    generate_data(db.conn, start=HOURS[0].start, end=HOURS[-1].end, users_per_tenant=12, seed=0.17)
    assert fingerprint(db) == template
    generate_data(db.conn, start=HOURS[0].start, end=HOURS[-1].end, users_per_tenant=12, seed=0.5)
    assert fingerprint(db) != template


def test_the_deliberately_invalid_rows_are_still_there(db: Sql) -> None:
    generate_data(db.conn, start=HOURS[0].start, end=HOURS[-1].end, users_per_tenant=40, seed=0.42)
    assert db.value("SELECT count(*) FROM app.messages WHERE token_count < 0") > 0
    assert db.value("SELECT count(*) FROM app.messages WHERE intent = 'gibberish'") > 0
    assert db.value("SELECT count(*) FROM app.feedback WHERE rating NOT BETWEEN 1 AND 5") > 0
    # ... and a few, not many: about 1% of messages and 1.5% of ratings.
    assert db.value("SELECT avg((token_count < 0)::int) FROM app.messages") < 0.05
    assert db.value("SELECT avg((rating NOT BETWEEN 1 AND 5)::int) FROM app.feedback") < 0.05
    # Nothing lands outside the range the demo was asked for.
    assert db.value("SELECT max(created_at) FROM app.messages") <= HOURS[-1].end
    assert db.value("SELECT min(created_at) FROM app.messages") > HOURS[0].start
