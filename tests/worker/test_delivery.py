"""US-007: webhook delivery with per-environment retries, against a real receiver on loopback."""

from __future__ import annotations

import asyncio
import functools
import random
import socket
from datetime import UTC, datetime, timedelta
from uuid import UUID

import psycopg
import pytest
from aiohttp import web

from shared import deliveries, webhooks
from shared.db import Database
from shared.errors import Conflict
from tests.worker.conftest import (
    MakeProject,
    Receiver,
    add_endpoint,
    always,
    attempt_rows,
    delivery_row,
    delivery_status,
    drain,
    emit_events,
    eventually,
    lease_to,
    running_worker,
    serving,
    webhook_project,
)
from worker import queue


async def test_a_delivery_is_signed_sent_once_and_logged(
    db: Database, database_url: str, make_project: MakeProject, receiver: Receiver
) -> None:
    project, _ = await webhook_project(db, make_project, receiver, "staging")
    [delivery_id] = await emit_events(db, project)

    await drain(database_url)

    assert receiver.bad_signatures == []
    [got] = receiver.received
    assert got.webhook_id == str(delivery_id)
    assert got.body["type"] == "test.ping"
    assert got.body["project_id"] == str(project)
    assert got.body["environment"] == "staging"
    assert got.body["data"] == {"n": 1}
    row = await delivery_row(db, delivery_id)
    assert (row["status"], row["attempts"], row["last_status_code"]) == ("succeeded", 1, 200)
    assert row["leased_by"] is None and row["completed_at"] is not None
    [attempt] = await attempt_rows(db, delivery_id)
    assert (attempt["attempt_number"], attempt["status_code"]) == (1, 200)
    assert attempt["response_body"] == "answer 200"
    assert attempt["error"] is None


def free_port_from(lowest: int) -> int:
    """A loopback port at least `lowest` that is free now (the kernel's own pick may be lower)."""
    for port in random.sample(range(lowest, 32768), 200):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError(f"no free port from {lowest}")


async def test_a_receiver_on_a_five_digit_port_gets_its_delivery(
    db: Database, database_url: str, make_project: MakeProject
) -> None:
    """The URL passes the parser the console uses, is stored, and the worker delivers to it."""
    project = await make_project("prod")
    async with serving(Receiver(), port=free_port_from(10_000)) as receiver:
        assert int(receiver.url.rsplit(":", 1)[1].split("/")[0]) >= 10_000
        async with db.as_service() as conn:
            created = await webhooks.create_endpoint(conn, project, receiver.url)
        assert created.endpoint.url == receiver.url
        receiver.secret = created.secret
        [delivery_id] = await emit_events(db, project)
        await drain(database_url)
    assert receiver.bad_signatures == []
    assert [r.webhook_id for r in receiver.received] == [str(delivery_id)]
    row = await delivery_row(db, delivery_id)
    assert (row["status"], row["last_status_code"]) == ("succeeded", 200)


async def retry_until_final(
    db: Database, database_url: str, make_project: MakeProject, environment: str, status: int
) -> tuple[Receiver, dict[str, object], list[dict[str, object]]]:
    async with serving(Receiver(respond=always(status))) as receiver:
        project, _ = await webhook_project(db, make_project, receiver, environment)
        [delivery_id] = await emit_events(db, project)

        async def final() -> bool:
            return await delivery_status(db, delivery_id) != "pending"

        async with running_worker(database_url):
            await eventually(final, what=f"{environment} delivery leaving pending")
        return receiver, await delivery_row(db, delivery_id), await attempt_rows(db, delivery_id)


async def test_prod_makes_exactly_four_attempts_then_exhausts(
    db: Database, database_url: str, make_project: MakeProject
) -> None:
    receiver, row, attempts = await retry_until_final(db, database_url, make_project, "prod", 500)
    assert (row["status"], row["attempts"], row["last_status_code"]) == ("exhausted", 4, 500)
    assert [a["attempt_number"] for a in attempts] == [1, 2, 3, 4]
    assert all(a["status_code"] == 500 for a in attempts)
    assert all(a["error"] == "the receiver answered 500" for a in attempts)
    assert len(receiver.received) == 4
    assert {r.webhook_id for r in receiver.received} == {str(row["id"])}
    assert len({r.raw for r in receiver.received}) == 1  # the same bytes every time
    assert receiver.bad_signatures == []


async def test_staging_makes_exactly_six_attempts_then_exhausts(
    db: Database, database_url: str, make_project: MakeProject
) -> None:
    receiver, row, attempts = await retry_until_final(
        db, database_url, make_project, "staging", 503
    )
    assert (row["status"], row["attempts"]) == ("exhausted", 6)
    assert len(attempts) == len(receiver.received) == 6
    assert receiver.bad_signatures == []


async def test_dev_retries_past_twenty_attempts_and_succeeds_when_the_receiver_recovers(
    db: Database, database_url: str, make_project: MakeProject
) -> None:
    def recovers_after_25(receiver: Receiver, _: object) -> tuple[int, dict[str, str]]:
        return (500 if len(receiver.received) <= 25 else 200), {}

    async with serving(Receiver(respond=recovers_after_25)) as receiver:
        project, _ = await webhook_project(db, make_project, receiver, "dev")
        [delivery_id] = await emit_events(db, project)

        async def succeeded() -> bool:
            return await delivery_status(db, delivery_id) == "succeeded"

        async with running_worker(database_url):
            await eventually(succeeded, what="dev delivery succeeding")

    row = await delivery_row(db, delivery_id)
    assert row["attempts"] == 26
    attempts = await attempt_rows(db, delivery_id)
    assert [a["attempt_number"] for a in attempts] == list(range(1, 27))
    assert [a["status_code"] for a in attempts] == [500] * 25 + [200]
    assert receiver.bad_signatures == []
    assert {r.webhook_id for r in receiver.received} == {str(delivery_id)}


async def test_a_redirect_is_a_failure_and_is_not_followed(
    db: Database, database_url: str, make_project: MakeProject, receiver: Receiver
) -> None:
    receiver.respond = lambda r, _: (302, {"location": "http://example.com/elsewhere"})
    project, _ = await webhook_project(db, make_project, receiver, "prod")
    [delivery_id] = await emit_events(db, project)

    await drain(database_url, retry_schedule_seconds=[60.0])

    row = await delivery_row(db, delivery_id)
    assert (row["status"], row["attempts"], row["last_status_code"]) == ("pending", 1, 302)
    assert "redirect to 'http://example.com/elsewhere' not followed" in row["last_error"]
    assert len(receiver.received) == 1


async def test_410_disables_the_endpoint_and_cancels_its_pending_deliveries(
    db: Database, database_url: str, make_project: MakeProject, receiver: Receiver
) -> None:
    receiver.respond = always(410)
    project, endpoint = await webhook_project(db, make_project, receiver, "prod")
    ids = await emit_events(db, project, 5)

    await drain(database_url, concurrency=1, batch_size=1)

    async with db.as_service() as conn:
        cur = await conn.execute(
            "select enabled, disabled_reason from public.webhook_endpoints where id = %s",
            (endpoint,),
        )
        endpoint_row = await cur.fetchone()
    assert endpoint_row == {"enabled": False, "disabled_reason": "the receiver answered 410 Gone"}
    rows = [await delivery_row(db, i) for i in ids]
    assert {r["status"] for r in rows} == {"cancelled"}
    assert sum(r["attempts"] for r in rows) == len(receiver.received) == 1
    # New events no longer fan out to the disabled endpoint.
    assert len(await emit_events(db, project)) == 5


async def test_no_delivery_is_claimed_for_an_endpoint_whose_410_is_being_recorded(
    db: Database, database_url: str, make_project: MakeProject, receiver: Receiver
) -> None:
    # The record that disables the endpoint is held back by a lock on the endpoint's row (as any
    # slow commit would hold it); a claim meanwhile must not hand out the endpoint's next delivery,
    # and only that endpoint is left out: another project's webhook goes out meanwhile.
    receiver.respond = always(410)
    project, endpoint = await webhook_project(db, make_project, receiver, "prod")
    ids = await emit_events(db, project, 3)
    async with (
        serving(Receiver()) as other,
        await psycopg.AsyncConnection.connect(database_url) as blocker,
    ):
        other_project, _ = await webhook_project(db, make_project, other, "prod")
        await blocker.execute(
            "select 1 from public.webhook_endpoints where id = %s for update", (endpoint,)
        )
        draining = asyncio.create_task(drain(database_url, concurrency=1, batch_size=1))
        await eventually(lambda: _arrived(receiver, 1), within=10, what="the first attempt")
        await emit_events(db, other_project, 1)
        await eventually(lambda: _arrived(other, 1), within=5, what="the other project's webhook")
        await asyncio.sleep(0.5)
        await blocker.rollback()
        await draining

    assert len(receiver.received) == 1
    rows = [await delivery_row(db, i) for i in ids]
    assert {r["status"] for r in rows} == {"cancelled"}
    assert sum(r["attempts"] for r in rows) == 1


async def _arrived(receiver: Receiver, count: int) -> bool:
    return len(receiver.received) >= count


async def test_retry_after_is_honoured_within_bounds(
    db: Database, database_url: str, make_project: MakeProject, receiver: Receiver
) -> None:
    receiver.respond = lambda r, _: (429, {"retry-after": "120"})
    project, _ = await webhook_project(db, make_project, receiver, "prod")
    [first] = await emit_events(db, project)

    await drain(database_url, retry_after_max_seconds=30)

    row = await delivery_row(db, first)
    [attempt] = await attempt_rows(db, first)
    wait = row["next_attempt_at"] - attempt["started_at"]
    # Asked for 120 s, bounded to 30 s; far above the policy's own 0.01 s.
    assert timedelta(seconds=29) < wait < timedelta(seconds=35)


async def test_private_targets_are_refused_unless_allowed(
    db: Database, database_url: str, make_project: MakeProject, receiver: Receiver
) -> None:
    project, _ = await webhook_project(db, make_project, receiver, "prod")
    [delivery_id] = await emit_events(db, project)

    await drain(database_url, allow_private_targets=False, retry_schedule_seconds=[60.0])

    assert receiver.received == []
    row = await delivery_row(db, delivery_id)
    assert (row["status"], row["attempts"], row["last_status_code"]) == ("pending", 1, None)
    assert "127.0.0.1 is a loopback address" in row["last_error"]
    assert "WORKER_ALLOW_PRIVATE_TARGETS" in row["last_error"]


async def test_a_hostname_resolving_to_loopback_is_refused(
    db: Database, database_url: str, make_project: MakeProject, receiver: Receiver
) -> None:
    project = await make_project("prod")
    receiver.url = receiver.url.replace("127.0.0.1", "localhost")
    await add_endpoint(db, project, receiver)
    [delivery_id] = await emit_events(db, project)

    await drain(database_url, allow_private_targets=False, retry_schedule_seconds=[60.0])

    assert receiver.received == []
    row = await delivery_row(db, delivery_id)
    assert "target localhost refused" in row["last_error"]
    assert "loopback address" in row["last_error"]


async def test_an_exhausted_delivery_redelivered_gets_a_fresh_retry_budget(
    db: Database, database_url: str, make_project: MakeProject
) -> None:
    async with serving(Receiver(respond=always(500))) as receiver:
        project, _ = await webhook_project(db, make_project, receiver, "prod")
        [delivery_id] = await emit_events(db, project)

        async def status_is(expected: str) -> bool:
            return await delivery_status(db, delivery_id) == expected

        async with running_worker(database_url):
            await eventually(lambda: status_is("exhausted"), what="first exhaustion")
            async with db.as_service() as conn:
                redelivered = await deliveries.redeliver(conn, delivery_id)
            assert (redelivered.status, redelivered.retry_base) == ("pending", 4)
            await eventually(lambda: status_is("exhausted"), what="second exhaustion")

    row = await delivery_row(db, delivery_id)
    assert (row["attempts"], row["retry_base"]) == (8, 4)
    assert [a["attempt_number"] for a in await attempt_rows(db, delivery_id)] == list(range(1, 9))
    assert {r.webhook_id for r in receiver.received} == {str(delivery_id)}


async def test_a_worker_that_lost_its_lease_steers_nothing_but_its_attempt_is_logged(
    db: Database, make_project: MakeProject, receiver: Receiver
) -> None:
    project, _ = await webhook_project(db, make_project, receiver, "prod")
    [delivery_id] = await emit_events(db, project)
    budgets = queue.Budgets.from_config()
    claim = functools.partial(queue.claim, per_endpoint=4, held=[], budgets=budgets, limit=10)
    async with db.as_service() as conn:
        [claimed] = await claim(conn, worker_id="a", lease_seconds=0.001)
    async with db.as_service() as conn:  # a's lease has passed, its attempt never recorded
        assert await claim(conn, worker_id="b", lease_seconds=60) == []  # not before settling
        settled = await queue.settle_lost(conn, held=[], budgets=budgets)
        assert settled == {delivery_id: "pending"}
        [again] = await claim(conn, worker_id="b", lease_seconds=60)
        assert again.id == claimed.id and again.attempts == 1
        assert await claim(conn, worker_id="c", lease_seconds=60) == []

    def result(outcome: queue.Outcome, number: int) -> queue.AttemptResult:
        return queue.AttemptResult(
            delivery_id=delivery_id,
            endpoint_id=claimed.endpoint_id,
            attempt_number=number,
            outcome=outcome,
            delay_seconds=0,
            started_at=datetime.now(UTC),
            duration_ms=1,
            status_code=200 if outcome == "succeeded" else 500,
            response_body="",
            error=None,
        )

    async with db.as_service() as conn:
        # a's attempt 1 was already logged as "outcome unknown" when b settled it.
        assert await queue.record(conn, [result("succeeded", 1)], worker_id="a") == queue.Recorded(
            set(), set()
        )
        done = await queue.record(conn, [result("pending", 2)], worker_id="b")
        assert done == queue.Recorded({delivery_id}, {delivery_id})
        # A replay of the same result (same attempt number) changes nothing.
        assert await queue.record(conn, [result("succeeded", 2)], worker_id="b") == queue.Recorded(
            set(), set()
        )
    row = await delivery_row(db, delivery_id)
    assert (row["status"], row["attempts"], row["last_status_code"]) == ("pending", 2, 500)
    attempts = await attempt_rows(db, delivery_id)
    assert [a["attempt_number"] for a in attempts] == [1, 2]
    assert "outcome unknown: worker a stopped" in attempts[0]["error"]
    assert attempts[1]["status_code"] == 500


async def test_a_hostile_response_body_is_stored_truncated_and_cleaned(
    db: Database, database_url: str, make_project: MakeProject
) -> None:
    class NulReceiver(Receiver):
        async def handle(self, request: web.Request) -> web.Response:
            await super().handle(request)
            return web.Response(status=500, body=b"bad\x00" + b"x" * 10_000)

    async with serving(NulReceiver()) as receiver:
        project, _ = await webhook_project(db, make_project, receiver, "prod")
        [delivery_id] = await emit_events(db, project)
        await drain(database_url, retry_schedule_seconds=[60.0], response_body_limit=100)

    [attempt] = await attempt_rows(db, delivery_id)
    assert attempt["status_code"] == 500
    assert attempt["response_body"] == "bad\ufffd" + "x" * 96


async def test_deliveries_of_an_endpoint_disabled_by_its_owner_are_cancelled_unsent(
    db: Database, database_url: str, make_project: MakeProject, receiver: Receiver
) -> None:
    project, endpoint = await webhook_project(db, make_project, receiver, "dev")
    ids = await emit_events(db, project, 3)
    async with db.as_service() as conn:
        await conn.execute(
            "update public.webhook_endpoints set enabled = false where id = %s", (endpoint,)
        )

    await drain(database_url)

    assert receiver.received == []
    for delivery_id in ids:
        row = await delivery_row(db, delivery_id)
        assert (row["status"], row["attempts"], row["leased_by"]) == ("cancelled", 0, None)
        assert row["last_error"] == "endpoint disabled"


async def test_a_delivery_of_a_disabled_endpoint_is_not_redelivered_until_enabled(
    db: Database, database_url: str, make_project: MakeProject, receiver: Receiver
) -> None:
    project, endpoint = await webhook_project(db, make_project, receiver, "prod")
    [delivery_id] = await emit_events(db, project)
    async with db.as_service() as conn:
        await conn.execute(
            "update public.webhook_endpoints set enabled = false where id = %s", (endpoint,)
        )
    with pytest.raises(Conflict, match="is disabled: enable it, then redeliver"):
        async with db.as_service() as conn:
            await deliveries.redeliver(conn, delivery_id)
    await drain(database_url)
    assert receiver.received == []
    assert (await delivery_row(db, delivery_id))["status"] == "cancelled"

    async with db.as_service() as conn:
        await conn.execute(
            "update public.webhook_endpoints set enabled = true where id = %s", (endpoint,)
        )
        await deliveries.redeliver(conn, delivery_id)
    await drain(database_url)
    assert [r.webhook_id for r in receiver.received] == [str(delivery_id)]
    assert (await delivery_row(db, delivery_id))["status"] == "succeeded"


async def test_a_batch_records_each_attempt_once_whatever_it_repeats_or_arrives_late(
    db: Database, make_project: MakeProject, receiver: Receiver
) -> None:
    # One statement records a whole batch, still guarded by lease and attempt number: a result
    # repeated within the batch, a replay of it in a later batch and a late result of an attempt
    # the delivery has moved past are each written at most once and steer nothing twice.
    project, _ = await webhook_project(db, make_project, receiver, "prod")
    first, second = await emit_events(db, project, 2)
    budgets = queue.Budgets.from_config()
    async with db.as_service() as conn:
        claimed = await queue.claim(
            conn,
            worker_id="w",
            limit=10,
            lease_seconds=60,
            per_endpoint=4,
            held=[],
            budgets=budgets,
        )
    assert {c.id for c in claimed} == {first, second}
    endpoint = claimed[0].endpoint_id

    def result(delivery_id: UUID, number: int, outcome: queue.Outcome) -> queue.AttemptResult:
        return queue.AttemptResult(
            delivery_id=delivery_id,
            endpoint_id=endpoint,
            attempt_number=number,
            outcome=outcome,
            delay_seconds=30,
            started_at=datetime.now(UTC),
            duration_ms=1,
            status_code=204 if outcome == "succeeded" else 500,
            response_body="",
            error=None,
        )

    batch = [
        result(first, 1, "succeeded"),
        result(first, 1, "succeeded"),
        result(second, 1, "pending"),
    ]
    async with db.as_service() as conn:
        done = await queue.record(conn, batch, worker_id="w")
    assert done == queue.Recorded({first, second}, {first, second})
    async with db.as_service() as conn:
        # The same batch again, and a late result of attempt 1 after the delivery moved on.
        again = await queue.record(conn, [*batch, result(second, 1, "succeeded")], worker_id="w")
    assert again == queue.Recorded(set(), set())

    assert [a["attempt_number"] for a in await attempt_rows(db, first)] == [1]
    assert [a["attempt_number"] for a in await attempt_rows(db, second)] == [1]
    first_row, second_row = await delivery_row(db, first), await delivery_row(db, second)
    assert (first_row["status"], first_row["attempts"]) == ("succeeded", 1)
    assert (second_row["status"], second_row["attempts"], second_row["leased_by"]) == (
        "pending",
        1,
        None,
    )


async def test_leases_a_worker_does_not_know_of_are_released_without_waiting(
    db: Database, database_url: str, make_project: MakeProject, receiver: Receiver
) -> None:
    # After a claim whose answer was lost, the next claim releases the leases under the worker's
    # name that it does not hold. In the claim's transaction, it never waits for a row another
    # transaction has locked: that one is skipped, and keeps its lease until it runs out.
    project, _ = await webhook_project(db, make_project, receiver, "prod")
    ids = sorted(await emit_events(db, project, 5))
    await lease_to(db, ids, "w")
    async with await psycopg.AsyncConnection.connect(database_url) as holder:
        await holder.execute(
            "select from public.webhook_deliveries where id = %s for update", (ids[0],)
        )
        async with asyncio.timeout(5), db.as_service() as conn:
            released = await queue.release_unheld(conn, held=[ids[1]], worker_id="w")
    assert released == set(ids[2:])
    rows = [await delivery_row(db, i) for i in ids]
    assert [(r["leased_by"], r["attempts"]) for r in rows] == [("w", 1), ("w", 1)] + [(None, 0)] * 3


@pytest.mark.parametrize("statement", ["record", "renew", "release"])
async def test_held_deliveries_are_locked_in_id_order_so_records_and_renewals_never_deadlock(
    db: Database, make_project: MakeProject, receiver: Receiver, statement: str
) -> None:
    # A renewal of everything a worker holds runs beside records of parts of it. Each statement
    # locks its rows in id order: one waiting for the lowest row holds none of the others
    # meanwhile (locked in the order results finished, or in the order rows lie on disk, two such
    # statements deadlocked now and then, and Postgres cancelled one).
    project, endpoint = await webhook_project(db, make_project, receiver, "prod")
    ids = await emit_events(db, project, 300)
    await lease_to(db, ids, "w")
    lowest, others = min(ids), sorted(ids)[1:]
    backwards = sorted(ids, reverse=True)

    async def run() -> None:
        async with db.as_service() as conn:
            if statement == "record":
                results = [
                    queue.AttemptResult(
                        delivery_id=i,
                        endpoint_id=endpoint,
                        attempt_number=1,
                        outcome="succeeded",
                        delay_seconds=0,
                        started_at=datetime.now(UTC),
                        duration_ms=1,
                        status_code=204,
                        response_body="",
                        error=None,
                    )
                    for i in backwards
                ]
                await queue.record(conn, results, worker_id="w")
            elif statement == "renew":
                await queue.renew(conn, backwards, worker_id="w", lease_seconds=60)
            else:
                await queue.release(conn, backwards, worker_id="w")

    async with db.as_service() as holder:
        await holder.execute(
            "select from public.webhook_deliveries where id = %s for update", (lowest,)
        )
        task = asyncio.create_task(run())

        async def waiting() -> bool:
            if task.done():
                task.result()  # it must wait, not finish
            async with db.as_service() as conn:
                # Row lock waits of this database's sessions (their queries are not ours to read).
                cur = await conn.execute(
                    "select count(*) as n from pg_locks where not granted and pid in"
                    " (select pid from pg_stat_activity where datname = current_database())"
                )
                row = await cur.fetchone()
            return row is not None and row["n"] > 0

        await eventually(waiting, what=f"the {statement} waiting for the lowest row")
        async with db.as_service() as probe:
            cur = await probe.execute(
                "select count(*) as n from (select from public.webhook_deliveries"
                " where id = any(%s) for update skip locked) as free",
                (others,),
            )
            row = await cur.fetchone()
        assert row is not None and row["n"] == len(others), "rows past the lowest were locked"
    await task
