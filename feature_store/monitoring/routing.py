"""Alert routing as declared in the feature repo's `alerts:` section: channels, and which groups and
kinds of alert go to which channels.

Channels name where credentials live (an Airflow connection, an environment variable), never the
credentials themselves: the repo is code anyone may read, and the routing is stored in the database.
"""

from __future__ import annotations

import enum
from typing import Annotated, Literal

import psycopg
from psycopg.types.json import Jsonb
from pydantic import Field, TypeAdapter, model_validator

from feature_store.definitions.models import Identifier, StrictModel

ENV_NAME_PATTERN = r"^[A-Z_][A-Z0-9_]{0,127}$"


class AlertKind(str, enum.Enum):
    QUARANTINE_RATE = "quarantine_rate"
    """The latest window of a feature quarantined more than the route's threshold of its rows."""
    JOB_FAILED = "job_failed"
    """The latest finished job of a (tenant, group) failed."""
    DEADLINE_MISSED = "deadline_missed"
    """A run of the materialization DAG missed its deadline and has not finished."""
    NOT_FRESH = "not_fresh"
    """A (tenant, group)'s last completed window ended longer ago than its freshness target."""


class EmailChannel(StrictModel):
    """E-mail through the SMTP server of an Airflow connection (host, port, login, password, extras)."""

    type: Literal["email"]
    to: list[Annotated[str, Field(pattern=r"^[^@\s]+@[^@\s]+$")]] = Field(min_length=1)
    connection: Identifier = "smtp_default"
    from_email: str | None = None
    """Sender; else the connection's `from_email` extra."""


class WebhookChannel(StrictModel):
    """A POST of a Slack-compatible JSON payload (`text`, `blocks`) to a URL kept outside the repo.

    The URL comes from an Airflow connection (its `host` holding the whole URL, or the `url` extra; the
    connection's password, if any, is sent as a bearer token) or from an environment variable.
    """

    type: Literal["webhook"]
    connection: Identifier | None = None
    url_env: Annotated[str, Field(pattern=ENV_NAME_PATTERN)] | None = None
    token_env: Annotated[str, Field(pattern=ENV_NAME_PATTERN)] | None = None
    """Environment variable holding a bearer token (with `url_env`)."""

    @model_validator(mode="after")
    def _one_source(self) -> WebhookChannel:
        if (self.connection is None) == (self.url_env is None):
            raise ValueError("a webhook channel needs exactly one of connection and url_env")
        if self.token_env and self.connection:
            raise ValueError("token_env goes with url_env; a connection keeps its token as its password")
        return self


Channel = Annotated[EmailChannel | WebhookChannel, Field(discriminator="type")]


class AlertRoute(StrictModel):
    """Alerts of these groups (`*`: any, and alerts of no group such as a missed deadline) and kinds
    go to these channels."""

    groups: list[Identifier | Literal["*"]] = Field(default_factory=lambda: ["*"], min_length=1)
    kinds: list[AlertKind] = Field(default_factory=lambda: list(AlertKind), min_length=1)
    channels: list[Identifier] = Field(min_length=1)
    quarantine_rate: float = Field(default=0.05, ge=0.0, le=1.0)
    """Alert when more than this share of a window's rows is quarantined."""
    freshness_target_seconds: int | None = Field(default=None, gt=0)
    """Not fresh after this long; else the group's `freshness_target_seconds`, else twice its schedule."""

    def matches(self, group_id: str | None, kind: AlertKind) -> bool:
        return kind in self.kinds and ("*" in self.groups or group_id in self.groups)


class AlertRouting(StrictModel):
    channels: dict[Identifier, Channel] = Field(default_factory=dict)
    routes: list[AlertRoute] = Field(default_factory=list)

    @model_validator(mode="after")
    def _known_channels(self) -> AlertRouting:
        for i, route in enumerate(self.routes):
            unknown = [c for c in route.channels if c not in self.channels]
            if unknown:
                raise ValueError(
                    f"route {i + 1} names unknown channel(s) {', '.join(unknown)}; declared channels:"
                    f" {', '.join(sorted(self.channels)) or 'none'}"
                )
        return self

    def routes_for(self, group_id: str | None, kind: AlertKind) -> list[AlertRoute]:
        return [r for r in self.routes if r.matches(group_id, kind)]

    def channels_for(self, group_id: str | None, kind: AlertKind) -> list[str]:
        """Channel names an alert goes to, each once, in the order the routes name them."""
        names: list[str] = []
        for route in self.routes_for(group_id, kind):
            names.extend(c for c in route.channels if c not in names)
        return names


_ROUTING = TypeAdapter(AlertRouting)


def store_routing(conn: psycopg.Connection, routing: AlertRouting) -> None:
    """Replace the stored routing (the repo is applied whole: no `alerts:` section means no routes)."""
    conn.execute(
        "INSERT INTO feature_store.alert_routing (id, routing) VALUES (true, %s)"
        " ON CONFLICT (id) DO UPDATE SET routing = excluded.routing, updated_at = now()",
        (Jsonb(routing.model_dump(mode="json")),),
    )


def load_routing(conn: psycopg.Connection) -> AlertRouting:
    row = conn.execute("SELECT routing FROM feature_store.alert_routing").fetchone()
    return _ROUTING.validate_python(row[0]) if row else AlertRouting()
