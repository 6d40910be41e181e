"""Read-only queries for operators: the webhook queue, workers' heartbeats, projects near their
cap and recent suspensions. `parity status` shows them; the worker's metrics read the queue.

The queue figures read only pending deliveries (the partial index `webhook_deliveries_due_idx`),
the exhausted count only the last day's exhausted deliveries (`webhook_deliveries_exhausted_idx`),
and lists are limited.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal
from uuid import UUID

from shared.db import Connection
from shared.environment import Environment

QueueState = Literal["due", "in_flight", "scheduled"]
QUEUE_STATES: Final[tuple[QueueState, ...]] = ("due", "in_flight", "scheduled")
"""Pending deliveries: due now and waiting, leased to a worker, or waiting for a later retry."""

_QUEUE = """
select environment::text as environment,
       case when lease_expires_at > now() then 'in_flight'
            when next_attempt_at <= now() then 'due'
            else 'scheduled' end as state,
       count(*) as deliveries,
       extract(epoch from now() - min(next_attempt_at) filter (where next_attempt_at <= now()))
           as oldest_due_seconds
  from public.webhook_deliveries
 where status = 'pending'
 group by 1, 2
"""


@dataclass(frozen=True, slots=True)
class Queue:
    """Pending deliveries by environment and state, and how long the oldest due one has waited."""

    counts: dict[tuple[Environment, QueueState], int]
    oldest_due_seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "deliveries": {
                env.value: {state: self.counts.get((env, state), 0) for state in QUEUE_STATES}
                for env in Environment
            },
            "oldest_due_seconds": round(self.oldest_due_seconds, 3),
        }


async def queue(conn: Connection) -> Queue:
    """The webhook queue now (pending deliveries only: cheap however long the history is)."""
    cur = await conn.execute(_QUEUE)
    counts: dict[tuple[Environment, QueueState], int] = {}
    oldest = 0.0
    for row in await cur.fetchall():
        counts[(Environment(row["environment"]), row["state"])] = int(row["deliveries"])
        if row["oldest_due_seconds"] is not None:
            oldest = max(oldest, float(row["oldest_due_seconds"]))
    return Queue(counts, oldest)


# An index-only scan of the partial index webhook_deliveries_exhausted_idx (exhausted deliveries
# by completion time, with their environment): it reads the last day's exhausted deliveries only.
EXHAUSTED_SINCE = """
select environment::text as environment, count(*) as n
  from public.webhook_deliveries
 where status = 'exhausted' and completed_at > now() - make_interval(secs => %s)
 group by 1
"""


async def exhausted_since(conn: Connection, *, hours: float = 24.0) -> dict[str, int]:
    """Deliveries that ran out of retries in the last `hours`, by environment."""
    cur = await conn.execute(EXHAUSTED_SINCE, (hours * 3600,))
    found = {row["environment"]: int(row["n"]) for row in await cur.fetchall()}
    return {env.value: found.get(env.value, 0) for env in Environment}


@dataclass(frozen=True, slots=True)
class WorkerBeat:
    worker_id: str
    hostname: str
    pid: int
    beat_at: datetime
    age_seconds: float
    alive: bool


async def workers(conn: Connection, *, max_age_seconds: float) -> list[WorkerBeat]:
    """Every worker's last heartbeat, alive when younger than `max_age_seconds`."""
    cur = await conn.execute(
        "select worker_id, hostname, pid, beat_at,"
        "       extract(epoch from now() - beat_at)::float8 as age_seconds"
        "  from public.worker_heartbeats order by beat_at desc limit 100"
    )
    return [
        WorkerBeat(**row, alive=row["age_seconds"] <= max_age_seconds)
        for row in await cur.fetchall()
    ]


@dataclass(frozen=True, slots=True)
class NearCap:
    project_id: UUID
    name: str
    environment: Environment
    status: str
    requests: int
    request_cap: int

    @property
    def ratio(self) -> float:
        return self.requests / self.request_cap


async def near_cap(
    conn: Connection, *, window_seconds: int, threshold: float = 0.8, limit: int = 20
) -> list[NearCap]:
    """Projects whose current cap window has reached `threshold` of their hard cap: prod first,
    then the closest to (or furthest past) the cap."""
    cur = await conn.execute(
        "select u.project_id, p.name, p.environment::text as environment, p.status::text as status,"
        "       u.requests, u.request_cap"
        "  from public.usage_counters as u"
        "  join public.projects as p on p.id = u.project_id"
        " where u.window_start > now() - make_interval(secs => %(window)s)"
        "   and u.requests >= u.request_cap * %(threshold)s"
        " order by p.environment <> 'prod', u.requests::float8 / u.request_cap desc"
        " limit %(limit)s",
        {"window": window_seconds, "threshold": threshold, "limit": limit},
    )
    return [
        NearCap(**{**row, "environment": Environment(row["environment"])})
        for row in await cur.fetchall()
    ]


@dataclass(frozen=True, slots=True)
class RecentSuspension:
    project_id: UUID
    name: str
    environment: Environment
    reason: str
    suspended_at: datetime
    lifted_at: datetime | None


async def recent_suspensions(conn: Connection, *, limit: int = 10) -> list[RecentSuspension]:
    """The latest suspensions, lifted or not."""
    cur = await conn.execute(
        "select s.project_id, p.name, p.environment::text as environment, s.reason,"
        "       s.suspended_at, s.lifted_at"
        "  from public.suspensions as s"
        "  join public.projects as p on p.id = s.project_id"
        " order by s.suspended_at desc limit %s",
        (limit,),
    )
    return [
        RecentSuspension(**{**row, "environment": Environment(row["environment"])})
        for row in await cur.fetchall()
    ]
