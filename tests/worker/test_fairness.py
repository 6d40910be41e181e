"""Fairness between endpoints, leases that hold, and claims that skip disabled endpoints: the
worker as a real process against loopback receivers that verify every signature."""

from __future__ import annotations

import asyncio
import functools
import subprocess
from collections import Counter
from dataclasses import dataclass
from uuid import UUID

import pytest
from aiohttp import web

from shared.db import Database
from shared.webhooks import set_enabled
from tests.worker.conftest import (
    BUSY_WITH_A_HANGING_ENDPOINT,
    HANGING_ENDPOINT_TIMEOUT,
    MakeProject,
    Receiver,
    add_endpoint,
    attempt_rows,
    delivery_row,
    drain,
    emit_events,
    eventually,
    running_worker,
    serving,
    start_worker_process,
    status_counts,
    stop_process,
    webhook_project,
)
from worker import queue


async def test_a_hanging_endpoint_does_not_delay_another_projects_webhooks(
    db: Database,
    database_url: str,
    make_project: MakeProject,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    timeout = HANGING_ENDPOINT_TIMEOUT
    async with (
        serving(Receiver(delay=3_600), hang_up_with_client=True) as hanging,
        serving(Receiver()) as healthy,
    ):
        project_a, _ = await webhook_project(db, make_project, hanging, "prod")
        project_b, _ = await webhook_project(db, make_project, healthy, "prod")
        await emit_events(db, project_a, 300)
        worker = start_worker_process(database_url, **BUSY_WITH_A_HANGING_ENDPOINT)
        processes.append(worker)
        await eventually(lambda: _arrived(hanging, 4), what="the hanging endpoint's first requests")
        loop = asyncio.get_running_loop()
        started = loop.time()
        waits: list[float] = []
        for n in range(1, 4):
            # Each of B's events while A's backlog keeps the worker busy with timeouts.
            healthy.started.clear()
            emitted = loop.time()
            await emit_events(db, project_b)
            await asyncio.wait_for(healthy.started.wait(), 30)
            waits.append(loop.time() - emitted)
            assert len(healthy.received) <= n
            await asyncio.sleep(timeout * 0.75)
        elapsed = loop.time() - started
        assert await stop_process(worker) == 0

    assert max(waits) < 1.0, f"B's webhooks waited {waits} s behind A's hanging endpoint"
    # A never had more than its share in flight: 4 per request timeout (plus the first round).
    assert len(hanging.arrived) <= 4 * (elapsed / timeout + 2)
    assert healthy.bad_signatures == hanging.bad_signatures == []


async def _arrived(receiver: Receiver, count: int) -> bool:
    return len(receiver.arrived) >= count


@pytest.mark.slow(100)
async def test_at_the_default_settings_slow_receivers_get_each_webhook_once(
    db: Database,
    database_url: str,
    make_project: MakeProject,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    # The defaults (lease 60 s, batch 200, 50 senders) with a 30 s timeout and receivers that take
    # 25 s: a worker holding 200 would start the last 50 after 75 s, past their lease.
    total, endpoints = 200, 50
    async with serving(Receiver(delay=25.0)) as receiver:
        project = await make_project("prod")
        for _ in range(endpoints):
            await add_endpoint(db, project, receiver)
        await emit_events(db, project, total // endpoints)
        worker = start_worker_process(
            database_url,
            request_timeout_seconds=30,
            lease_seconds=60,
            batch_size=200,
            concurrency=50,
            endpoint_concurrency=4,
            poll_interval_seconds=1.0,
        )
        processes.append(worker)
        await eventually(
            lambda: _succeeded(db, total), within=150, what="every delivery succeeding"
        )
        assert await stop_process(worker) == 0

    sent = Counter(receiver.arrived)
    assert len(sent) == total
    assert set(sent.values()) == {1}, "a webhook-id was sent more than once"
    assert receiver.bad_signatures == []
    async with db.as_service() as conn:
        cur = await conn.execute(
            "select count(*) as n, max(attempt_number) as most from public.webhook_attempts"
        )
        row = await cur.fetchone()
    assert row is not None and (row["n"], row["most"]) == (total, 1)


async def _succeeded(db: Database, total: int) -> bool:
    return (await status_counts(db)).get("succeeded", 0) == total


async def test_deliveries_of_a_disabled_endpoint_are_never_claimed_whatever_their_status(
    db: Database, database_url: str, make_project: MakeProject, receiver: Receiver
) -> None:
    project, endpoint = await webhook_project(db, make_project, receiver, "prod")
    ids = await emit_events(db, project, 3)
    async with db.as_service() as conn:
        await set_enabled(conn, endpoint, False, reason="paused")
        # Whatever put them back to pending (a bug, a hand edit), they stay undelivered.
        await conn.execute(
            "update public.webhook_deliveries set status = 'pending', completed_at = null"
            " where endpoint_id = %s",
            (endpoint,),
        )
        claimed = await queue.claim(
            conn,
            worker_id="w",
            limit=10,
            lease_seconds=10,
            per_endpoint=10,
            held=[],
            budgets=queue.Budgets.from_config(),
        )
        assert claimed == []
        assert await queue.count_due(conn) == 0
    await drain(database_url)
    assert receiver.arrived == []
    for delivery_id in ids:
        assert (await delivery_row(db, delivery_id))["attempts"] == 0


async def test_an_attempt_in_flight_when_its_endpoint_is_disabled_is_still_logged(
    db: Database, database_url: str, make_project: MakeProject
) -> None:
    async with serving(Receiver(delay=1.0)) as receiver:
        project, endpoint = await webhook_project(db, make_project, receiver, "prod")
        [delivery_id] = await emit_events(db, project)
        async with running_worker(database_url):
            await asyncio.wait_for(receiver.started.wait(), 30)
            async with db.as_service() as conn:
                await set_enabled(conn, endpoint, False)

            async def logged() -> bool:
                return bool(await attempt_rows(db, delivery_id))

            await eventually(logged, what="the attempt's row")
    row = await delivery_row(db, delivery_id)
    assert (row["status"], row["attempts"]) == ("cancelled", 1)
    [attempt] = await attempt_rows(db, delivery_id)
    assert (attempt["attempt_number"], attempt["status_code"]) == (1, 200)
    assert receiver.count(str(delivery_id)) == 1


@pytest.mark.slow(20)
async def test_a_payload_that_kills_every_worker_ends_exhausted(
    db: Database,
    database_url: str,
    make_project: MakeProject,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    # The receiver kills (kill -9) the worker that sends it the delivery, as a payload that
    # crashes the process would: every attempt dies with its worker, its outcome unknown.
    victims: list[subprocess.Popen[bytes]] = []

    def kill_the_sender(receiver: Receiver, received: object) -> tuple[int, dict[str, str]]:
        victims[-1].kill()
        return 200, {}

    async with serving(Receiver(respond=kill_the_sender)) as receiver:
        project, _ = await webhook_project(db, make_project, receiver, "prod")
        [delivery_id] = await emit_events(db, project)
        for _ in range(8):
            if (await delivery_row(db, delivery_id))["status"] == "exhausted":
                break
            worker = start_worker_process(
                database_url, lease_seconds=1.5, request_timeout_seconds=1
            )
            processes.append(worker)
            victims.append(worker)

            async def died_or_exhausted(worker: subprocess.Popen[bytes] = worker) -> bool:
                row = await delivery_row(db, delivery_id)
                return worker.poll() is not None or row["status"] == "exhausted"

            await eventually(died_or_exhausted, what="a kill or the end of the budget")
            if worker.poll() is None:
                assert await stop_process(worker) == 0
    row = await delivery_row(db, delivery_id)
    assert row["status"] == "exhausted"
    assert row["attempts"] == 4  # prod: 4 attempts
    assert len(receiver.received) == 4
    assert sum(1 for v in victims if v.returncode == -9) == 4
    attempts = await attempt_rows(db, delivery_id)
    assert [a["attempt_number"] for a in attempts] == [1, 2, 3, 4]
    assert all("outcome unknown" in a["error"] for a in attempts)
    assert receiver.bad_signatures == []


async def test_a_claim_never_returns_a_delivery_its_worker_still_holds(
    db: Database, make_project: MakeProject, receiver: Receiver
) -> None:
    project, _ = await webhook_project(db, make_project, receiver, "prod")
    await emit_events(db, project, 2)
    budgets = queue.Budgets.from_config()
    async with db.as_service() as conn:
        held = await queue.claim(
            conn,
            worker_id="w",
            limit=1,
            lease_seconds=0.001,  # expires at once, as after an outage
            per_endpoint=10,
            held=[],
            budgets=budgets,
        )
        assert len(held) == 1
    async with db.as_service() as conn:
        # Neither settled as lost nor claimed again while the worker says it holds it.
        assert await queue.settle_lost(conn, held=[held[0].id], budgets=budgets) == {}
        again = await queue.claim(
            conn,
            worker_id="w",
            limit=10,
            lease_seconds=60,
            per_endpoint=10,
            held=[held[0].id],
            budgets=budgets,
        )
    assert [d.id for d in again] != [] and held[0].id not in {d.id for d in again}


async def test_only_a_fast_endpoint_no_other_worker_holds_is_claimed_beyond_its_cap(
    db: Database, make_project: MakeProject, receiver: Receiver
) -> None:
    alone, alone_endpoint = await webhook_project(db, make_project, receiver, "prod")
    shared, shared_endpoint = await webhook_project(db, make_project, receiver, "prod")
    await emit_events(db, alone, 30)
    await emit_events(db, shared, 30)
    budgets = queue.Budgets.from_config()
    claim = functools.partial(
        queue.claim, lease_seconds=60, per_endpoint=4, prefetch=20, budgets=budgets, limit=100
    )

    def of(claimed: list[queue.ClaimedDelivery], endpoint: UUID) -> list[UUID]:
        return [d.id for d in claimed if d.endpoint_id == endpoint]

    async with db.as_service() as conn:
        # Not known to be fast yet: the cap, for both endpoints.
        first = await claim(conn, worker_id="a", held=[])
        assert len(of(first, alone_endpoint)) == len(of(first, shared_endpoint)) == 4
        # Worker b takes some of the shared endpoint's: it counts the cap across workers.
        released = of(first, shared_endpoint)
        await queue.release(conn, released[1:], worker_id="a")
        mine = [*of(first, alone_endpoint), released[0]]
        theirs = await claim(conn, worker_id="b", held=[], fast=[shared_endpoint])
        assert len(of(theirs, shared_endpoint)) == 3  # 1 leased by a + 3 = the cap
        # Both fast now: a holds the endpoint nobody else does deeper, the shared one not at all.
        deeper = await claim(conn, worker_id="a", held=mine, fast=[alone_endpoint, shared_endpoint])
    assert len(of(deeper, alone_endpoint)) == 20 - 4
    assert of(deeper, shared_endpoint) == []


async def _leased(db: Database, endpoint: UUID) -> int:
    async with db.as_service() as conn:
        cur = await conn.execute(
            "select count(*) as n from public.webhook_deliveries"
            " where endpoint_id = %s and leased_by is not null",
            (endpoint,),
        )
        row = await cur.fetchone()
    assert row is not None
    leased: int = row["n"]
    return leased


async def test_a_fast_endpoint_that_turns_slow_gives_its_waiting_deliveries_back(
    db: Database,
    database_url: str,
    make_project: MakeProject,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    async with serving(Receiver(delay=0.05), hang_up_with_client=True) as receiver:
        project, endpoint = await webhook_project(db, make_project, receiver, "prod")
        await emit_events(db, project, 1)  # one quick answer makes the endpoint "fast"
        worker = start_worker_process(
            database_url, endpoint_concurrency=4, request_timeout_seconds=3.0
        )
        processes.append(worker)
        await eventually(lambda: _arrived(receiver, 1), what="the first quick answer")
        await asyncio.sleep(0.5)
        receiver.delay = 3_600  # from now on it never answers
        await emit_events(db, project, 300)

        async def held_deep() -> bool:
            return await _leased(db, endpoint) > 4

        await eventually(held_deep, what="the fast endpoint held beyond its cap")

        async def given_back() -> bool:
            return await _leased(db, endpoint) <= 4

        # The first timeout (3 s) gives the waiting ones back; renewals would keep them otherwise.
        await eventually(given_back, within=20, what="the waiting deliveries given back")
        assert await stop_process(worker) == 0
    async with db.as_service() as conn:
        cur = await conn.execute(
            "select count(*) filter (where attempts > 1) as over, count(*) as n"
            " from public.webhook_deliveries where endpoint_id = %s",
            (endpoint,),
        )
        row = await cur.fetchone()
    # Released unattempted: the attempt counted at claim time was taken back.
    assert row is not None and row["n"] == 301 and row["over"] == 0


@dataclass
class CountingReceiver(Receiver):
    """Also counts the requests in flight at once."""

    in_flight: int = 0
    most_in_flight: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            return await super().handle(request)
        finally:
            self.in_flight -= 1


async def test_a_fast_endpoint_is_held_deeper_but_never_has_more_than_its_cap_in_flight(
    db: Database,
    database_url: str,
    make_project: MakeProject,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    total = 200
    counting = CountingReceiver(delay=0.05)
    async with serving(counting) as receiver:
        project, endpoint = await webhook_project(db, make_project, receiver, "prod")
        worker = start_worker_process(database_url, endpoint_concurrency=4, concurrency=50)
        processes.append(worker)
        await emit_events(db, project, total)
        most_leased = 0
        while not await _succeeded(db, total):
            most_leased = max(most_leased, await _leased(db, endpoint))
            await asyncio.sleep(0.02)
        assert await stop_process(worker) == 0

    assert counting.most_in_flight <= 4
    assert most_leased > 4, "the fast endpoint was never held beyond its in-flight cap"
    assert sorted(Counter(receiver.arrived).values()) == [1] * total
    assert receiver.bad_signatures == []


async def test_a_claim_reads_the_same_beside_a_small_or_a_large_backlog_of_another_tenant(
    db: Database, make_project: MakeProject, receiver: Receiver
) -> None:
    """The claim walks the endpoints with work and reads a few rows of each, never a backlog:
    the buffers it touches (counted by Postgres, not timed) hardly change whether another
    project has 200 or 10,000 deliveries queued."""
    big, _ = await webhook_project(db, make_project, receiver, "prod")
    small, _ = await webhook_project(db, make_project, receiver, "prod")
    [waiting] = await emit_events(db, small)
    touched: list[int] = []
    queued = 0
    for backlog in (200, 10_000):
        await emit_events(db, big, backlog - queued)
        queued = backlog
        async with db.as_service() as conn:
            await conn.execute("analyze public.webhook_deliveries")
        statement, params = queue.claim_statement(
            worker_id="w", limit=200, lease_seconds=60, per_endpoint=4, held=[],
            budgets=queue.Budgets.from_config(),
        )  # fmt: skip
        async with db.as_service(queue.CLAIM_SETTINGS) as conn:
            cur = await conn.execute(f"explain (analyze, buffers, format json) {statement}", params)
            row = await cur.fetchone()
            assert row is not None
            plan = row["QUERY PLAN"][0]["Plan"]
            await conn.execute("rollback")  # the claim leased nothing, for the next round
        # The big project's endpoint gives its 4, the small project's delivery comes beside them.
        assert plan["Actual Rows"] == 5
        touched.append(plan["Shared Hit Blocks"] + plan["Shared Read Blocks"])
    # Index descents grow with the log of the table; reading the backlog would touch every one
    # of its pages (over 10,000 buffers here).
    assert touched[1] < 2 * touched[0], f"buffers touched beside 200 and 10,000: {touched}"
    async with db.as_service() as conn:
        claimed = await queue.claim(
            conn, worker_id="w", limit=200, lease_seconds=60, per_endpoint=4, held=[],
            budgets=queue.Budgets.from_config(),
        )  # fmt: skip
    assert waiting in {d.id for d in claimed} and len(claimed) == 5


async def test_attempts_waiting_to_be_recorded_do_not_count_against_an_endpoints_cap(
    db: Database, make_project: MakeProject, receiver: Receiver
) -> None:
    """The cap limits requests in flight: once two of four attempts have finished (their records
    still to be written), the worker may claim two more for that endpoint, never the held ones."""
    project, _ = await webhook_project(db, make_project, receiver, "prod")
    await emit_events(db, project, 10)
    claim = functools.partial(
        queue.claim, worker_id="w", limit=10, lease_seconds=60, per_endpoint=4,
        budgets=queue.Budgets.from_config(),
    )  # fmt: skip
    async with db.as_service(queue.CLAIM_SETTINGS) as conn:
        first = await claim(conn, held=[])
    held = [d.id for d in first]
    async with db.as_service(queue.CLAIM_SETTINGS) as conn:
        assert await claim(conn, held=held) == []  # four in flight: the cap
    async with db.as_service(queue.CLAIM_SETTINGS) as conn:
        more = await claim(conn, held=held, attempted=held[:2])
    assert len(first) == 4 and len(more) == 2
    assert not {d.id for d in more} & set(held)
