"""Worker heartbeats (`public.worker_heartbeats`): one row per running worker, for `--check` and
for operators looking for dead workers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from shared.db import Connection


@dataclass(frozen=True, slots=True)
class Heartbeat:
    worker_id: str
    hostname: str
    pid: int
    started_at: datetime
    beat_at: datetime
    tasks: dict[str, Any]

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Heartbeat:
        return cls(**row)


async def beat(
    conn: Connection,
    *,
    worker_id: str,
    hostname: str,
    pid: int,
    started_at: datetime,
    tasks: Mapping[str, Any],
) -> None:
    """Say this worker is alive now, with the state of its tasks."""
    await conn.execute(
        "insert into public.worker_heartbeats (worker_id, hostname, pid, started_at, tasks)"
        " values (%s, %s, %s, %s, %s)"
        " on conflict (worker_id) do update set hostname = excluded.hostname,"
        " pid = excluded.pid, started_at = excluded.started_at, beat_at = now(),"
        " tasks = excluded.tasks",
        (worker_id, hostname, pid, started_at, Jsonb(dict(tasks))),
    )


async def forget(conn: Connection, worker_id: str) -> None:
    """Remove the row of a worker that stopped cleanly."""
    await conn.execute("delete from public.worker_heartbeats where worker_id = %s", (worker_id,))


async def fresh(conn: Connection, *, max_age_seconds: float) -> list[Heartbeat]:
    """Workers that beat within `max_age_seconds`, most recent first."""
    cur = await conn.execute(
        "select worker_id, hostname, pid, started_at, beat_at, tasks"
        " from public.worker_heartbeats"
        " where beat_at > now() - make_interval(secs => %s) order by beat_at desc",
        (max_age_seconds,),
    )
    return [Heartbeat.from_row(row) for row in await cur.fetchall()]


async def prune(conn: Connection, *, older_than_seconds: float) -> int:
    """Delete the rows of workers that have not beaten for `older_than_seconds` (dead workers
    stay visible to operators that long, then go)."""
    cur = await conn.execute(
        "delete from public.worker_heartbeats where beat_at < now() - make_interval(secs => %s)",
        (older_than_seconds,),
    )
    return cur.rowcount
