"""Suspensions: the platform's record of why a project stopped serving, and lifting it.

Suspending is the worker's job (auto-suspend sweep); lifting is an operator's. Both change the
project's status, the suspension row and the events outbox in one transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from shared import events
from shared.db import Connection
from shared.errors import InvalidInput

_COLUMNS = (
    "id, project_id, reason, requests, request_cap, window_start, suspended_at,"
    " lifted_at, lifted_by, lift_reason"
)


@dataclass(frozen=True, slots=True)
class Suspension:
    id: UUID
    project_id: UUID
    reason: str
    requests: int | None
    request_cap: int | None
    window_start: datetime | None
    suspended_at: datetime
    lifted_at: datetime | None
    lifted_by: str | None
    lift_reason: str | None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Suspension:
        return cls(**row)

    @property
    def is_open(self) -> bool:
        return self.lifted_at is None


async def current_suspension(conn: Connection, project_id: UUID) -> Suspension | None:
    """The project's open suspension, if it is suspended."""
    cur = await conn.execute(
        f"select {_COLUMNS} from public.suspensions where project_id = %s and lifted_at is null",
        (project_id,),
    )
    row = await cur.fetchone()
    return None if row is None else Suspension.from_row(row)


async def list_suspensions(conn: Connection, project_id: UUID) -> list[Suspension]:
    """Every suspension of the project, newest first."""
    cur = await conn.execute(
        f"select {_COLUMNS} from public.suspensions where project_id = %s"
        " order by suspended_at desc, id",
        (project_id,),
    )
    return [Suspension.from_row(row) for row in await cur.fetchall()]


async def lift(
    conn: Connection, project_id: UUID, *, lifted_by: str, reason: str = ""
) -> Suspension:
    """Lift the project's open suspension: the project serves again and a `project.unsuspended`
    event is written. Run as the service (operators), inside one transaction."""
    cur = await conn.execute(
        "update public.suspensions set lifted_at = now(), lifted_by = %s, lift_reason = %s"
        f" where project_id = %s and lifted_at is null returning {_COLUMNS}",
        (lifted_by, reason or None, project_id),
    )
    row = await cur.fetchone()
    if row is None:
        raise InvalidInput(f"project {project_id} is not suspended")
    lifted = Suspension.from_row(row)
    await conn.execute("update public.projects set status = 'active' where id = %s", (project_id,))
    await events.emit(
        conn,
        project_id,
        "project.unsuspended",
        {
            "project_id": str(project_id),
            "suspension_id": str(lifted.id),
            "lifted_by": lifted_by,
            "reason": reason,
        },
    )
    return lifted


@dataclass(frozen=True, slots=True)
class Violation:
    """A project past its hard cap in one cap window, as the auto-suspend sweep found it."""

    project_id: UUID
    window_start: datetime
    requests: int
    request_cap: int


async def suspend_many(
    conn: Connection, violations: Sequence[Violation], *, reason: str
) -> list[Suspension]:
    """Suspend the projects of `violations`: a suspension row, the project's status and a
    `project.suspended` event each, inside the caller's transaction. A project that already has an
    open suspension is left as it is (the unique index `suspensions_one_open_per_project` decides,
    so concurrent sweepers cannot suspend twice). Returns the suspensions created."""
    # One per project, its earliest window (later assignments win, so go latest first).
    by_latest = sorted(violations, key=lambda v: v.window_start, reverse=True)
    first = {v.project_id: v for v in by_latest}
    if not first:
        return []
    # In project order: concurrent sweepers then take the unique index's locks in the same order
    # and cannot deadlock on them.
    chosen = sorted(first.values(), key=lambda v: v.project_id)
    cur = await conn.execute(
        "insert into public.suspensions (project_id, reason, requests, request_cap, window_start)"
        " select project_id, %s, requests, request_cap, window_start"
        " from unnest(%s::uuid[], %s::bigint[], %s::bigint[], %s::timestamptz[])"
        " as v(project_id, requests, request_cap, window_start)"
        " on conflict (project_id) where lifted_at is null do nothing"
        f" returning {_COLUMNS}",
        (
            reason,
            [v.project_id for v in chosen],
            [v.requests for v in chosen],
            [v.request_cap for v in chosen],
            [v.window_start for v in chosen],
        ),
    )
    created = [Suspension.from_row(row) for row in await cur.fetchall()]
    if not created:
        return []
    await conn.execute(
        "update public.projects set status = 'suspended' where id = any(%s)",
        ([s.project_id for s in created],),
    )
    await events.emit_many(
        conn,
        [
            (
                s.project_id,
                "project.suspended",
                {
                    "project_id": str(s.project_id),
                    "suspension_id": str(s.id),
                    "reason": s.reason,
                    "requests": s.requests,
                    "request_cap": s.request_cap,
                    "window_start": s.window_start.isoformat() if s.window_start else None,
                },
            )
            for s in created
        ],
    )
    return created
