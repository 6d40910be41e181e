"""Every process through a real PgBouncer in transaction mode, as on Supabase's pooler: queries go
through the pooler with prepared statements off, LISTEN goes to the session URL.

- row level security stays per transaction: two users interleaved over ONE server connection
  never see each other's rows, and nothing of a user's transaction is left on the connection;
- the gateway authenticates keys through the pooler and still hears revocations;
- the worker delivers webhooks and suspends projects over their cap through the pooler;
- the console's API answers each user with their own projects over one server connection.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import aiohttp
import httpx
import psycopg
import pytest

from console.auth import Authenticator
from console.settings import ConsoleSettings
from shared import apikeys, projects
from shared.db import Database, is_transaction_pooler
from shared.errors import ParityError
from shared.users import User as AuthUser
from tests.conftest import MakeUser
from tests.console.conftest import TEST_SECRET, free_port_socket
from tests.gateway.conftest import (
    IssueKey,
    Upstream,
    bearer,
    http,
    issue_key,
    start_gateway_process,
    upstream,
    wait_until_listening,
)
from tests.ops.pgbouncer import Pooler, pgbouncer
from tests.worker.conftest import (
    MakeProject,
    Receiver,
    add_usage,
    emit_events,
    eventually,
    make_project,
    receiver,
    status_counts,
    stop_process,
    webhook_project,
    worker_env,
)

__all__ = ["http", "issue_key", "make_project", "receiver", "upstream"]  # fixtures used here

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def pooler(admin_url: str) -> Iterator[Pooler]:
    """PgBouncer in transaction mode with ONE server connection per database and user."""
    with pgbouncer(admin_url, pool_size=1) as running:
        yield running


def pooled_env(pooler: Pooler, database_url: str) -> dict[str, str]:
    """What a process on Supabase is given: the pooler for queries, the direct URL for LISTEN."""
    return {
        "DATABASE_URL": pooler.url(database_url),
        "DATABASE_SESSION_URL": database_url,
        "PARITY_DB_PREPARED_STATEMENTS": "false",
    }


async def _owned_project(db: Database, make_user: MakeUser, email: str) -> tuple[UUID, UUID]:
    user = await make_user(email)
    async with db.as_service() as conn:
        project = await projects.create_project(
            conn, name=f"{email}'s app", environment="prod", owner_id=user.id
        )
    return user.id, project.id


async def test_rls_transactions_of_two_users_interleave_over_one_server_connection(
    database_url: str, db: Database, make_user: MakeUser, pooler: Pooler
) -> None:
    alice, alices = await _owned_project(db, make_user, "alice@example.com")
    bob, bobs = await _owned_project(db, make_user, "bob@example.com")
    seen: list[tuple[UUID, int, str, set[UUID]]] = []

    async with Database(
        pooler.url(database_url), min_size=2, max_size=2, prepared_statements=False
    ) as pooled:

        async def as_user(user: UUID) -> None:
            async with pooled.as_user(user) as conn:
                cur = await conn.execute(
                    "select pg_backend_pid() as pid, current_user as role,"
                    " current_setting('request.jwt.claims', true)::json ->> 'sub' as sub"
                )
                row = await cur.fetchone()
                assert row is not None
                await asyncio.sleep(0.001)  # let the other user's transaction queue up
                visible = {p.id for p in await projects.list_projects(conn)}
                seen.append((user, row["pid"], row["sub"], visible))

        async def left_on_connection() -> dict[str, Any]:
            async with pooled._transaction() as conn:
                cur = await conn.execute(
                    "select pg_backend_pid() as pid, current_user as role,"
                    " coalesce(current_setting('request.jwt.claims', true), '') as claims"
                )
                row = await cur.fetchone()
                assert row is not None
                return dict(row)

        for _ in range(15):
            await asyncio.gather(as_user(alice), as_user(bob), as_user(alice), as_user(bob))
            leftover = await left_on_connection()
            assert leftover["role"] == "postgres"
            assert leftover["claims"] == ""

    assert len(seen) == 60
    assert {pid for _, pid, _, _ in seen} == {leftover["pid"]}, "one server connection for all"
    for user, _, sub, visible in seen:
        assert sub == str(user)
        assert visible == ({alices} if user == alice else {bobs})


async def test_prepared_statements_break_over_a_transaction_pooler(
    database_url: str, pooler: Pooler
) -> None:
    """Why the setting exists: psycopg's prepared statements, left on, collide between clients
    sharing a server connection."""
    async with Database(
        pooler.url(database_url), min_size=2, max_size=2, prepared_statements=True
    ) as pooled:

        async def query() -> None:
            async with pooled.as_service() as conn:
                await conn.execute("select count(*) from public.projects where name = %s", ("x",))

        with pytest.raises(ParityError, match="prepared statement"):
            for _ in range(10):
                await asyncio.gather(query(), query())


async def test_gateway_authenticates_through_the_pooler_and_hears_revocations(
    database_url: str,
    pooler: Pooler,
    upstream: Upstream,
    issue_key: IssueKey,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    keys = [await issue_key(env) for env in ("prod", "dev", "staging", "prod", "dev", "prod")]
    gateway = start_gateway_process(
        {
            **pooled_env(pooler, database_url),
            "GATEWAY_UPSTREAM_URL": upstream.url,
            # Far longer than the test: only the notification can end the cached key.
            "GATEWAY_KEY_CACHE_TTL_SECONDS": "600",
            "PARITY_DB_POOL_MAX_SIZE": "4",
        },
        tmp_path / "gateway.log",
    )
    try:
        url = await wait_until_listening(gateway)
        for _ in range(3):
            for key in keys:
                async with http.get(f"{url}/hello", headers=bearer(key.token)) as response:
                    assert response.status == 200, await response.text()

        async with (
            Database(database_url, min_size=1, max_size=1) as direct,
            direct.as_service() as conn,
        ):
            await apikeys.revoke_key(conn, keys[0].key_id)

        async def refused() -> bool:
            async with http.get(f"{url}/hello", headers=bearer(keys[0].token)) as response:
                return response.status == 401

        await eventually(refused, within=15, what="the revocation reaching the gateway")
        async with http.get(f"{url}/hello", headers=bearer(keys[1].token)) as response:
            assert response.status == 200
    finally:
        gateway.process.send_signal(signal.SIGTERM)
        gateway.process.wait(timeout=20)
    assert "prepared statement" not in gateway.log_file.read_text()


async def test_worker_delivers_and_sweeps_through_the_pooler(
    database_url: str,
    db: Database,
    pooler: Pooler,
    receiver: Receiver,
    make_project: MakeProject,
) -> None:
    project, _ = await webhook_project(db, make_project, receiver)
    deliveries = await emit_events(db, project, count=20)
    over_cap = await make_project("prod")
    now = datetime.now(UTC)
    await add_usage(db, over_cap, requests=120, request_cap=100, window_start=now)

    process = await asyncio.to_thread(
        subprocess.Popen,
        [sys.executable, "-m", "worker"],
        cwd=REPO_ROOT,
        env={**worker_env(database_url), **pooled_env(pooler, database_url)},
    )
    try:

        async def delivered() -> bool:
            return (await status_counts(db)).get("succeeded", 0) == len(deliveries)

        await eventually(delivered, within=60, what="every delivery through the pooler")

        async def suspended() -> bool:
            async with db.as_service() as conn:
                found = await projects.get_project(conn, over_cap)
            return bool(found.status == "suspended")

        await eventually(suspended, within=60, what="the sweep suspending the project")
        # A webhook emitted now still wakes the worker: LISTEN on the session connection.
        later = set(await emit_events(db, project, count=1)) - set(deliveries)
        assert len(later) == 1

        async def woken() -> bool:
            return (await status_counts(db)).get("succeeded", 0) == len(deliveries) + len(later)

        await eventually(woken, within=60, what="a later delivery")
    finally:
        code = await stop_process(process)
    assert code == 0
    assert sorted({r.webhook_id for r in receiver.received}) == sorted(
        str(d) for d in {*deliveries, *later}
    )
    assert not receiver.bad_signatures


def test_console_answers_each_user_over_one_server_connection(
    database_url: str, pooler: Pooler
) -> None:
    authenticator = Authenticator(ConsoleSettings(_env_file=None, jwt_secret=TEST_SECRET))
    headers: dict[str, dict[str, str]] = {}
    owned: dict[str, str] = {}
    with psycopg.connect(database_url, autocommit=True) as conn:
        for email in ("carol@example.com", "dave@example.com"):
            row = conn.execute(
                "insert into auth.users (email) values (%s) returning id", (email,)
            ).fetchone()
            assert row is not None
            project = conn.execute(
                "insert into public.projects (name, owner_id) values (%s, %s) returning id",
                (f"{email} app", row[0]),
            ).fetchone()
            assert project is not None
            owned[email] = str(project[0])
            token = authenticator.issue(AuthUser(id=row[0], email=email))
            headers[email] = {"Authorization": f"Bearer {token}"}

    with free_port_socket() as sock:
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONSOLE_", "PARITY_"))}
    process = subprocess.Popen(
        [sys.executable, "-m", "console", "--host", "127.0.0.1", "--port", str(port)],
        cwd=REPO_ROOT,
        env={**env, **pooled_env(pooler, database_url), "CONSOLE_JWT_SECRET": TEST_SECRET},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                httpx.get(f"{base}/healthz", timeout=2)
                break
            except httpx.TransportError:
                assert process.poll() is None
                time.sleep(0.05)
        with httpx.Client(base_url=base, timeout=10) as client:
            for _ in range(10):
                for email in owned:
                    answer = client.get("/api/v1/projects", headers=headers[email])
                    assert answer.status_code == 200, answer.text
                    assert [p["id"] for p in answer.json()] == [owned[email]], answer.text
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=20)
    assert "prepared statement" not in err.decode()


def test_prepared_statements_are_off_by_themselves_on_supabases_transaction_pooler() -> None:
    pooled = "postgresql://postgres.ref:pw@aws-0-eu-west-1.pooler.supabase.com:6543/postgres"
    assert is_transaction_pooler(pooled)
    assert is_transaction_pooler("host=pooler.example port=6543 dbname=postgres")
    assert not is_transaction_pooler(pooled.replace(":6543", ":5432"))
    assert not is_transaction_pooler("postgresql://postgres@localhost/postgres?host=/tmp")

    def connection_kwargs(db: Database) -> dict[str, Any]:
        kwargs = db.pool.kwargs
        assert isinstance(kwargs, dict)
        return kwargs

    assert connection_kwargs(Database(pooled))["prepare_threshold"] is None
    direct = Database(pooled.replace(":6543", ":5432"))
    assert "prepare_threshold" not in connection_kwargs(direct)
    assert "prepare_threshold" not in connection_kwargs(Database(pooled, prepared_statements=True))
