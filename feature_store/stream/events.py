"""The events applications publish, as pydantic models validated on the way in and again when consumed.

Every event carries its type, a producer-chosen `event_id` (what makes redelivery and duplicates
harmless), the tenant, the ids it is about, a typed payload and its timestamp. A new event type is a
payload model, an event model and a line in EVENT_TYPES.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator
from pydantic import ValidationError as PydanticValidationError

from feature_store.definitions.models import Identifier
from feature_store.errors import EventError

# No NUL characters: PostgreSQL text and jsonb cannot hold them, and such an event would fail its batch.
_NO_NUL = r"^[^\x00]*$"
EntityId = Annotated[str, Field(min_length=1, max_length=256, pattern=_NO_NUL)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MessagePayload(_Model):
    length: int = Field(default=0, ge=0)
    token_count: int = Field(default=0, ge=0)
    detected_intent: Annotated[str, Field(max_length=256, pattern=_NO_NUL)] = "unknown"


class ConversationPayload(_Model):
    channel: str | None = None


class FeedbackPayload(_Model):
    rating: float = Field(ge=1, le=5)


class _Event(_Model):
    event_id: str = Field(min_length=1, max_length=200, pattern=_NO_NUL)
    tenant_id: Identifier
    user_id: EntityId
    timestamp: datetime

    @field_validator("timestamp")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("timestamp needs a time zone (e.g. 2026-11-02T12:00:00Z)")
        return value


class MessageCreated(_Event):
    event_type: Literal["message.created"]
    conversation_id: EntityId
    message_id: EntityId
    payload: MessagePayload = MessagePayload()


class ConversationCreated(_Event):
    event_type: Literal["conversation.created"]
    conversation_id: EntityId
    payload: ConversationPayload = ConversationPayload()


class FeedbackReceived(_Event):
    event_type: Literal["feedback.received"]
    conversation_id: EntityId | None = None
    message_id: EntityId | None = None
    payload: FeedbackPayload


Event = Annotated[MessageCreated | ConversationCreated | FeedbackReceived, Field(discriminator="event_type")]

EVENT_TYPES: dict[str, type[_Event]] = {
    "message.created": MessageCreated,
    "conversation.created": ConversationCreated,
    "feedback.received": FeedbackReceived,
}
"""Event type -> model: what a stream feature's mapping may name."""

_ADAPTER: TypeAdapter[Any] = TypeAdapter(Event)


def id_fields(event_type: str) -> list[str]:
    """The id fields of an event type an entity can be taken from (`user_id`, `conversation_id`, ...)."""
    model = EVENT_TYPES[event_type]
    return [name for name in model.model_fields if name.endswith("_id") and name not in ("event_id", "tenant_id")]


def payload_fields(event_type: str) -> list[str]:
    annotation = EVENT_TYPES[event_type].model_fields["payload"].annotation
    assert isinstance(annotation, type) and issubclass(annotation, BaseModel)
    return list(annotation.model_fields)


def parse_event(raw: str | bytes | dict[str, Any]) -> MessageCreated | ConversationCreated | FeedbackReceived:
    """Validate one event (JSON text or a dict).

    Raises:
        EventError: with the reason (unknown event type, missing or invalid field, not JSON).
    """
    if isinstance(raw, str | bytes):
        try:  # the fast path: pydantic parses and validates the JSON in one go
            fast: MessageCreated | ConversationCreated | FeedbackReceived = _ADAPTER.validate_json(raw)
            return fast
        except PydanticValidationError:
            pass  # say precisely what is wrong, below
    try:
        data = json.loads(raw) if isinstance(raw, str | bytes) else raw
    except ValueError as exc:
        raise EventError(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise EventError("an event is a JSON object")
    kind = data.get("event_type")
    if kind not in EVENT_TYPES:
        raise EventError(f"unknown event_type {kind!r}; known: {', '.join(EVENT_TYPES)}")
    try:
        event: MessageCreated | ConversationCreated | FeedbackReceived = _ADAPTER.validate_python(data)
    except PydanticValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'][1:]) or 'event'}: {err['msg']}" for err in exc.errors()
        )
        raise EventError(f"invalid {kind} event: {problems}") from None
    return event


AnyEvent = MessageCreated | ConversationCreated | FeedbackReceived
