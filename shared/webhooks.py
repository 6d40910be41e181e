"""Webhook endpoints: where a project's events are delivered. Create (the signing secret is
returned once), list, enable or disable, delete.

Secrets follow Standard Webhooks: ``whsec_`` + base64 of random bytes, so the `standardwebhooks`
package (ours in the worker, the receiver's) accepts them as they are.
"""

from __future__ import annotations

import base64
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final
from uuid import UUID

from shared import events
from shared.db import Connection
from shared.errors import InvalidInput, NotFound
from shared.projects import get_project
from shared.webhook_urls import parse_webhook_url

SECRET_PREFIX: Final = "whsec_"  # noqa: S105 (a format prefix, not a secret)
SECRET_BYTES: Final = 32
MAX_DESCRIPTION_LENGTH: Final = 200
MAX_EVENT_TYPES: Final = 50
# The same shape the events table accepts (public.events.type check), so a subscription can match.
EVENT_TYPE_PATTERN: Final = re.compile(r"[a-z_]+(\.[a-z_]+)+")
# The endpoint name's shape (public.webhook_endpoints check webhook_endpoints_name_is_a_slug).
NAME_PATTERN: Final = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")

# secret is never selected: the authenticated role cannot read it back.
_COLUMNS = (
    "id, project_id, name, url, description, event_types, enabled, disabled_reason,"
    " created_at, updated_at"
)


@dataclass(frozen=True, slots=True)
class WebhookEndpoint:
    id: UUID
    project_id: UUID
    name: str | None
    """Unique within the project: the endpoint's identity across environments. None only for an
    endpoint older than names that was neither written nor compared since (see name_endpoints)."""
    url: str
    description: str
    event_types: tuple[str, ...]
    """Event types delivered here; empty means every type."""
    enabled: bool
    disabled_reason: str | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> WebhookEndpoint:
        return cls(**{**row, "event_types": tuple(row["event_types"])})


@dataclass(frozen=True, slots=True)
class CreatedEndpoint:
    """An endpoint just created. `secret` exists only here: show it once, never store or log it."""

    endpoint: WebhookEndpoint
    secret: str

    def __repr__(self) -> str:
        return f"CreatedEndpoint(endpoint={self.endpoint!r}, secret='<redacted>')"


def generate_secret() -> str:
    """A new Standard Webhooks signing secret."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def _clean_event_types(event_types: Sequence[str]) -> list[str]:
    if len(event_types) > MAX_EVENT_TYPES:
        raise InvalidInput(f"at most {MAX_EVENT_TYPES} event types per endpoint")
    cleaned: list[str] = []
    for event_type in event_types:
        if EVENT_TYPE_PATTERN.fullmatch(event_type) is None:
            raise InvalidInput(
                f"invalid event type {event_type!r}: expected dotted lower-case words,"
                " e.g. project.suspended"
            )
        if event_type not in cleaned:
            cleaned.append(event_type)
    return cleaned


def _clean_description(description: str) -> str:
    cleaned = description.strip()
    if len(cleaned) > MAX_DESCRIPTION_LENGTH or "\x00" in cleaned:
        raise InvalidInput(
            f"description must be at most {MAX_DESCRIPTION_LENGTH} characters of text"
        )
    return cleaned


def validate_name(name: str) -> str:
    """`name` stripped, or :class:`InvalidInput` unless it is a slug (lower-case letters, digits
    and inner dashes, at most 63 characters)."""
    cleaned = name.strip()
    if NAME_PATTERN.fullmatch(cleaned) is None:
        raise InvalidInput(
            f"invalid endpoint name {name!r}: expected lower-case letters, digits and dashes"
            " (not first or last), at most 63 characters, e.g. orders"
        )
    return cleaned


async def create_endpoint(
    conn: Connection,
    project_id: UUID,
    url: str,
    *,
    name: str | None = None,
    description: str = "",
    event_types: Sequence[str] = (),
) -> CreatedEndpoint:
    """A new endpoint of `project_id` with a fresh signing secret (returned once). Without a
    `name`, the database names it after the URL's host and path."""
    secret = generate_secret()
    cur = await conn.execute(
        "insert into public.webhook_endpoints"
        " (project_id, name, url, description, event_types, secret)"
        f" values (%s, %s, %s, %s, %s, %s) returning {_COLUMNS}",
        (
            project_id,
            None if name is None else validate_name(name),
            parse_webhook_url(url).url,
            _clean_description(description),
            _clean_event_types(event_types),
            secret,
        ),
    )
    row = await cur.fetchone()
    assert row is not None
    return CreatedEndpoint(endpoint=WebhookEndpoint.from_row(row), secret=secret)


async def name_endpoints(conn: Connection, project_ids: Sequence[UUID]) -> None:
    """Name the projects' endpoints that are older than names. Writing the row is enough: the
    database's trigger (webhook_endpoints_name) names any row written without a name."""
    await conn.execute(
        "update public.webhook_endpoints set name = null"
        " where project_id = any(%s) and name is null",
        (list(project_ids),),
    )


async def update_endpoint(
    conn: Connection,
    endpoint_id: UUID,
    *,
    description: str | None = None,
    event_types: Sequence[str] | None = None,
) -> WebhookEndpoint:
    """Change an endpoint's description or event types (None: leave as is)."""
    cur = await conn.execute(
        "update public.webhook_endpoints"
        " set description = coalesce(%s, description), event_types = coalesce(%s, event_types)"
        f" where id = %s returning {_COLUMNS}",
        (
            None if description is None else _clean_description(description),
            None if event_types is None else _clean_event_types(event_types),
            endpoint_id,
        ),
    )
    row = await cur.fetchone()
    if row is None:
        raise NotFound(f"webhook endpoint {endpoint_id} not found")
    return WebhookEndpoint.from_row(row)


async def list_endpoints(conn: Connection, project_id: UUID) -> list[WebhookEndpoint]:
    """The project's endpoints, oldest first."""
    cur = await conn.execute(
        f"select {_COLUMNS} from public.webhook_endpoints where project_id = %s"
        " order by created_at, id",
        (project_id,),
    )
    return [WebhookEndpoint.from_row(row) for row in await cur.fetchall()]


async def get_endpoint(conn: Connection, endpoint_id: UUID) -> WebhookEndpoint:
    cur = await conn.execute(
        f"select {_COLUMNS} from public.webhook_endpoints where id = %s", (endpoint_id,)
    )
    row = await cur.fetchone()
    if row is None:
        raise NotFound(f"webhook endpoint {endpoint_id} not found")
    return WebhookEndpoint.from_row(row)


async def set_enabled(
    conn: Connection, endpoint_id: UUID, enabled: bool, *, reason: str | None = None
) -> WebhookEndpoint:
    """Enable or disable an endpoint. A disabled endpoint gets no new deliveries."""
    cur = await conn.execute(
        "update public.webhook_endpoints set enabled = %s, disabled_reason = %s"
        f" where id = %s returning {_COLUMNS}",
        (enabled, None if enabled else (reason or "disabled by its owner"), endpoint_id),
    )
    row = await cur.fetchone()
    if row is None:
        raise NotFound(f"webhook endpoint {endpoint_id} not found")
    return WebhookEndpoint.from_row(row)


async def delete_endpoint(conn: Connection, endpoint_id: UUID) -> None:
    """Delete an endpoint and (by cascade) its deliveries."""
    cur = await conn.execute(
        "delete from public.webhook_endpoints where id = %s returning id", (endpoint_id,)
    )
    if await cur.fetchone() is None:
        raise NotFound(f"webhook endpoint {endpoint_id} not found")


async def send_test_event(conn: Connection, project_id: UUID, message: str) -> UUID:
    """Emit a `webhook.test` event to every enabled endpoint of the project; return its id.

    Owners may insert this event type only (RLS); the lookup first makes another user's project
    a plain :class:`NotFound`.
    """
    project = await get_project(conn, project_id)
    return await events.emit(
        conn,
        project.id,
        "webhook.test",
        {
            "project_id": str(project.id),
            "environment": project.environment.value,
            "message": message,
        },
    )
