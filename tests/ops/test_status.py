"""`parity status` on a seeded database: workers alive and stale, the webhook queue by environment
and state, the oldest due delivery, exhaustions of the last day, projects near their cap (prod
first) and recent suspensions; `--json` for scripts."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg

from shared import status
from shared.db import Database
from tests.worker.conftest import (
    MakeProject,
    Receiver,
    add_endpoint,
    add_usage,
    emit_events,
    make_project,
    serving,
)

__all__ = ["make_project"]  # fixture used here

REPO_ROOT = Path(__file__).resolve().parents[2]


def parity(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PARITY_", "RUN_"))}
    return subprocess.run(
        [sys.executable, "-m", "ops", *args],
        cwd=REPO_ROOT,
        env={**env, "DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def _execute(db: Database, query: str, params: tuple[Any, ...] = ()) -> None:
    async with db.as_service() as conn:
        await conn.execute(query.encode(), params)


async def seed(db: Database, make_project: MakeProject) -> dict[str, UUID]:
    now = datetime.now(UTC)
    await _execute(
        db,
        "insert into public.worker_heartbeats (worker_id, hostname, pid, started_at, beat_at)"
        " values ('fresh-worker', 'host-a', 11, now(), now()),"
        " ('dead-worker', 'host-b', 22, now() - interval '2 hours', now() - interval '1 hour')",
    )
    async with serving(Receiver()) as receiver:
        prod = await make_project("prod")
        await add_endpoint(db, prod, receiver)
        staging = await make_project("staging")
        await add_endpoint(db, staging, receiver)
    late, due, leased, later, exhausted_recent, exhausted_old = await emit_events(db, prod, 6)
    staging_due = (await emit_events(db, staging, 1))[0]
    await _execute(
        db,
        "update public.webhook_deliveries set next_attempt_at = now() - interval '300 seconds'"
        " where id = %s",
        (late,),
    )
    await _execute(
        db,
        "update public.webhook_deliveries set lease_expires_at = now() + interval '1 minute',"
        " leased_by = 'fresh-worker' where id = %s",
        (leased,),
    )
    await _execute(
        db,
        "update public.webhook_deliveries set next_attempt_at = now() + interval '1 hour'"
        " where id = %s",
        (later,),
    )
    await _execute(
        db,
        "update public.webhook_deliveries set status = 'exhausted', attempts = 4,"
        " completed_at = now() - interval '1 hour' where id = %s",
        (exhausted_recent,),
    )
    await _execute(
        db,
        "update public.webhook_deliveries set status = 'exhausted', attempts = 4,"
        " completed_at = now() - interval '3 days' where id = %s",
        (exhausted_old,),
    )
    projects: dict[str, UUID] = {}
    for name, environment, requests in [
        ("dev-over", "dev", 130),
        ("prod-85", "prod", 85),
        ("staging-50", "staging", 50),
        ("prod-79", "prod", 79),
        ("prod-95", "prod", 95),
        ("dev-80", "dev", 80),
    ]:
        projects[name] = await make_project(environment)
        await add_usage(db, projects[name], requests=requests, request_cap=100, window_start=now)
    # A window that has passed counts no more.
    projects["prod-old"] = await make_project("prod")
    await add_usage(
        db,
        projects["prod-old"],
        requests=500,
        request_cap=100,
        window_start=now - timedelta(days=3),
    )
    await _execute(
        db,
        "insert into public.suspensions (project_id, reason, requests, request_cap, suspended_at,"
        " lifted_at, lifted_by) values (%s, 'hard cap exceeded', 120, 100,"
        " now() - interval '2 hours', now() - interval '1 hour', 'ops')",
        (projects["prod-old"],),
    )
    await _execute(
        db,
        "insert into public.suspensions (project_id, reason, requests, request_cap)"
        " values (%s, 'hard cap exceeded', 95, 100)",
        (projects["prod-95"],),
    )
    assert due and staging_due
    return projects


async def test_status_reports_the_seeded_state(
    database_url: str, db: Database, make_project: MakeProject
) -> None:
    projects = await seed(db, make_project)
    result = await asyncio.to_thread(parity, database_url, "status", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)

    assert report["workers_alive"] == 1
    assert {(w["worker_id"], w["alive"]) for w in report["workers"]} == {
        ("fresh-worker", True),
        ("dead-worker", False),
    }
    assert report["deliveries"] == {
        "prod": {"due": 2, "in_flight": 1, "scheduled": 1},
        "dev": {"due": 0, "in_flight": 0, "scheduled": 0},
        "staging": {"due": 1, "in_flight": 0, "scheduled": 0},
    }
    assert 300 <= report["oldest_due_seconds"] < 300 + 60
    assert report["exhausted_last_24h"] == {"prod": 1, "dev": 0, "staging": 0}
    near = [(p["project_id"], p["environment"], p["ratio"]) for p in report["near_cap"]]
    assert near == [
        (str(projects["prod-95"]), "prod", 0.95),
        (str(projects["prod-85"]), "prod", 0.85),
        (str(projects["dev-over"]), "dev", 1.3),
        (str(projects["dev-80"]), "dev", 0.8),
    ]
    suspensions = report["recent_suspensions"]
    assert [s["project_id"] for s in suspensions] == [
        str(projects["prod-95"]),
        str(projects["prod-old"]),
    ]
    assert suspensions[0]["lifted_at"] is None
    assert suspensions[1]["lifted_at"] is not None

    text = await asyncio.to_thread(parity, database_url, "status")
    assert text.returncode == 0, text.stderr
    out = text.stdout
    assert "Workers: 1 alive of 2" in out
    assert "dead-worker" in out and "STALE" in out
    assert "Exhausted in the last 24 h: prod 1, dev 0, staging 0" in out
    assert out.index(str(projects["prod-95"])) < out.index(str(projects["dev-over"]))
    headings = ["Workers:", "Webhook queue", "Exhausted", "Projects at 80%", "Recent suspensions"]
    assert [out.index(h) for h in headings] == sorted(out.index(h) for h in headings)


def test_status_without_a_database_says_so(tmp_path: Path) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PARITY_", "RUN_")) and k != "DATABASE_URL"
    }
    result = subprocess.run(
        [sys.executable, "-m", "ops", "status"],
        cwd=REPO_ROOT,
        env={**env, "RUN_STATE_FILE": str(tmp_path / "run.json")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "DATABASE_URL is not set" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_exhausted_count_reads_its_partial_index(database_url: str) -> None:
    """Among 30,000 deliveries over three weeks, 1% exhausted: the planner serves the status
    command's exhausted count from webhook_deliveries_exhausted_idx (an index-only scan of the
    last day's exhausted deliveries), not from a scan of every delivery."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            """
            with owner as (insert into auth.users (email) values ('plan@example.com') returning id),
                 project as (insert into public.projects (owner_id, name)
                             select id, 'plan' from owner returning id),
                 endpoint as (insert into public.webhook_endpoints (project_id, url, secret)
                              select id, 'https://hooks.example.com/in', 'whsec_cGxhbg=='
                                from project returning project_id)
            insert into public.events (project_id, type)
            select project_id, 'test.ping' from endpoint, generate_series(1, 30000)
            """
        )
        conn.execute(
            "with numbered as (select id, row_number() over (order by id) as n"
            "                    from public.webhook_deliveries)"
            " update public.webhook_deliveries as d"
            "    set status = case when n % 100 = 0 then 'exhausted' else 'succeeded' end"
            "                 ::public.delivery_status,"
            "        completed_at = now() - make_interval(mins => n::int)"
            "   from numbered where numbered.id = d.id"
        )
        conn.execute("vacuum analyze public.webhook_deliveries")
        [[plan]] = conn.execute(
            "explain (format json) " + status.EXHAUSTED_SINCE, (86400.0,)
        ).fetchall()
        counted = conn.execute(status.EXHAUSTED_SINCE, (86400.0,)).fetchall()

    def scans(node: dict[str, Any]) -> list[tuple[str, str | None]]:
        found = [(node["Node Type"], node.get("Index Name"))]
        for child in node.get("Plans", []):
            found += scans(child)
        return found

    nodes = scans(plan[0]["Plan"])
    assert ("Index Only Scan", "webhook_deliveries_exhausted_idx") in nodes, nodes
    assert not any(kind == "Seq Scan" for kind, _ in nodes), nodes
    # The n-th delivery completed n minutes ago: 14 exhausted (every 100th) in the last 1,440.
    assert counted == [("prod", 14)]
