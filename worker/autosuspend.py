"""The auto-suspend sweep: projects past their hard cap, from the gateway's usage counters.

Where the environment config has `auto_suspend_enabled` (prod) the project is suspended; elsewhere
(dev, staging) it gets one `project.cap_exceeded` warning per cap window. Each batch is one
transaction: the violators' counter rows are locked (SKIP LOCKED, so concurrent sweepers split the
work), acted on, and marked handled, so a window is acted on once whatever the number of sweepers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shared import events, suspensions
from shared.db import Connection
from shared.environment import Environment, get_environment_config
from shared.suspensions import Violation

SUSPEND_REASON = "request cap exceeded"

# Served by the partial index usage_counters_unhandled_violators_idx (requests >= request_cap and
# handled_at is null): the scan touches violators only, however many projects there are.
VIOLATORS_QUERY = """
select u.project_id, u.window_start, u.requests, u.request_cap, p.environment
  from public.usage_counters as u
  join public.projects as p on p.id = u.project_id
 where u.requests >= u.request_cap
   and u.handled_at is null
 order by u.window_start
 limit %(limit)s
   for update of u skip locked
"""

_MARK_HANDLED = """
update public.usage_counters as u
   set handled_at = now()
  from unnest(%(project_ids)s::uuid[], %(window_starts)s::timestamptz[])
       as h(project_id, window_start)
 where u.project_id = h.project_id and u.window_start = h.window_start
"""


@dataclass(frozen=True, slots=True)
class SweepResult:
    """What one batch did."""

    violators: int
    suspended: int
    warned: int


@dataclass(frozen=True, slots=True)
class _Found:
    violation: Violation
    environment: Environment

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> _Found:
        env = Environment(row.pop("environment"))
        return cls(violation=Violation(**row), environment=env)


async def sweep_batch(conn: Connection, *, limit: int) -> SweepResult:
    """Act on up to `limit` unhandled violators inside the caller's transaction."""
    cur = await conn.execute(VIOLATORS_QUERY, {"limit": limit})
    found = [_Found.from_row(row) for row in await cur.fetchall()]
    if not found:
        return SweepResult(0, 0, 0)
    to_suspend = [
        f.violation for f in found if get_environment_config(f.environment).auto_suspend_enabled
    ]
    to_warn = [f for f in found if not get_environment_config(f.environment).auto_suspend_enabled]
    created = await suspensions.suspend_many(conn, to_suspend, reason=SUSPEND_REASON)
    await events.emit_many(
        conn,
        [
            (
                f.violation.project_id,
                "project.cap_exceeded",
                {
                    "project_id": str(f.violation.project_id),
                    "environment": f.environment.value,
                    "requests": f.violation.requests,
                    "request_cap": f.violation.request_cap,
                    "window_start": f.violation.window_start.isoformat(),
                    "suspended": False,
                },
            )
            for f in to_warn
        ],
    )
    await conn.execute(
        _MARK_HANDLED,
        {
            "project_ids": [f.violation.project_id for f in found],
            "window_starts": [f.violation.window_start for f in found],
        },
    )
    return SweepResult(violators=len(found), suspended=len(created), warned=len(to_warn))
