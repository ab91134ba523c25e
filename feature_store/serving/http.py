"""The HTTP feature server (FastAPI): online reads and event push, each request scoped to its API key's tenant.

`feature-store serve` runs it with uvicorn; `create_app(store)` builds it on a ready `FeatureStore`
(tests, embedding). Keys go in `X-API-Key` (or `Authorization: Bearer <key>`): missing -> 401, not
valid -> 401, a request naming another tenant than its key's -> 403. Bad requests get a 4xx whose
`detail` says what is wrong (422 for a body that does not fit the schema, 400 for a feature of another
entity type or a malformed reference, 404 for an unknown feature or group).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from feature_store.errors import (
    AuthenticationError,
    EventPublishError,
    FeatureStoreError,
    NotFoundError,
    OnDemandError,
)
from feature_store.store import FeatureStore
from feature_store.stream.events import parse_event

API_KEY_CACHE_SECONDS = 10.0
"""How long a server trusts a key it checked (a revoked key stops working within this time)."""

MAX_ENTITIES = 1000
MAX_FEATURES = 200


class OnlineRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    entity_type: str = Field(min_length=1, examples=["user"])
    entity_ids: list[str] = Field(min_length=1, max_length=MAX_ENTITIES, examples=[["u1", "u2"]])
    features: list[str] = Field(min_length=1, max_length=MAX_FEATURES, examples=[["user_engagement:message_count"]])
    tenant_id: str | None = Field(default=None, description="Optional; must be the API key's tenant if given.")
    request_data: dict[str, Any] | None = Field(
        default=None, description="Inputs of on-demand features that come with the request (not from the store)."
    )


class FeatureColumn(BaseModel):
    values: list[Any]
    statuses: list[str]
    event_times: list[str | None]


class OnlineResponse(BaseModel):
    tenant_id: str
    entity_ids: list[str]
    features: dict[str, FeatureColumn]


class EventsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    events: list[dict[str, Any]] = Field(min_length=1, max_length=10_000)


class EventsResponse(BaseModel):
    published: int
    ids: list[str]


class _KeyCache:
    """Checked keys -> tenant, for API_KEY_CACHE_SECONDS (a PostgreSQL round trip per request otherwise)."""

    def __init__(self, lookup: Callable[[str], str]) -> None:
        self._lookup = lookup
        self._cache: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def tenant(self, key: str) -> str:
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and hit[1] > now:
            return hit[0]
        with self._lock:
            tenant = self._lookup(key)  # raises AuthenticationError
        self._cache[key] = (tenant, now + API_KEY_CACHE_SECONDS)
        return tenant


def create_app(store: FeatureStore) -> FastAPI:
    """The feature server over `store` (which it uses from its worker threads; psycopg serialises them)."""
    app = FastAPI(
        title="featurepipe feature server",
        description="Online features and event push, scoped to the tenant of the request's API key.",
        version="1",
    )
    keys = _KeyCache(store.tenant_for_api_key)
    db_lock = threading.Lock()

    async def tenant_of_request(
        x_api_key: str | None = Header(default=None, description="The tenant's API key."),
        authorization: str | None = Header(default=None, description="Or: `Bearer <API key>`."),
    ) -> str:
        key = x_api_key
        if key is None and authorization and authorization.lower().startswith("bearer "):
            key = authorization[7:].strip()
        if not key:
            raise HTTPException(401, "missing API key: send it as X-API-Key (or Authorization: Bearer)")
        try:
            return keys.tenant(key)
        except AuthenticationError as exc:
            raise HTTPException(401, str(exc)) from None

    def same_tenant(requested: str | None, tenant: str) -> None:
        if requested is not None and requested != tenant:
            raise HTTPException(403, f"this API key belongs to tenant {tenant!r}, not {requested!r}")

    @app.exception_handler(FeatureStoreError)
    def _feature_store_error(_: Request, exc: FeatureStoreError) -> JSONResponse:
        status = 404 if isinstance(exc, NotFoundError) else 422 if isinstance(exc, OnDemandError) else 400
        if exc.retryable:
            status = 503
        return JSONResponse({"detail": str(exc)}, status_code=status)

    @app.get("/health")
    def health() -> dict[str, str]:
        """PostgreSQL and the online store answer (503 naming the one that does not)."""
        try:
            with db_lock:
                store.conn.execute("SELECT 1")
        except Exception as exc:  # any failure means "not healthy"; say which
            raise HTTPException(503, f"PostgreSQL: {exc}") from None
        try:
            store.online.instance_id()
        except Exception as exc:
            raise HTTPException(503, f"online store: {exc}") from None
        return {"status": "ok"}

    @app.post("/features/online", response_model=OnlineResponse)
    async def online_features(body: OnlineRequest, tenant: str = Depends(tenant_of_request)) -> Any:
        """Latest values of many features for many entities of the key's tenant, in one round trip."""
        # Served on the event loop, not a worker thread: a read is one Redis round trip (the registry
        # and keys are cached), cheaper than the hop to a thread; the body is built as JSON directly.
        same_tenant(body.tenant_id, tenant)
        read = store.get_online_features(
            tenant, body.entity_type, body.entity_ids, body.features, **_request_data(body.request_data)
        )
        return Response(json.dumps({"tenant_id": tenant, **read.to_dict()}), media_type="application/json")

    @app.post("/events", response_model=EventsResponse, status_code=202)
    def push_events(body: EventsRequest, tenant: str = Depends(tenant_of_request)) -> Any:
        """Publish events of the key's tenant (validated; all or none); consumers apply them."""
        problems: list[tuple[int, str]] = []
        for i, raw in enumerate(body.events):
            if raw.get("tenant_id") != tenant:
                raise HTTPException(
                    403, f"event {i}: this API key belongs to tenant {tenant!r}, not {raw.get('tenant_id')!r}"
                )
        parsed = []
        for i, raw in enumerate(body.events):
            try:
                parsed.append(parse_event(raw))
            except FeatureStoreError as exc:
                problems.append((i, str(exc)))
        if problems:
            raise HTTPException(422, EventPublishError(problems).args[0])
        ids = store.publish_events(parsed)
        return {"published": len(ids), "ids": ids}

    return app


def _request_data(data: dict[str, Any] | None) -> dict[str, Any]:
    return {} if data is None else {"request_data": data}


def app_from_env() -> FastAPI:
    """The server on the environment's settings (uvicorn factory for `feature-store serve`)."""
    return create_app(FeatureStore.from_env())
