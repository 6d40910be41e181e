"""Usage counters: requests per project and cap window, written in batches by the gateway and read
by the worker's auto-suspend sweep.

The contract the sweep relies on: `window_start` is the epoch-aligned start of the cap window
(`to_timestamp(floor(epoch / w) * w)`), a flush adds to `requests`, and every flush (insert or
update) copies the project's effective hard cap into `request_cap` and sets `updated_at`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID

from shared.db import Connection
from shared.environment import get_environment_config
from shared.errors import InvalidInput
from shared.projects import Project
from shared.settings import PlatformSettings


async def flush_usage(
    conn: Connection, counts: Mapping[UUID, int], *, window_seconds: int, default_cap: int
) -> None:
    """Add `counts` (requests per project) to the current cap window, in one statement.

    Projects deleted since they were counted are skipped (the join drops them)."""
    if window_seconds < 1 or default_cap < 1:
        raise InvalidInput("window_seconds and default_cap must be at least 1")
    if any(count < 0 for count in counts.values()):
        raise InvalidInput("request counts must not be negative")
    if not counts:
        return
    await conn.execute(
        "insert into public.usage_counters as u"
        " (project_id, window_start, requests, request_cap, updated_at)"
        " select c.project_id,"
        "  to_timestamp(floor(extract(epoch from now()) / %(window)s) * %(window)s),"
        "  c.requests, coalesce(p.request_cap, %(default_cap)s), now()"
        " from unnest(%(ids)s::uuid[], %(counts)s::bigint[]) as c(project_id, requests)"
        " join public.projects as p on p.id = c.project_id"
        # Sorted ids give concurrent flushes from several gateways the same lock order.
        " order by c.project_id"
        " on conflict (project_id, window_start) do update"
        " set requests = u.requests + excluded.requests,"
        "  request_cap = excluded.request_cap,"
        "  updated_at = now()",
        {
            "window": window_seconds,
            "default_cap": default_cap,
            "ids": list(counts),
            "counts": list(counts.values()),
        },
    )


@dataclass(frozen=True, slots=True)
class WindowUsage:
    """A project's requests in the current cap window, beside its limits."""

    window_start: datetime
    window_seconds: int
    now: datetime
    requests: int
    hard_cap: int
    """The effective hard cap: the project's own, else the platform default."""
    rate_limit: int
    """The effective rate limit: requests per rate window, the environment multiplier applied."""
    rate_window_seconds: int

    @property
    def window_end(self) -> datetime:
        return self.window_start + timedelta(seconds=self.window_seconds)

    @property
    def cap_percent(self) -> float:
        return 100.0 * self.requests / self.hard_cap

    @property
    def cap_exceeded(self) -> bool:
        return self.requests >= self.hard_cap

    @property
    def rate_windows_elapsed(self) -> float:
        """Rate windows since the cap window started (at least one, so a young window's average
        is not inflated)."""
        elapsed = (self.now - self.window_start).total_seconds()
        return max(1.0, elapsed / self.rate_window_seconds)

    @property
    def average_rate(self) -> float:
        """Requests per rate window, averaged over the cap window so far."""
        return self.requests / self.rate_windows_elapsed

    @property
    def rate_percent(self) -> float:
        return 100.0 * self.average_rate / self.rate_limit


async def current_usage(
    conn: Connection, project: Project, platform: PlatformSettings
) -> WindowUsage:
    """The project's usage in the cap window containing now, as the connection's role sees it
    (a signed-in user reads only their own projects' counters: RLS). Windows are aligned as
    :func:`flush_usage` aligns them."""
    window_seconds = platform.cap_window_seconds
    cur = await conn.execute(
        "select w.start as window_start, w.now, coalesce(u.requests, 0) as requests"
        " from (select now() as now,"
        "  to_timestamp(floor(extract(epoch from now()) / %(window)s) * %(window)s) as start) w"
        " left join public.usage_counters u"
        "  on u.project_id = %(project)s and u.window_start = w.start",
        {"window": window_seconds, "project": project.id},
    )
    row = await cur.fetchone()
    assert row is not None
    return WindowUsage(
        window_start=row["window_start"],
        window_seconds=window_seconds,
        now=row["now"],
        requests=int(row["requests"]),
        hard_cap=project.request_cap or platform.default_request_cap,
        rate_limit=(project.rate_limit or platform.default_rate_limit)
        * get_environment_config(project.environment).rate_limit_multiplier,
        rate_window_seconds=platform.rate_limit_window_seconds,
    )
