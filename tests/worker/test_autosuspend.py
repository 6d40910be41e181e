"""US-005: the auto-suspend sweep suspends prod projects over their cap and only warns elsewhere."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import pytest
from prometheus_client import REGISTRY

from shared import suspensions
from shared.db import Database
from shared.errors import InvalidInput, ParityError
from shared.settings import PlatformSettings
from tests.worker.conftest import (
    MakeProject,
    add_usage,
    allow_inserts,
    eventually,
    refuse_inserts,
    running_worker,
    worker_settings,
)
from worker import autosuspend, heartbeat
from worker.app import Worker, sweep

WINDOW = datetime(2026, 4, 1, tzinfo=UTC)


async def project_state(db: Database, project_id: UUID) -> dict[str, Any]:
    async with db.as_service() as conn:
        cur = await conn.execute(
            "select p.status,"
            " (select count(*) from public.suspensions s where s.project_id = p.id) as suspensions,"
            " (select count(*) from public.suspensions s where s.project_id = p.id"
            "   and s.lifted_at is null) as open_suspensions,"
            " (select array_agg(e.type order by e.created_at) from public.events e"
            "   where e.project_id = p.id) as events"
            " from public.projects p where p.id = %s",
            (project_id,),
        )
        row = await cur.fetchone()
    assert row is not None
    return {**row, "events": row["events"] or []}


async def test_a_prod_project_over_its_cap_is_suspended_with_a_row_and_an_event(
    db: Database, make_project: MakeProject
) -> None:
    over = await make_project("prod")
    under = await make_project("prod")
    await add_usage(db, over, requests=101, request_cap=100, window_start=WINDOW)
    await add_usage(db, under, requests=99, request_cap=100, window_start=WINDOW)

    result = await sweep(db, worker_settings())

    assert (result.violators, result.suspended, result.warned) == (1, 1, 0)
    assert await project_state(db, over) == {
        "status": "suspended",
        "suspensions": 1,
        "open_suspensions": 1,
        "events": ["project.suspended"],
    }
    assert (await project_state(db, under))["status"] == "active"
    async with db.as_service() as conn:
        suspension = await suspensions.current_suspension(conn, over)
        cur = await conn.execute("select payload from public.events where project_id = %s", (over,))
        event = await cur.fetchone()
    assert suspension is not None
    assert (suspension.requests, suspension.request_cap) == (101, 100)
    assert suspension.window_start == WINDOW
    assert suspension.reason == "request cap exceeded"
    assert event is not None
    assert event["payload"]["suspension_id"] == str(suspension.id)
    assert event["payload"]["requests"] == 101
    # A second sweep finds nothing left to do.
    assert (await sweep(db, worker_settings())).violators == 0
    assert (await project_state(db, over))["suspensions"] == 1


@pytest.mark.parametrize("environment", ["dev", "staging"])
async def test_dev_and_staging_over_their_caps_stay_active_with_one_warning_per_window(
    db: Database, make_project: MakeProject, environment: str
) -> None:
    project = await make_project(environment)
    await add_usage(db, project, requests=5_000, request_cap=100, window_start=WINDOW)

    for _ in range(3):
        await sweep(db, worker_settings())
        # The gateway keeps counting: the same window stays over its cap.
        async with db.as_service() as conn:
            await conn.execute(
                "update public.usage_counters set requests = requests + 10 where project_id = %s",
                (project,),
            )

    state = await project_state(db, project)
    assert state == {
        "status": "active",
        "suspensions": 0,
        "open_suspensions": 0,
        "events": ["project.cap_exceeded"],
    }
    # The next window over its cap warns once more.
    await add_usage(
        db, project, requests=101, request_cap=100, window_start=WINDOW + timedelta(days=1)
    )
    await sweep(db, worker_settings())
    assert (await project_state(db, project))["events"] == ["project.cap_exceeded"] * 2


async def test_a_lifted_project_is_active_again_and_can_be_suspended_again_later(
    db: Database, make_project: MakeProject
) -> None:
    project = await make_project("prod")
    await add_usage(db, project, requests=200, request_cap=100, window_start=WINDOW)
    await sweep(db, worker_settings())

    async with db.as_service() as conn:
        lifted = await suspensions.lift(conn, project, lifted_by="ops", reason="cap raised")
    assert lifted.lifted_by == "ops"
    state = await project_state(db, project)
    assert (state["status"], state["open_suspensions"]) == ("active", 0)
    assert state["events"] == ["project.suspended", "project.unsuspended"]
    # Lifting twice is refused and changes nothing.
    with pytest.raises(InvalidInput, match="is not suspended"):
        async with db.as_service() as conn:
            await suspensions.lift(conn, project, lifted_by="ops")

    # The same window was acted on already; the next one over the cap suspends again.
    await sweep(db, worker_settings())
    assert (await project_state(db, project))["status"] == "active"
    await add_usage(
        db, project, requests=150, request_cap=100, window_start=WINDOW + timedelta(days=1)
    )
    await sweep(db, worker_settings())
    state = await project_state(db, project)
    assert (state["status"], state["suspensions"], state["open_suspensions"]) == (
        "suspended",
        2,
        1,
    )
    assert state["events"] == ["project.suspended", "project.unsuspended", "project.suspended"]


async def test_a_suspension_is_all_or_nothing(db: Database, make_project: MakeProject) -> None:
    """Status, suspension row, event and handled mark commit together: when the event cannot be
    written, nothing else is either, and the next sweep tries again."""
    project = await make_project("prod")
    await add_usage(db, project, requests=200, request_cap=100, window_start=WINDOW)
    await refuse_inserts(db, "events")
    with pytest.raises(ParityError, match="events are refused"):
        await sweep(db, worker_settings())
    assert await project_state(db, project) == {
        "status": "active",
        "suspensions": 0,
        "open_suspensions": 0,
        "events": [],
    }
    await allow_inserts(db, "events")
    assert (await sweep(db, worker_settings())).suspended == 1
    assert (await project_state(db, project))["status"] == "suspended"


def sweep_actions() -> dict[tuple[str, str], float]:
    """The sweep's action counters as a scrape would read them."""
    return {
        (env, action): REGISTRY.get_sample_value(
            "parity_autosuspend_actions_total", {"environment": env, "action": action}
        )
        or 0.0
        for env in ("prod", "dev", "staging")
        for action in ("suspended", "cap_exceeded")
    }


async def test_a_batch_whose_commit_fails_is_not_counted(
    db: Database, make_project: MakeProject
) -> None:
    """Every write of the batch succeeds and its commit is refused (a deferred constraint trigger
    raising at commit, as a commit lost to a failover would): nothing is suspended and the metrics
    count nothing; the sweep that then commits is counted once."""
    prod = await make_project("prod")
    dev = await make_project("dev")
    for project in (prod, dev):
        await add_usage(db, project, requests=200, request_cap=100, window_start=WINDOW)
    async with db.as_service() as conn:
        await conn.execute("set role postgres")
        await conn.execute(
            "create function public.refuse_commit() returns trigger language plpgsql as"
            " $$ begin raise exception 'commit refused'; end $$;"
            " create constraint trigger refuse_commit after insert on public.events"
            " deferrable initially deferred for each row execute function public.refuse_commit()"
        )
    before = sweep_actions()
    with pytest.raises(ParityError, match="commit refused"):
        await sweep(db, worker_settings())
    assert sweep_actions() == before
    assert (await project_state(db, prod))["status"] == "active"
    async with db.as_service() as conn:
        await conn.execute("set role postgres")
        await conn.execute("drop trigger refuse_commit on public.events")
    assert await sweep(db, worker_settings()) == autosuspend.SweepResult(2, 1, 1)
    after = sweep_actions()
    assert {k: after[k] - before[k] for k in after if after[k] != before[k]} == {
        ("prod", "suspended"): 1,
        ("dev", "cap_exceeded"): 1,
    }


async def test_three_concurrent_sweepers_suspend_each_project_once(
    database_url: str, db: Database, make_project: MakeProject
) -> None:
    prod = [await make_project("prod") for _ in range(60)]
    dev = [await make_project("dev") for _ in range(30)]
    for project in prod + dev:
        await add_usage(db, project, requests=10, request_cap=5, window_start=WINDOW)
        # Two windows over the cap: still one open suspension per project.
        await add_usage(
            db, project, requests=10, request_cap=5, window_start=WINDOW + timedelta(days=1)
        )

    settings = worker_settings(sweep_batch_size=7)
    pools = [Database(database_url, min_size=1, max_size=2) for _ in range(3)]
    for pool in pools:
        await pool.open()
    try:
        results = await asyncio.gather(*(sweep(pool, settings) for pool in pools for _ in (1, 2)))
    finally:
        for pool in pools:
            await pool.close()

    assert sum(r.violators for r in results) == 180
    assert sum(r.suspended for r in results) == 60
    for project in prod:
        state = await project_state(db, project)
        assert (state["status"], state["suspensions"]) == ("suspended", 1)
        assert state["events"] == ["project.suspended"]
    for project in dev:
        state = await project_state(db, project)
        assert state["status"] == "active"
        assert state["events"] == ["project.cap_exceeded"] * 2  # one per window


async def test_the_sweep_query_reads_the_violators_partial_index(db: Database) -> None:
    async with db.as_service() as conn:
        await conn.execute("set local enable_seqscan = off")
        cur = await conn.execute("explain " + autosuspend.VIOLATORS_QUERY, {"limit": 10})
        plan = "\n".join(row["QUERY PLAN"] for row in await cur.fetchall())
    assert "usage_counters_unhandled_violators_idx" in plan


def test_platform_settings_need_a_database_for_the_worker() -> None:
    with pytest.raises(ValueError, match="DATABASE_URL is not set"):
        Worker(PlatformSettings(database_url=""), worker_settings())


async def test_the_running_worker_sweeps_by_itself_and_reports_it_in_its_heartbeat(
    db: Database, database_url: str, make_project: MakeProject
) -> None:
    project = await make_project("prod")
    async with running_worker(database_url) as worker:
        await add_usage(db, project, requests=11, request_cap=10, window_start=WINDOW)

        async def reported() -> bool:
            async with db.as_service() as conn:
                beats = await heartbeat.fresh(conn, max_age_seconds=30)
            return any(b.tasks.get("sweeper", {}).get("suspended") == 1 for b in beats)

        await eventually(reported, what="a heartbeat reporting the suspension")
        async with db.as_service() as conn:
            [beat] = await heartbeat.fresh(conn, max_age_seconds=30)
        assert beat.worker_id == worker.worker_id
        assert beat.tasks["dispatcher"]["claimed"] == 0
    assert (await project_state(db, project))["status"] == "suspended"


@pytest.mark.parametrize("environment", ["prod", "dev"])
async def test_a_project_exactly_at_its_cap_is_within_it(
    db: Database, make_project: MakeProject, environment: str
) -> None:
    # The cap is what a window allows: the sweep acts on projects over it, as the docs say.
    at_cap = await make_project(environment)
    await add_usage(db, at_cap, requests=100, request_cap=100, window_start=WINDOW)
    assert await sweep(db, worker_settings()) == autosuspend.SweepResult(0, 0, 0)
    assert await project_state(db, at_cap) == {
        "status": "active",
        "suspensions": 0,
        "open_suspensions": 0,
        "events": [],
    }
    async with db.as_service() as conn:
        await conn.execute(
            "update public.usage_counters set requests = 101 where project_id = %s", (at_cap,)
        )
    assert (await sweep(db, worker_settings())).violators == 1
