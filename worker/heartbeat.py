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


async def take_name(
    conn: Connection,
    *,
    worker_id: str,
    hostname: str,
    pid: int,
    started_at: datetime,
    max_age_seconds: float,
) -> Heartbeat | None:
    """Claim `worker_id` for this process: its heartbeat row is written unless another process
    (another host, or another pid on this one) beat under that name within `max_age_seconds`.
    Returns that live holder's heartbeat, or None when the name is ours. A worker releases the
    leases its name holds that it does not know of, so two live workers must never share one."""
    cur = await conn.execute(
        "insert into public.worker_heartbeats (worker_id, hostname, pid, started_at)"
        " values (%(worker_id)s, %(hostname)s, %(pid)s, %(started_at)s)"
        " on conflict (worker_id) do update set hostname = excluded.hostname,"
        " pid = excluded.pid, started_at = excluded.started_at, beat_at = now(), tasks = '{}'"
        " where (worker_heartbeats.hostname, worker_heartbeats.pid)"
        "       = (excluded.hostname, excluded.pid)"
        "    or worker_heartbeats.beat_at <= now() - make_interval(secs => %(max_age)s)"
        " returning worker_id",
        {
            "worker_id": worker_id,
            "hostname": hostname,
            "pid": pid,
            "started_at": started_at,
            "max_age": max_age_seconds,
        },
    )
    if await cur.fetchone() is not None:
        return None
    cur = await conn.execute(
        "select worker_id, hostname, pid, started_at, beat_at, tasks"
        " from public.worker_heartbeats where worker_id = %s",
        (worker_id,),
    )
    row = await cur.fetchone()
    if row is None:  # its holder stopped meanwhile: the name is free
        return await take_name(
            conn,
            worker_id=worker_id,
            hostname=hostname,
            pid=pid,
            started_at=started_at,
            max_age_seconds=max_age_seconds,
        )
    return Heartbeat.from_row(row)


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
