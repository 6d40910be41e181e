"""`parity status`: one screen for an operator (`--json` for scripts): workers alive, the webhook
queue by environment and state, the oldest due delivery, deliveries exhausted in the last day,
projects at 80% or more of their hard cap (prod first) and the latest suspensions."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from psycopg_pool import PoolTimeout

from shared import status
from shared.db import Database
from shared.environment import Environment
from shared.errors import ParityError
from shared.settings import PlatformSettings

NEAR_CAP = 0.8


def register(commands: Any) -> None:
    """Add `status` to `parity`'s subparsers."""
    parser = commands.add_parser("status", help="workers, webhook queue, projects near their cap")
    parser.add_argument("--json", action="store_true", help="one JSON document, for scripts")
    parser.add_argument(
        "--heartbeat-max-age",
        type=float,
        default=30.0,
        help="a worker is alive when its heartbeat is younger than this (seconds, 30)",
    )


async def collect(db: Database, *, heartbeat_max_age: float, window_seconds: int) -> dict[str, Any]:
    """Everything `parity status` shows, as JSON-ready data."""
    async with db.as_service() as conn:
        await conn.execute("set local statement_timeout = '10s'")
        workers = await status.workers(conn, max_age_seconds=heartbeat_max_age)
        queue = await status.queue(conn)
        exhausted = await status.exhausted_since(conn, hours=24)
        near = await status.near_cap(conn, window_seconds=window_seconds, threshold=NEAR_CAP)
        suspensions = await status.recent_suspensions(conn)
    return {
        "workers": [
            {
                "worker_id": w.worker_id,
                "hostname": w.hostname,
                "pid": w.pid,
                "beat_at": w.beat_at.isoformat(),
                "age_seconds": round(w.age_seconds, 1),
                "alive": w.alive,
            }
            for w in workers
        ],
        "workers_alive": sum(1 for w in workers if w.alive),
        **queue.as_dict(),
        "exhausted_last_24h": exhausted,
        "near_cap": [
            {
                "project_id": str(p.project_id),
                "name": p.name,
                "environment": p.environment.value,
                "status": p.status,
                "requests": p.requests,
                "request_cap": p.request_cap,
                "ratio": round(p.ratio, 3),
            }
            for p in near
        ],
        "recent_suspensions": [
            {
                "project_id": str(s.project_id),
                "name": s.name,
                "environment": s.environment.value,
                "reason": s.reason,
                "suspended_at": s.suspended_at.isoformat(),
                "lifted_at": s.lifted_at.isoformat() if s.lifted_at else None,
            }
            for s in suspensions
        ],
    }


def render(report: dict[str, Any], *, heartbeat_max_age: float) -> str:
    """The report as text for a terminal."""
    workers = report["workers"]
    lines = [
        f"Workers: {report['workers_alive']} alive of {len(workers)} with a heartbeat"
        f" (alive: younger than {heartbeat_max_age:g} s)"
    ]
    for w in workers:
        state = "alive" if w["alive"] else "STALE"
        lines.append(
            f"  {w['worker_id']}  pid {w['pid']} on {w['hostname']}"
            f"  last beat {w['age_seconds']:g} s ago  {state}"
        )
    lines += ["", "Webhook queue (pending deliveries):"]
    lines.append(f"  {'environment':<12}" + "".join(f"{s:>11}" for s in status.QUEUE_STATES))
    for env in Environment:
        counts = report["deliveries"][env.value]
        lines.append(
            f"  {env.value:<12}" + "".join(f"{counts[s]:>11}" for s in status.QUEUE_STATES)
        )
    oldest = report["oldest_due_seconds"]
    lines.append(
        f"  oldest due delivery: waiting {oldest:g} s" if oldest else "  no delivery is due"
    )
    exhausted = report["exhausted_last_24h"]
    lines += [
        "",
        "Exhausted in the last 24 h: "
        + ", ".join(f"{env.value} {exhausted[env.value]}" for env in Environment),
        "",
        f"Projects at {NEAR_CAP:.0%} or more of their hard cap (prod first):",
    ]
    for p in report["near_cap"] or []:
        lines.append(
            f"  {p['project_id']}  {p['name']} [{p['environment']}] {p['status']}"
            f"  {p['requests']}/{p['request_cap']} ({p['ratio']:.0%})"
        )
    if not report["near_cap"]:
        lines.append("  none")
    lines += ["", "Recent suspensions:"]
    for s in report["recent_suspensions"]:
        lifted = f"lifted {s['lifted_at']}" if s["lifted_at"] else "in force"
        lines.append(
            f"  {s['suspended_at']}  {s['project_id']}  {s['name']} [{s['environment']}]"
            f"  {s['reason']}  {lifted}"
        )
    if not report["recent_suspensions"]:
        lines.append("  none")
    return "\n".join(lines)


async def _main(args: argparse.Namespace, settings: PlatformSettings) -> dict[str, Any]:
    async with Database(settings.database_url, min_size=1, max_size=1, name="parity-status") as db:
        return await collect(
            db,
            heartbeat_max_age=args.heartbeat_max_age,
            window_seconds=settings.cap_window_seconds,
        )


def run(args: argparse.Namespace) -> int:
    """Print the status report; 2 without a database, 1 when it cannot be read."""
    settings = PlatformSettings()
    if not settings.database_url:
        print("error: DATABASE_URL is not set (and no `make run` is up)", file=sys.stderr)
        return 2
    try:
        report = asyncio.run(_main(args, settings))
    except (ParityError, PoolTimeout) as exc:
        print(f"error: the database cannot be read: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(render(report, heartbeat_max_age=args.heartbeat_max_age))
    return 0
