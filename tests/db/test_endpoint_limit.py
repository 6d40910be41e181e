"""The cap on webhook endpoints per project (private.platform_limits, default 50), enforced by a
trigger for every writer, reached the way PostgREST reaches the database: a non-superuser login
role switching to `authenticated` (with the user's claims) or `service_role` per transaction."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import psycopg
import pytest

from shared import projects, webhooks
from shared.db import Database
from shared.errors import LimitReached, PermissionDenied
from tests.conftest import MakeUser
from tests.db.postgrest import authenticator

DEFAULT_LIMIT = 50


@pytest.fixture
def api_url(database_url: str) -> Iterator[str]:
    with authenticator(database_url) as url:
        yield url


@pytest.fixture
async def api(api_url: str) -> AsyncIterator[Database]:
    async with Database(api_url, min_size=1, max_size=3) as database:
        yield database


def set_limit(database_url: str, value: int) -> None:
    """What an operator does to change the limit."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "update private.platform_limits set value = %s"
            " where name = 'webhook_endpoints_per_project'",
            (value,),
        )


async def endpoint_count(db: Database, project_id: object) -> int:
    async with db.as_service() as conn:
        cur = await conn.execute(
            "select count(*) as n from public.webhook_endpoints where project_id = %s",
            (project_id,),
        )
        row = await cur.fetchone()
    assert row is not None
    count: int = row["n"]
    return count


async def test_a_project_takes_fifty_endpoints_and_the_fifty_first_is_refused(
    api: Database, make_user: MakeUser
) -> None:
    owner = await make_user("owner@example.com")
    async with api.as_user(owner.id) as conn:
        project = await projects.create_project(conn, name="hooks")
        other = await projects.create_project(conn, name="other hooks")
    for n in range(DEFAULT_LIMIT):
        async with api.as_user(owner.id) as conn:
            await webhooks.create_endpoint(conn, project.id, f"https://example.com/{n}")

    with pytest.raises(LimitReached) as refused:
        async with api.as_user(owner.id) as conn:
            await webhooks.create_endpoint(conn, project.id, "https://example.com/one-more")
    assert refused.value.message == (
        f"project {project.id} already has 50 webhook endpoints, the most a project may have (50)"
    )
    assert refused.value.hint is not None and "Delete an endpoint" in refused.value.hint
    # The platform is held to the same limit (an operator raises it instead).
    with pytest.raises(LimitReached):
        async with api.as_service() as conn:
            await webhooks.create_endpoint(conn, project.id, "https://example.com/platform")
    assert await endpoint_count(api, project.id) == DEFAULT_LIMIT

    # The limit is per project: the owner's other project is not affected, and a deleted
    # endpoint frees its place.
    async with api.as_user(owner.id) as conn:
        await webhooks.create_endpoint(conn, other.id, "https://example.com/other")
        first = (await webhooks.list_endpoints(conn, project.id))[0]
        await webhooks.delete_endpoint(conn, first.id)
    async with api.as_user(owner.id) as conn:
        await webhooks.create_endpoint(conn, project.id, "https://example.com/replacement")
    assert await endpoint_count(api, project.id) == DEFAULT_LIMIT


async def test_an_operator_changes_the_limit_and_existing_endpoints_stay(
    api: Database, database_url: str, make_user: MakeUser
) -> None:
    owner = await make_user("owner@example.com")
    async with api.as_user(owner.id) as conn:
        project = await projects.create_project(conn, name="hooks")
        spare = await projects.create_project(conn, name="spare")
        for n in range(3):
            await webhooks.create_endpoint(conn, project.id, f"https://example.com/{n}")
        moving = await webhooks.create_endpoint(conn, spare.id, "https://example.com/moving")

    set_limit(database_url, 2)  # below what the project has: it keeps them, adds none
    with pytest.raises(LimitReached, match=r"already has 3 webhook endpoints.*may have \(2\)"):
        async with api.as_user(owner.id) as conn:
            await webhooks.create_endpoint(conn, project.id, "https://example.com/x")
    # Moving an endpoint into a full project (the platform can write project_id) is refused too.
    with pytest.raises(LimitReached):
        async with api.as_service() as conn:
            await conn.execute(
                "update public.webhook_endpoints set project_id = %s where id = %s",
                (project.id, moving.endpoint.id),
            )
    assert await endpoint_count(api, project.id) == 3

    set_limit(database_url, 4)
    async with api.as_user(owner.id) as conn:
        await webhooks.create_endpoint(conn, project.id, "https://example.com/fourth")
    with pytest.raises(LimitReached, match=r"may have \(4\)"):
        async with api.as_user(owner.id) as conn:
            await webhooks.create_endpoint(conn, project.id, "https://example.com/fifth")
    assert await endpoint_count(api, project.id) == 4


async def test_owners_can_neither_read_nor_change_the_limit(
    api: Database, make_user: MakeUser
) -> None:
    owner = await make_user("owner@example.com")
    for statement in (
        "select value from private.platform_limits",
        "update private.platform_limits set value = 1000",
        "delete from private.platform_limits",
    ):
        with pytest.raises(PermissionDenied):
            async with api.as_user(owner.id) as conn:
                await conn.execute(statement)
    async with api.as_service() as conn:
        cur = await conn.execute(
            "select value from private.platform_limits where name = 'webhook_endpoints_per_project'"
        )
        assert await cur.fetchall() == [{"value": DEFAULT_LIMIT}]


async def test_two_endpoints_created_at_once_cannot_both_take_the_last_place(
    api: Database, database_url: str, make_user: MakeUser
) -> None:
    owner = await make_user("owner@example.com")
    async with api.as_user(owner.id) as conn:
        project = await projects.create_project(conn, name="hooks")
        await webhooks.create_endpoint(conn, project.id, "https://example.com/0")
    set_limit(database_url, 2)

    async def second(started: asyncio.Event) -> None:
        async with api.as_user(owner.id) as conn:
            started.set()
            await webhooks.create_endpoint(conn, project.id, "https://example.com/b")

    async with api.as_user(owner.id) as first:
        await webhooks.create_endpoint(first, project.id, "https://example.com/a")
        started = asyncio.Event()
        racing = asyncio.create_task(second(started))
        await started.wait()
        # The second insert waits for the first transaction's lock on the project row.
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as watch:
            for _ in range(500):
                cur = await watch.execute(
                    "select count(*) from pg_stat_activity"
                    " where datname = current_database() and wait_event_type = 'Lock'"
                )
                row = await cur.fetchone()
                if row is not None and row[0] > 0:
                    break
                await asyncio.sleep(0.01)
            else:
                pytest.fail("the second insert never waited for the first")
    # The first committed; the second counted after it.
    with pytest.raises(LimitReached):
        await racing
    assert await endpoint_count(api, project.id) == 2
