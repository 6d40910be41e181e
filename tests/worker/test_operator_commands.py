"""`parity suspensions lift` and `parity deliveries redeliver`, run as operators run them."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import pytest

from shared.db import Database
from tests.worker.conftest import (
    MakeProject,
    Receiver,
    add_usage,
    always,
    delivery_row,
    drain,
    emit_events,
    serving,
    spawn,
    webhook_project,
    worker_settings,
)
from worker.app import sweep
from worker.autosuspend import SUSPEND_REASON


async def parity(database_url: str, *args: str) -> tuple[int, str]:
    process = await spawn(
        database_url,
        "-m",
        "ops",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, output.decode()


async def test_lift_reactivates_a_suspended_project_and_records_who(
    db: Database, database_url: str, make_project: MakeProject
) -> None:
    project = await make_project("prod")
    await add_usage(
        db, project, requests=11, request_cap=10, window_start=datetime(2026, 4, 1, tzinfo=UTC)
    )
    await sweep(db, worker_settings())

    code, output = await parity(
        database_url, "suspensions", "lift", str(project), "--by", "alice", "--reason", "paid"
    )
    assert code == 0, output
    assert f"project {project}: it serves again" in output
    async with db.as_service() as conn:
        cur = await conn.execute(
            "select p.status, s.reason, s.lifted_by, s.lift_reason from public.projects p"
            " join public.suspensions s on s.project_id = p.id where p.id = %s",
            (project,),
        )
        row = await cur.fetchone()
    assert row == {
        "status": "active",
        "reason": SUSPEND_REASON,
        "lifted_by": "alice",
        "lift_reason": "paid",
    }

    code, output = await parity(database_url, "suspensions", "lift", str(project), "--by", "al")
    assert (code, output.strip()) == (1, f"error: project {project} is not suspended")


@pytest.mark.slow(15)
async def test_bad_input_gets_a_clear_error(database_url: str) -> None:
    code, output = await parity(database_url, "suspensions", "lift", "nope", "--by", "alice")
    assert code == 2 and "invalid UUID value: 'nope'" in output
    code, output = await parity(database_url, "suspensions", "lift", str(uuid.uuid4()))
    assert code == 2 and "--by" in output
    missing = uuid.uuid4()
    code, output = await parity(database_url, "deliveries", "redeliver", str(missing))
    assert (code, output.strip()) == (1, f"error: delivery {missing} not found")


async def test_redeliver_makes_an_exhausted_delivery_due_again(
    db: Database, database_url: str, make_project: MakeProject
) -> None:
    async with serving(Receiver(respond=always(500))) as receiver:
        project, _ = await webhook_project(db, make_project, receiver, "prod")
        [delivery_id] = await emit_events(db, project)
        await drain(database_url, retry_schedule_seconds=[60.0])

        code, output = await parity(database_url, "deliveries", "redeliver", str(delivery_id))
        assert (code, output.strip()) == (1, f"error: delivery {delivery_id} is already pending")

        async with db.as_service() as conn:  # as if its retries had run out
            await conn.execute(
                "update public.webhook_deliveries set status = 'exhausted', completed_at = now()"
                " where id = %s",
                (delivery_id,),
            )
        code, output = await parity(database_url, "deliveries", "redeliver", str(delivery_id))
        assert code == 0, output
        assert "is due again (after 1 attempts" in output
        receiver.respond = always(200)
        await drain(database_url)

    row = await delivery_row(db, delivery_id)
    assert (row["status"], row["attempts"], row["retry_base"]) == ("succeeded", 2, 1)
    assert [r.webhook_id for r in receiver.received] == [str(delivery_id)] * 2
