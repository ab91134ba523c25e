"""Per-tenant API keys for the HTTP feature server: created once (shown once), stored hashed, revocable."""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime

import psycopg
from pydantic import BaseModel

from feature_store.db import fetch_models

KEY_PREFIX = "fpk_"


class ApiKey(BaseModel):
    """A stored key, without the key itself (only its first characters, to tell keys apart)."""

    id: int
    tenant_id: str
    name: str
    key_prefix: str
    created_at: datetime
    revoked_at: datetime | None = None


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(conn: psycopg.Connection, *, tenant_id: str, name: str = "") -> tuple[ApiKey, str]:
    """A new key of the tenant: (its record, the key). The key is not stored and cannot be shown again."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    found = fetch_models(
        conn,
        ApiKey,
        "INSERT INTO feature_store.api_keys (tenant_id, name, key_hash, key_prefix) VALUES (%s, %s, %s, %s)"
        " RETURNING id, tenant_id, name, key_prefix, created_at, revoked_at",
        (tenant_id, name, hash_key(key), key[: len(KEY_PREFIX) + 6]),
    )
    return found[0], key


def tenant_of(conn: psycopg.Connection, key: str) -> str | None:
    """The tenant of an active key (its tenant active too), or None."""
    row = conn.execute(
        "SELECT k.tenant_id FROM feature_store.api_keys k JOIN feature_store.tenants t ON t.id = k.tenant_id"
        " WHERE k.key_hash = %s AND k.revoked_at IS NULL AND t.status = 'active'",
        (hash_key(key),),
    ).fetchone()
    return str(row[0]) if row else None


def list_keys(conn: psycopg.Connection, *, tenant_id: str | None = None) -> list[ApiKey]:
    return fetch_models(
        conn,
        ApiKey,
        "SELECT id, tenant_id, name, key_prefix, created_at, revoked_at FROM feature_store.api_keys"
        " WHERE %(tenant)s::text IS NULL OR tenant_id = %(tenant)s ORDER BY id",
        {"tenant": tenant_id},
    )


def revoke_key(conn: psycopg.Connection, key_id: int) -> bool:
    """Revoke a key; False when there is no such active key."""
    cur = conn.execute(
        "UPDATE feature_store.api_keys SET revoked_at = now() WHERE id = %s AND revoked_at IS NULL", (key_id,)
    )
    return cur.rowcount == 1
