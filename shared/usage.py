"""Usage counters: requests per project and cap window, written in batches by the gateway and read
by the worker's auto-suspend sweep.

The contract the sweep relies on: `window_start` is the epoch-aligned start of the cap window
(`to_timestamp(floor(epoch / w) * w)`), a flush adds to `requests`, and every flush (insert or
update) copies the project's effective hard cap into `request_cap` and sets `updated_at`.
"""

from __future__ import annotations

from collections.abc import Mapping
from uuid import UUID

from shared.db import Connection
from shared.errors import InvalidInput


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
