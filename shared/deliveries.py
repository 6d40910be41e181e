"""Webhook deliveries as owners and operators see them: listing, attempts, and redelivery.

The worker's claim/attempt/retry queries live with the worker; these are the read side and the one
write people make (redeliver), usable as a signed-in user (RLS) or as the service.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from shared.db import Connection
from shared.environment import Environment
from shared.errors import Conflict, NotFound

DeliveryStatus = Literal["pending", "succeeded", "exhausted", "cancelled"]

_COLUMNS = (
    "d.id, d.event_id, d.endpoint_id, d.project_id, d.environment, d.status, d.attempts,"
    " d.retry_base, d.next_attempt_at, d.last_status_code, d.last_error, d.created_at,"
    " d.completed_at, e.type as event_type"
)


@dataclass(frozen=True, slots=True)
class Delivery:
    id: UUID
    """Also the `webhook-id` the receiver sees on every attempt."""
    event_id: UUID
    endpoint_id: UUID
    project_id: UUID
    environment: Environment
    status: DeliveryStatus
    attempts: int
    retry_base: int
    next_attempt_at: datetime
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    completed_at: datetime | None
    event_type: str

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Delivery:
        return cls(**{**row, "environment": Environment(row["environment"])})


@dataclass(frozen=True, slots=True)
class Attempt:
    attempt_number: int
    started_at: datetime
    duration_ms: int
    status_code: int | None
    response_body: str | None
    error: str | None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Attempt:
        return cls(**row)


async def list_deliveries(conn: Connection, project_id: UUID, *, limit: int = 50) -> list[Delivery]:
    """The project's most recent deliveries, newest first."""
    cur = await conn.execute(
        f"select {_COLUMNS} from public.webhook_deliveries d"
        " join public.events e on e.id = d.event_id"
        " where d.project_id = %s order by d.created_at desc, d.id limit %s",
        (project_id, limit),
    )
    return [Delivery.from_row(row) for row in await cur.fetchall()]


async def get_delivery(conn: Connection, delivery_id: UUID) -> Delivery:
    cur = await conn.execute(
        f"select {_COLUMNS} from public.webhook_deliveries d"
        " join public.events e on e.id = d.event_id where d.id = %s",
        (delivery_id,),
    )
    row = await cur.fetchone()
    if row is None:
        raise NotFound(f"delivery {delivery_id} not found")
    return Delivery.from_row(row)


async def list_attempts(conn: Connection, delivery_id: UUID) -> list[Attempt]:
    """Every attempt of the delivery, first first."""
    cur = await conn.execute(
        "select attempt_number, started_at, duration_ms, status_code, response_body, error"
        " from public.webhook_attempts where delivery_id = %s order by attempt_number",
        (delivery_id,),
    )
    return [Attempt.from_row(row) for row in await cur.fetchall()]


async def redeliver(conn: Connection, delivery_id: UUID) -> Delivery:
    """Make a finished delivery due again now. Its id (the webhook-id) and its attempt count are
    kept, so the receiver can deduplicate and the log stays whole; `retry_base` records the attempts
    made so far, and the retry policy counts only the attempts after it."""
    cur = await conn.execute(
        "update public.webhook_deliveries"
        " set status = 'pending', next_attempt_at = now(), completed_at = null,"
        " retry_base = attempts"
        " where id = %s and status <> 'pending'"
        # A disabled endpoint gets nothing: disabling it cancelled its deliveries, and they stay so.
        " and endpoint_id in (select id from public.webhook_endpoints where enabled)"
        " returning id",
        (delivery_id,),
    )
    if await cur.fetchone() is None:
        current = await get_delivery(conn, delivery_id)  # NotFound when it does not exist
        if current.status == "pending":
            raise Conflict(f"delivery {current.id} is already pending")
        raise Conflict(
            f"the endpoint of delivery {current.id} is disabled: enable it, then redeliver"
        )
    return await get_delivery(conn, delivery_id)


async def count_for_event(conn: Connection, event_id: UUID) -> int:
    """How many deliveries an event fanned out to (one per enabled, subscribed endpoint)."""
    cur = await conn.execute(
        "select count(*) as n from public.webhook_deliveries where event_id = %s", (event_id,)
    )
    row = await cur.fetchone()
    assert row is not None
    count: int = row["n"]
    return count


async def attempts_by_delivery(
    conn: Connection, delivery_ids: list[UUID]
) -> dict[UUID, list[Attempt]]:
    """The attempts of several deliveries in one query, each list first attempt first."""
    found: dict[UUID, list[Attempt]] = {delivery_id: [] for delivery_id in delivery_ids}
    if not delivery_ids:
        return found
    cur = await conn.execute(
        "select delivery_id, attempt_number, started_at, duration_ms, status_code, response_body,"
        " error from public.webhook_attempts where delivery_id = any(%s)"
        " order by delivery_id, attempt_number",
        (delivery_ids,),
    )
    for row in await cur.fetchall():
        delivery_id = row.pop("delivery_id")
        found[delivery_id].append(Attempt.from_row(row))
    return found
