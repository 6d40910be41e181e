"""The auto-suspend sweep: projects past their hard cap, from the gateway's usage counters.

Where the environment config has `auto_suspend_enabled` (prod) the project is suspended; elsewhere
(dev, staging) it gets one `project.cap_exceeded` warning per cap window. Each batch is one
transaction: the violators' counter rows are locked (SKIP LOCKED, so concurrent sweepers split the
work), marked handled and acted on, so a window is acted on once whatever the number of sweepers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shared import events, suspensions
from shared.db import Connection
from shared.environment import Environment, get_environment_config
from shared.suspensions import Violation

SUSPEND_REASON = "request cap exceeded"

# Claims a batch of violators (projects over their cap: more requests than the cap allows) and
# marks them handled in one statement. The scan is served by the partial index
# usage_counters_unhandled_violators_idx (requests >= request_cap and handled_at is null, which
# `requests > request_cap` implies), so it touches those at or over their cap only. SKIP LOCKED
# lets concurrent sweepers split the work; the mark commits with the suspensions and events, or
# not at all.
VIOLATORS_QUERY = """
with violators as (
    select project_id, window_start
      from public.usage_counters
     where requests > request_cap
       and handled_at is null
     order by window_start
     limit %(limit)s
       for update skip locked
), handled as (
    update public.usage_counters as u
       set handled_at = now()
      from violators as v
     where u.project_id = v.project_id and u.window_start = v.window_start
 returning u.project_id, u.window_start, u.requests, u.request_cap
)
select h.project_id, h.window_start, h.requests, h.request_cap, p.environment
  from handled as h
  join public.projects as p on p.id = h.project_id
"""


@dataclass(frozen=True, slots=True)
class SweepResult:
    """What a sweep (or one batch of it) did."""

    violators: int
    suspended: int
    warned: int

    def __add__(self, other: SweepResult) -> SweepResult:
        return SweepResult(
            self.violators + other.violators,
            self.suspended + other.suspended,
            self.warned + other.warned,
        )


@dataclass(frozen=True, slots=True)
class SweepBatch:
    """One batch: what it did, and the environment of each project acted on, for the metrics,
    which count it only once the batch's transaction has committed."""

    result: SweepResult
    suspended: tuple[Environment, ...] = ()
    warned: tuple[Environment, ...] = ()


@dataclass(frozen=True, slots=True)
class _Found:
    violation: Violation
    environment: Environment

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> _Found:
        env = Environment(row.pop("environment"))
        return cls(violation=Violation(**row), environment=env)


async def sweep_batch(conn: Connection, *, limit: int) -> SweepBatch:
    """Act on up to `limit` unhandled violators inside the caller's transaction (which counts
    the batch in the metrics once it has committed)."""
    cur = await conn.execute(VIOLATORS_QUERY, {"limit": limit})
    found = [_Found.from_row(row) for row in await cur.fetchall()]
    if not found:
        return SweepBatch(SweepResult(0, 0, 0))
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
    environments = {f.violation.project_id: f.environment for f in found}
    return SweepBatch(
        SweepResult(violators=len(found), suspended=len(created), warned=len(to_warn)),
        suspended=tuple(environments[s.project_id] for s in created),
        warned=tuple(f.environment for f in to_warn),
    )
