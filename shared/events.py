"""The events outbox. Write an event in the same transaction as the change that caused it; the
database fans it out to one webhook delivery per subscribed endpoint (trigger events_fan_out) and
wakes the worker with a notification on channel `webhook_deliveries`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from uuid import UUID

from psycopg.types.json import Jsonb

from shared.db import Connection

DELIVERIES_CHANNEL = "webhook_deliveries"


async def emit(
    conn: Connection, project_id: UUID, event_type: str, payload: Mapping[str, Any]
) -> UUID:
    """Record `event_type` for `project_id` inside the caller's transaction; return its id."""
    cur = await conn.execute(
        "insert into public.events (project_id, type, payload) values (%s, %s, %s) returning id",
        (project_id, event_type, Jsonb(dict(payload))),
    )
    row = await cur.fetchone()
    assert row is not None
    event_id: UUID = row["id"]
    return event_id


async def emit_many(
    conn: Connection, events: Sequence[tuple[UUID, str, Mapping[str, Any]]]
) -> None:
    """Record several `(project_id, event_type, payload)` events in the caller's transaction, in
    one statement (a sweep may raise a thousand at once)."""
    if events:
        await conn.execute(
            "insert into public.events (project_id, type, payload)"
            " select * from unnest(%s::uuid[], %s::text[], %s::jsonb[])",
            (
                [project_id for project_id, _, _ in events],
                [type_ for _, type_, _ in events],
                [Jsonb(dict(payload)) for _, _, payload in events],
            ),
        )
