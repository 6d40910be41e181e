"""The worker as a real process: crashes, several workers at once, lost connections, signals."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections import Counter
from collections.abc import Awaitable
from uuid import UUID

import psycopg
import pytest

from shared.db import Database
from shared.settings import PlatformSettings
from tests.worker.conftest import (
    MakeProject,
    Receiver,
    attempt_rows,
    delivery_row,
    emit_events,
    eventually,
    lease_to,
    refuse_inserts,
    running_worker,
    serving,
    spawn,
    start_worker_process,
    status_counts,
    stop_process,
    webhook_project,
    worker_settings,
)
from worker.app import Worker


async def all_succeeded(db: Database, total: int) -> bool:
    return (await status_counts(db)).get("succeeded", 0) == total


async def attempt_numbers(db: Database) -> dict[str, list[int]]:
    async with db.as_service() as conn:
        cur = await conn.execute(
            "select delivery_id::text as id, array_agg(attempt_number order by attempt_number)"
            " as numbers from public.webhook_attempts group by delivery_id"
        )
        return {row["id"]: row["numbers"] for row in await cur.fetchall()}


@pytest.mark.slow(12)
async def test_kill_9_mid_run_loses_nothing_and_keeps_attempt_counts(
    db: Database,
    database_url: str,
    make_project: MakeProject,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    # Every delivery fails once, then succeeds: two recorded attempts each, unless a crash cut one.
    def fail_first(receiver: Receiver, got: object) -> tuple[int, dict[str, str]]:
        webhook_id = receiver.received[-1].webhook_id
        return (500 if receiver.count(webhook_id) == 1 else 200), {}

    total = 200
    async with serving(Receiver(respond=fail_first, delay=0.05)) as receiver:
        project, _ = await webhook_project(db, make_project, receiver, "prod")
        await emit_events(db, project, total)
        settings = {
            "lease_seconds": 2.0,
            "request_timeout_seconds": 1.5,
            "concurrency": 10,
            "batch_size": 20,
        }

        first = start_worker_process(database_url, **settings)
        processes.append(first)
        await eventually(lambda: _at_least(receiver, 150), what="150 requests before the kill")
        first.send_signal(signal.SIGKILL)
        first.wait()
        counts_before = await attempt_numbers(db)
        await asyncio.sleep(0.3)  # requests the dead worker had sent reach the receiver
        arrived_before = Counter(receiver.arrived)

        second = start_worker_process(database_url, **settings)
        processes.append(second)
        await eventually(lambda: all_succeeded(db, total), what="every delivery succeeding")
        assert await stop_process(second) == 0

    numbers = await attempt_numbers(db)
    assert len(numbers) == total  # nothing lost
    for delivery_id, before in counts_before.items():
        # Attempts recorded before the kill are all still there, and counting went on after them.
        assert numbers[delivery_id][: len(before)] == before
    for delivery_id, recorded in numbers.items():
        assert recorded == list(range(1, len(recorded) + 1))
        assert recorded[-1] == (await delivery_row(db, UUID(delivery_id)))["attempts"]
    # A request beyond the recorded attempts is one the kill interrupted (sent, its outcome not yet
    # recorded): it came again with the same webhook-id. The worker held at most a batch of those.
    seen = Counter(receiver.arrived)
    duplicated = {i for i, n in seen.items() if n > len(numbers[i])}
    in_flight_at_kill = {i for i, n in arrived_before.items() if n > len(counts_before.get(i, []))}
    assert duplicated <= in_flight_at_kill
    assert len(in_flight_at_kill) <= settings["batch_size"]
    assert all(seen[i] == len(numbers[i]) + 1 for i in duplicated)
    assert receiver.bad_signatures == []


async def test_three_workers_deliver_each_of_2000_webhooks_exactly_once(
    db: Database,
    database_url: str,
    make_project: MakeProject,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    total = 2_000
    async with serving(Receiver()) as receiver:
        project, _ = await webhook_project(db, make_project, receiver, "staging")
        await emit_events(db, project, total)
        for _ in range(3):
            processes.append(start_worker_process(database_url, batch_size=40))
        await eventually(lambda: all_succeeded(db, total), within=120, what="2,000 deliveries")
        codes = [await stop_process(p) for p in processes]

    assert codes == [0, 0, 0]
    seen = Counter(r.webhook_id for r in receiver.received)
    assert len(seen) == total
    assert set(seen.values()) == {1}
    assert receiver.bad_signatures == []


async def _terminate_backends(database_url: str, *, waiting_for_a_lock: bool = False) -> int:
    """Terminate the other sessions of the test's database (only those waiting for a lock):
    how many."""
    condition = " and wait_event_type = 'Lock'" if waiting_for_a_lock else ""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        cur = await conn.execute(
            "select count(pg_terminate_backend(pid)) from pg_stat_activity"
            " where datname = current_database() and pid <> pg_backend_pid()" + condition
        )
        row = await cur.fetchone()
    assert row is not None
    killed: int = row[0]
    return killed


async def test_terminated_connections_are_replaced_and_the_work_finishes(
    db: Database,
    database_url: str,
    make_project: MakeProject,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    total = 400
    async with serving(Receiver(delay=0.01)) as receiver:
        project, _ = await webhook_project(db, make_project, receiver, "dev")
        await emit_events(db, project, total)
        # A long poll interval: after the terminations only LISTEN (reconnected) wakes the worker.
        worker = start_worker_process(database_url, poll_interval_seconds=60, concurrency=5)
        processes.append(worker)
        await eventually(lambda: _at_least(receiver, 100), what="100 deliveries")
        assert await _terminate_backends(database_url) >= 2  # pool and listener connections
        await eventually(lambda: _at_least(receiver, 250), what="250 deliveries")
        assert await _terminate_backends(database_url) >= 2
        await eventually(lambda: all_succeeded(db, total), what="the first 400 deliveries")

        await asyncio.sleep(0.5)  # the listener has reconnected (it retries within 0.1 s)
        await emit_events(db, project, 10)
        await eventually(lambda: all_succeeded(db, total + 10), within=20, what="woken by NOTIFY")
        assert await stop_process(worker) == 0
    assert receiver.bad_signatures == []
    assert len({r.webhook_id for r in receiver.received}) == total + 10


async def test_a_claim_whose_answer_was_lost_is_released_by_the_next_claim(
    db: Database, database_url: str, make_project: MakeProject
) -> None:
    # A claim can commit and its answer be lost (the connection drops between the commit and the
    # reply): the deliveries it leased are the worker's in the database, yet no sender has them.
    # Left alone they would wait out their lease (60 s by default) and then be settled as an
    # attempt with its outcome unknown. The state such a claim leaves is made here by hand; the
    # worker's first claim then fails (its connection is terminated while it waits for a lock),
    # and the next claim releases them and sends them at once, their attempt counted once.
    async with serving(Receiver()) as receiver:
        project, _ = await webhook_project(db, make_project, receiver, "prod")
        ids = await emit_events(db, project, 20)
        await lease_to(db, ids, "lost-answer")
        async with await psycopg.AsyncConnection.connect(database_url) as holder:
            await holder.execute("lock table public.webhook_deliveries in exclusive mode")
            async with running_worker(
                database_url, name="lost-answer", poll_interval_seconds=60, lease_seconds=60
            ):
                await eventually(
                    lambda: _terminated_one(database_url), what="a claim waiting for the lock"
                )
                await holder.rollback()
                await eventually(lambda: all_succeeded(db, 20), within=20, what="20 deliveries")

    assert sorted(r.webhook_id for r in receiver.received) == sorted(map(str, ids))
    for delivery_id in ids:
        attempts = await attempt_rows(db, delivery_id)
        assert [(a["attempt_number"], a["error"]) for a in attempts] == [(1, None)]


async def _terminated_one(database_url: str) -> bool:
    return await _terminate_backends(database_url, waiting_for_a_lock=True) > 0


async def _heartbeat_pid(db: Database, worker_id: str) -> int | None:
    async with db.as_service() as conn:
        cur = await conn.execute(
            "select pid from public.worker_heartbeats where worker_id = %s", (worker_id,)
        )
        row = await cur.fetchone()
    return None if row is None else int(row["pid"])


async def test_a_worker_name_in_use_by_a_live_worker_is_refused(
    db: Database,
    database_url: str,
    make_project: MakeProject,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    # A worker releases the leases under its name that it does not know of (after a claim whose
    # answer was lost): a namesake's deliveries in flight would go out twice. So a second worker
    # under a name another live worker beats with does not start; a worker that died leaves its
    # name free once its heartbeat is older than WORKER_HEARTBEAT_MAX_AGE_SECONDS.
    name = {"name": "twin", "heartbeat_max_age_seconds": 1.0}
    first = start_worker_process(database_url, **name)
    processes.append(first)
    await eventually(lambda: _is(_heartbeat_pid(db, "twin"), first.pid), what="first's beat")

    second = start_worker_process(database_url, **name)
    processes.append(second)
    await eventually(lambda: _exited(second), within=15, what="the second worker's exit")
    assert second.returncode == 2  # EXIT_CONFIG, after waiting 1 s for the name to go silent
    assert await _heartbeat_pid(db, "twin") == first.pid

    async with serving(Receiver()) as receiver:
        project, _ = await webhook_project(db, make_project, receiver, "prod")
        await emit_events(db, project, 20)
        await eventually(lambda: all_succeeded(db, 20), what="20 deliveries by the first")

        first.kill()  # dies without removing its heartbeat
        first.wait()
        third = start_worker_process(database_url, **name)
        processes.append(third)
        await eventually(lambda: _is(_heartbeat_pid(db, "twin"), third.pid), what="third's beat")
        await emit_events(db, project, 5)
        await eventually(lambda: all_succeeded(db, 25), what="5 more by the third")
        assert await stop_process(third) == 0
    assert await _heartbeat_pid(db, "twin") is None  # a clean stop frees the name at once
    assert sorted(Counter(r.webhook_id for r in receiver.received).values()) == [1] * 25


async def _is(value: Awaitable[int | None], expected: int) -> bool:
    return await value == expected


async def _exited(process: subprocess.Popen[bytes]) -> bool:
    return process.poll() is not None


async def test_sigterm_lets_in_flight_deliveries_finish(
    db: Database,
    database_url: str,
    make_project: MakeProject,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    async with serving(Receiver(delay=1.0)) as receiver:
        project, _ = await webhook_project(db, make_project, receiver, "prod")
        ids = await emit_events(db, project, 5)
        worker = start_worker_process(database_url)
        processes.append(worker)
        await eventually(lambda: _arrived(receiver, 5), what="5 requests in flight")
        assert await stop_process(worker) == 0
    for delivery_id in ids:
        row = await delivery_row(db, delivery_id)
        assert (row["status"], row["attempts"], row["leased_by"]) == ("succeeded", 1, None)


async def test_sigterm_past_the_grace_logs_in_flight_attempts_as_outcome_unknown(
    db: Database,
    database_url: str,
    make_project: MakeProject,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    async with serving(Receiver(delay=3.0)) as receiver:
        project, _ = await webhook_project(db, make_project, receiver, "prod")
        ids = await emit_events(db, project, 3)
        worker = start_worker_process(
            database_url, shutdown_grace_seconds=0.2, retry_schedule_seconds=[60.0]
        )
        processes.append(worker)
        await eventually(lambda: _arrived(receiver, 3), what="3 requests in flight")
        assert await stop_process(worker, within=10) == 0
    for delivery_id in ids:
        row = await delivery_row(db, delivery_id)
        # The requests reached the receiver: each is an attempt, counted, and retried later.
        assert (row["status"], row["attempts"], row["leased_by"]) == ("pending", 1, None)
        [attempt] = await attempt_rows(db, delivery_id)
        assert attempt["status_code"] is None
        assert (
            "outcome unknown: the worker stopped while the request was in flight"
            in (attempt["error"])
        )


async def test_check_reports_a_fresh_heartbeat_only_while_a_worker_runs(
    database_url: str, processes: list[subprocess.Popen[bytes]]
) -> None:
    assert await _check(database_url) == 1
    worker = start_worker_process(database_url)
    processes.append(worker)

    async def healthy() -> bool:
        return await _check(database_url) == 0

    await eventually(healthy, what="a fresh heartbeat")
    assert await stop_process(worker) == 0
    assert await _check(database_url) == 1  # a clean stop removes its heartbeat


async def test_a_dead_task_stops_the_worker_loudly(db: Database, database_url: str) -> None:
    worker = await spawn(database_url, "-m", "worker", stderr=asyncio.subprocess.PIPE)
    try:
        async with db.as_service() as conn:
            await conn.execute("set role postgres")
            # The sweeper cannot work without its table: a bug, not an outage.
            await conn.execute("alter table public.usage_counters rename to usage_counters_gone")
        _, stderr = await asyncio.wait_for(worker.communicate(), 30)
    finally:
        if worker.returncode is None:
            worker.kill()
            await worker.wait()
    assert worker.returncode == 1
    assert "task sweeper stopped unexpectedly" in stderr.decode()


async def test_drain_delivers_and_sweeps_what_is_due_then_exits(
    db: Database, database_url: str, make_project: MakeProject
) -> None:
    async with serving(Receiver()) as receiver:
        project, _ = await webhook_project(db, make_project, receiver, "prod")
        await emit_events(db, project, 20)
        drain = await spawn(database_url, "-m", "worker", "--drain")
        assert await asyncio.wait_for(drain.wait(), 60) == 0
    assert (await status_counts(db)) == {"succeeded": 20}
    assert len(receiver.received) == 20


async def _check(database_url: str) -> int:
    check = await spawn(database_url, "-m", "worker", "--check", stdout=asyncio.subprocess.DEVNULL)
    return await asyncio.wait_for(check.wait(), 30)


async def _at_least(receiver: Receiver, count: int) -> bool:
    return len(receiver.received) >= count


async def _arrived(receiver: Receiver, count: int) -> bool:
    return len(receiver.arrived) >= count


async def test_a_dead_recorder_stops_the_worker_instead_of_hanging(
    db: Database, database_url: str, make_project: MakeProject
) -> None:
    async with serving(Receiver()) as receiver:
        project, _ = await webhook_project(db, make_project, receiver, "prod")
        # Recording attempts fails for good (a bug, not an outage): the recorder dies.
        await refuse_inserts(db, "webhook_attempts")
        await emit_events(db, project, 60)
        worker = Worker(
            PlatformSettings(database_url=database_url),
            worker_settings(batch_size=10, concurrency=5),
        )
        assert await asyncio.wait_for(worker.run(asyncio.Event()), 30) == 1
    assert (await status_counts(db)) == {"pending": 60}


async def test_bad_settings_are_refused_with_a_clear_error(database_url: str) -> None:
    worker = await spawn(
        database_url,
        "-m",
        "worker",
        settings={"concurrency": 0},
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(worker.communicate(), 30)
    assert worker.returncode == 2
    assert "invalid settings" in stderr.decode()
    assert "concurrency" in stderr.decode()
