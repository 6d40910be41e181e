"""The worker's side of `webhook_deliveries`: claim due deliveries under a lease, record attempts,
release leases. Every query the dispatcher runs is here.

A claim is committed before any HTTP call, so no row lock is held while a receiver answers; the
lease (`leased_by`, `lease_expires_at`) keeps other workers away, and once it expires the delivery
is claimable again. Recording is guarded by the lease and the attempt count, so a worker that lost
its lease (and whose delivery was claimed and recorded by another) changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from shared.db import Connection
from shared.environment import Environment

Outcome = Literal["succeeded", "pending", "exhausted", "cancelled"]

_CLAIM = """
with due as (
    -- The partial index webhook_deliveries_due_idx serves this scan; SKIP LOCKED lets several
    -- workers claim side by side without waiting on each other.
    select id
      from public.webhook_deliveries
     where status = 'pending'
       and next_attempt_at <= now()
       and (lease_expires_at is null or lease_expires_at < now())
     order by next_attempt_at
     limit %(limit)s
       for update skip locked
), claimed as (
    update public.webhook_deliveries as d
       set lease_expires_at = now() + make_interval(secs => %(lease_seconds)s),
           leased_by = %(worker_id)s
      from due
     where d.id = due.id
 returning d.id, d.event_id, d.endpoint_id, d.project_id, d.environment, d.attempts, d.retry_base
)
select c.id, c.endpoint_id, c.project_id, c.environment, c.attempts, c.retry_base,
       w.url, w.secret,
       e.id as event_id, e.type as event_type, e.payload, e.created_at as event_created_at
  from claimed as c
  join public.webhook_endpoints as w on w.id = c.endpoint_id
  join public.events as e on e.id = c.event_id
"""

# One statement records a whole batch: the lease-guarded update decides which results still count,
# and only those get their attempt row.
_RECORD = """
with result as (
    -- Binary parameters: arrays of hundreds of values dump several times faster that way.
    select *
      from unnest(%(ids)b::uuid[], %(attempt_numbers)b::int[], %(statuses)b::text[],
                  %(delays)b::float8[], %(status_codes)b::int[], %(errors)b::text[],
                  %(started_ats)b::timestamptz[], %(durations)b::int[], %(bodies)b::text[])
           as r(id, attempt_number, status, delay, status_code, error, started_at, duration_ms,
                response_body)
), updated as (
    update public.webhook_deliveries as d
       set attempts = r.attempt_number,
           status = r.status::public.delivery_status,
           next_attempt_at = case when r.status = 'pending'
                                  then now() + make_interval(secs => r.delay)
                                  else d.next_attempt_at end,
           last_status_code = r.status_code,
           last_error = r.error,
           completed_at = case when r.status = 'pending' then null else now() end,
           lease_expires_at = null,
           leased_by = null
      from result as r
     where d.id = r.id
       and d.status = 'pending'
       and d.leased_by = %(worker_id)s
       and d.attempts = r.attempt_number - 1
 returning d.id
)
insert into public.webhook_attempts
       (delivery_id, attempt_number, started_at, duration_ms, status_code, response_body, error)
select r.id, r.attempt_number, r.started_at, r.duration_ms, r.status_code, r.response_body, r.error
  from result as r
  join updated as u on u.id = r.id
returning delivery_id
"""

_DISABLE_ENDPOINT = """
update public.webhook_endpoints
   set enabled = false, disabled_by = 'receiver', disabled_reason = %(reason)s
 where id = %(endpoint_id)s and enabled
"""


_RELEASE = """
update public.webhook_deliveries
   set lease_expires_at = null, leased_by = null
 where id = any(%(ids)s) and leased_by = %(worker_id)s and status = 'pending'
"""

_COUNT_DUE = """
select count(*) as due
  from public.webhook_deliveries
 where status = 'pending'
   and next_attempt_at <= now()
   and (lease_expires_at is null or lease_expires_at < now())
"""


@dataclass(frozen=True, slots=True)
class ClaimedDelivery:
    """A delivery this worker holds, with what it takes to send it."""

    id: UUID
    """The `webhook-id`: the same on every attempt."""
    endpoint_id: UUID
    project_id: UUID
    environment: Environment
    attempts: int
    retry_base: int
    url: str
    secret: str
    event_id: UUID
    event_type: str
    payload: dict[str, Any]
    event_created_at: datetime

    def __repr__(self) -> str:
        # The signing secret never reaches a log line.
        return f"ClaimedDelivery(id={self.id}, url={self.url!r}, attempts={self.attempts})"

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> ClaimedDelivery:
        return cls(**{**row, "environment": Environment(row["environment"])})


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """One finished HTTP attempt and what it means for the delivery."""

    delivery_id: UUID
    endpoint_id: UUID
    attempt_number: int
    outcome: Outcome
    delay_seconds: float
    started_at: datetime
    duration_ms: int
    status_code: int | None
    response_body: str | None
    error: str | None
    disables_endpoint: bool = False
    """The receiver answered 410 Gone: disable the endpoint and cancel its pending deliveries."""


async def claim(
    conn: Connection, *, worker_id: str, limit: int, lease_seconds: float
) -> list[ClaimedDelivery]:
    """Lease up to `limit` due deliveries to `worker_id`. Commit before sending them."""
    cur = await conn.execute(
        _CLAIM, {"worker_id": worker_id, "limit": limit, "lease_seconds": lease_seconds}
    )
    return [ClaimedDelivery.from_row(row) for row in await cur.fetchall()]


async def record(
    conn: Connection, results: Sequence[AttemptResult], *, worker_id: str
) -> set[UUID]:
    """Record `results` (attempt rows, delivery status, next attempt time) where `worker_id` still
    holds the lease; disable endpoints that answered 410. Returns the deliveries recorded."""
    if not results:
        return set()
    cur = await conn.execute(
        _RECORD,
        {
            "worker_id": worker_id,
            "ids": [r.delivery_id for r in results],
            "attempt_numbers": [r.attempt_number for r in results],
            "statuses": [r.outcome for r in results],
            "delays": [float(r.delay_seconds) for r in results],
            "status_codes": [r.status_code for r in results],
            "errors": [r.error for r in results],
            "started_ats": [r.started_at for r in results],
            "durations": [r.duration_ms for r in results],
            "bodies": [r.response_body for r in results],
        },
    )
    recorded: set[UUID] = {row["delivery_id"] for row in await cur.fetchall()}
    for result in results:
        if result.disables_endpoint and result.delivery_id in recorded:
            reason = f"the receiver answered {result.status_code} Gone"
            await disable_endpoint(conn, result.endpoint_id, reason=reason)
    return recorded


async def disable_endpoint(conn: Connection, endpoint_id: UUID, *, reason: str) -> None:
    """Disable the endpoint; the database cancels every delivery still pending for it (trigger
    webhook_endpoints_cancel_deliveries_when_disabled)."""
    await conn.execute(_DISABLE_ENDPOINT, {"endpoint_id": endpoint_id, "reason": reason})


async def release(conn: Connection, ids: Sequence[UUID], *, worker_id: str) -> None:
    """Give leases back unattempted, so another worker can claim them at once."""
    if ids:
        await conn.execute(_RELEASE, {"ids": list(ids), "worker_id": worker_id})


async def count_due(conn: Connection) -> int:
    """Deliveries due now and not leased: what a drain still has to do."""
    cur = await conn.execute(_COUNT_DUE)
    row = await cur.fetchone()
    assert row is not None
    due: int = row["due"]
    return due
