"""Worker test kit: a real HTTP receiver on loopback that verifies every signature, seeding
helpers (projects, endpoints, events, usage counters), and the worker in-process or as a process."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from aiohttp import web
from psycopg import sql
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from shared import projects
from shared.db import Database
from shared.settings import PlatformSettings
from tests.conftest import MakeUser
from worker.app import Worker
from worker.settings import WorkerSettings

REPO_ROOT = Path(__file__).resolve().parents[2]

# Tiny waits so retry schedules play out in a fraction of a second.
FAST: dict[str, Any] = {
    "allow_private_targets": True,
    "poll_interval_seconds": 0.05,
    "sweep_interval_seconds": 0.05,
    "heartbeat_interval_seconds": 0.1,
    "retry_schedule_seconds": [0.01, 0.02, 0.05],
    "retry_wait_base_seconds": 0.01,
    "unbounded_retry_wait_max_seconds": 0.05,
    "lease_seconds": 10.0,
    "request_timeout_seconds": 5.0,
    "shutdown_grace_seconds": 5.0,
    "concurrency": 20,
    "batch_size": 50,
}


HANGING_ENDPOINT_TIMEOUT = 2.0
BUSY_WITH_A_HANGING_ENDPOINT: dict[str, Any] = {
    "request_timeout_seconds": HANGING_ENDPOINT_TIMEOUT,
    "concurrency": 50,
    "batch_size": 200,
    "endpoint_concurrency": 4,
    "retry_schedule_seconds": [600.0],
    "poll_interval_seconds": 5.0,  # other webhooks must come by notification, not by polling
}
"""Worker settings of the fairness tests: a hanging endpoint's backlog times out 4 at a time."""


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


@dataclass(frozen=True)
class Received:
    webhook_id: str
    timestamp: int
    body: dict[str, Any]
    raw: bytes


Responder = Callable[["Receiver", Received], tuple[int, dict[str, str]]]


def always(status: int) -> Responder:
    return lambda receiver, received: (status, {})


@dataclass
class Receiver:
    """An aiohttp server on 127.0.0.1 that verifies each request with `Webhook.verify`."""

    secret: str = field(default_factory=new_secret)
    respond: Responder = field(default_factory=lambda: always(200))
    delay: float = 0.0
    received: list[Received] = field(default_factory=list)
    arrived: list[str] = field(default_factory=list)
    """webhook-ids in order of arrival, before any delay: what was in flight."""
    bad_signatures: list[str] = field(default_factory=list)
    url: str = ""
    started: asyncio.Event = field(default_factory=asyncio.Event)

    def count(self, webhook_id: str) -> int:
        return sum(1 for r in self.received if r.webhook_id == webhook_id)

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            body = Webhook(self.secret).verify(raw, dict(request.headers))
        except WebhookVerificationError as exc:
            self.bad_signatures.append(f"{request.headers.get('webhook-id')}: {exc}")
            return web.Response(status=400, text="bad signature")
        received = Received(
            webhook_id=request.headers["webhook-id"],
            timestamp=int(request.headers["webhook-timestamp"]),
            body=body,
            raw=raw,
        )
        self.arrived.append(received.webhook_id)
        self.started.set()
        if self.delay:
            await asyncio.sleep(self.delay)
        self.received.append(received)
        status, headers = self.respond(self, received)
        return web.Response(status=status, headers=headers, text=f"answer {status}")


@contextlib.asynccontextmanager
async def serving(
    receiver: Receiver,
    path: str = "/hook",
    *,
    hang_up_with_client: bool = False,
    port: int = 0,
) -> AsyncIterator[Receiver]:
    """`receiver` on loopback (on `port`, else a free one); with `hang_up_with_client`, a request
    whose client went away stops being handled (a receiver that never answers then ends with the
    test, not a minute on)."""
    app = web.Application()
    app.router.add_post(path, receiver.handle)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=hang_up_with_client)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    host, port = runner.addresses[0][:2]
    receiver.url = f"http://{host}:{port}{path}"
    try:
        yield receiver
    finally:
        await runner.cleanup()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with serving(Receiver()) as running:
        yield running


# Seeding ------------------------------------------------------------------------------------------

MakeProject = Callable[..., Awaitable[UUID]]


@pytest.fixture
def make_project(db: Database, make_user: MakeUser) -> MakeProject:
    async def make(environment: str = "prod", *, request_cap: int | None = None) -> UUID:
        owner = await make_user(f"{secrets.token_hex(4)}@example.com")
        async with db.as_service() as conn:
            project = await projects.create_project(
                conn, name=f"{environment} project", environment=environment, owner_id=owner.id
            )
            if request_cap is not None:
                await conn.execute(
                    "update public.projects set request_cap = %s where id = %s",
                    (request_cap, project.id),
                )
        return project.id

    return make


async def add_endpoint(db: Database, project_id: UUID, receiver: Receiver) -> UUID:
    async with db.as_service() as conn:
        cur = await conn.execute(
            "insert into public.webhook_endpoints (project_id, url, secret)"
            " values (%s, %s, %s) returning id",
            (project_id, receiver.url, receiver.secret),
        )
        row = await cur.fetchone()
    assert row is not None
    endpoint_id: UUID = row["id"]
    return endpoint_id


async def webhook_project(
    db: Database, make_project: MakeProject, receiver: Receiver, environment: str = "prod"
) -> tuple[UUID, UUID]:
    """A project of `environment` with one endpoint at `receiver`: (project id, endpoint id)."""
    project = await make_project(environment)
    return project, await add_endpoint(db, project, receiver)


async def emit_events(db: Database, project_id: UUID, count: int = 1) -> list[UUID]:
    """`count` events (fanned out to the project's endpoints by the trigger); their delivery ids."""
    async with db.as_service() as conn:
        await conn.execute(
            "insert into public.events (project_id, type, payload)"
            " select %s, 'test.ping', jsonb_build_object('n', g) from generate_series(1, %s) g",
            (project_id, count),
        )
        cur = await conn.execute(
            "select d.id from public.webhook_deliveries d where d.project_id = %s order by d.id",
            (project_id,),
        )
        return [row["id"] for row in await cur.fetchall()]


async def lease_to(db: Database, ids: list[UUID], worker_id: str, *, seconds: float = 60) -> None:
    """Lease `ids` to `worker_id` as a claim leaves them: leased for `seconds`, attempt counted."""
    async with db.as_service() as conn:
        await conn.execute(
            "update public.webhook_deliveries"
            " set leased_by = %s, lease_expires_at = now() + make_interval(secs => %s),"
            " attempts = attempts + 1 where id = any(%s)",
            (worker_id, seconds, ids),
        )


async def delivery_row(db: Database, delivery_id: UUID) -> dict[str, Any]:
    async with db.as_service() as conn:
        cur = await conn.execute(
            "select * from public.webhook_deliveries where id = %s", (delivery_id,)
        )
        row = await cur.fetchone()
    assert row is not None
    return dict(row)


async def delivery_status(db: Database, delivery_id: UUID) -> str:
    status: str = (await delivery_row(db, delivery_id))["status"]
    return status


async def attempt_rows(db: Database, delivery_id: UUID) -> list[dict[str, Any]]:
    async with db.as_service() as conn:
        cur = await conn.execute(
            "select * from public.webhook_attempts where delivery_id = %s order by attempt_number",
            (delivery_id,),
        )
        return [dict(row) for row in await cur.fetchall()]


async def status_counts(db: Database) -> dict[str, int]:
    async with db.as_service() as conn:
        cur = await conn.execute(
            "select status::text, count(*) as n from public.webhook_deliveries group by status"
        )
        return {row["status"]: row["n"] for row in await cur.fetchall()}


async def add_usage(
    db: Database, project_id: UUID, *, requests: int, request_cap: int, window_start: datetime
) -> None:
    """What the gateway's flusher leaves behind: a counter row with the effective cap copied."""
    async with db.as_service() as conn:
        await conn.execute(
            "insert into public.usage_counters (project_id, window_start, requests, request_cap)"
            " values (%s, %s, %s, %s)",
            (project_id, window_start, requests, request_cap),
        )


async def refuse_inserts(db: Database, table: str) -> None:
    """Make every insert into `public.<table>` fail (a stand-in for a bug, not an outage);
    `allow_inserts` undoes it."""
    async with db.as_service() as conn:
        await conn.execute("set role postgres")
        await conn.execute(
            sql.SQL(
                "create or replace function public.refuse_insert() returns trigger"
                " language plpgsql as $$ begin raise exception '% are refused', tg_table_name;"
                " end $$; create trigger refuse_insert before insert on {} for each row"
                " execute function public.refuse_insert()"
            ).format(sql.Identifier("public", table))
        )


async def allow_inserts(db: Database, table: str) -> None:
    async with db.as_service() as conn:
        await conn.execute("set role postgres")
        await conn.execute(
            sql.SQL("drop trigger refuse_insert on {}").format(sql.Identifier("public", table))
        )


async def eventually(
    check: Callable[[], Awaitable[bool]], *, within: float = 30.0, what: str = "condition"
) -> None:
    """Poll `check` until it holds; fail after `within` seconds (a bound, not a speed test)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await check():
        if loop.time() > deadline:
            pytest.fail(f"{what} did not happen within {within:g} s")
        await asyncio.sleep(0.05)


# Running the worker -------------------------------------------------------------------------------


def worker_settings(**overrides: Any) -> WorkerSettings:
    return WorkerSettings(**{**FAST, **overrides})


@contextlib.asynccontextmanager
async def running_worker(database_url: str, **overrides: Any) -> AsyncIterator[Worker]:
    """The worker in this event loop, stopped (gracefully) on leaving the block."""
    worker = Worker(PlatformSettings(database_url=database_url), worker_settings(**overrides))
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        yield worker
    finally:
        stop.set()
        assert await task == 0


async def drain(database_url: str, **overrides: Any) -> None:
    worker = Worker(PlatformSettings(database_url=database_url), worker_settings(**overrides))
    assert await worker.run(asyncio.Event(), drain=True) == 0


def worker_env(database_url: str, **overrides: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKER_")}
    env["DATABASE_URL"] = database_url
    for key, value in {**FAST, **overrides}.items():
        env[f"WORKER_{key.upper()}"] = json.dumps(value) if isinstance(value, list) else str(value)
    return env


async def spawn(
    database_url: str, *args: str, settings: dict[str, Any] | None = None, **kwargs: Any
) -> asyncio.subprocess.Process:
    """`python <args>` from the repository, on the test database with fast worker settings
    (and `settings` over them)."""
    env = worker_env(database_url, **(settings or {}))
    return await asyncio.create_subprocess_exec(
        sys.executable, *args, cwd=REPO_ROOT, env=env, **kwargs
    )


def start_worker_process(database_url: str, **overrides: Any) -> subprocess.Popen[bytes]:
    """`python -m worker` as a real process; its output goes to the test's captured stderr."""
    return subprocess.Popen(
        [sys.executable, "-m", "worker"],
        cwd=REPO_ROOT,
        env=worker_env(database_url, **overrides),
    )


async def stop_process(process: subprocess.Popen[bytes], *, within: float = 30.0) -> int:
    """SIGTERM, then wait (without blocking the loop, so receivers keep answering)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while process.poll() is None:
        if loop.time() > deadline:
            process.kill()
            pytest.fail(f"worker did not stop within {within:g} s of SIGTERM")
        await asyncio.sleep(0.05)
    return process.returncode


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Worker processes a test starts; any still running at the end are killed."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()
