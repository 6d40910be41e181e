"""shared.db: transactions as a signed-in user run under RLS, as the service they see everything,
and database errors arrive as the project's own."""

from __future__ import annotations

import asyncio
from uuid import uuid4

import psycopg
import pytest

from shared import apikeys, projects
from shared.db import Database
from shared.errors import InvalidEnvironment, NotFound, PermissionDenied
from shared.keys import KeyKind
from tests.conftest import MakeUser


async def test_users_see_their_own_projects_only(db: Database, make_user: MakeUser) -> None:
    alice, bob = await make_user("alice@example.com"), await make_user("bob@example.com")
    async with db.as_user(alice.id) as conn:
        mine = await projects.create_project(conn, name="alice's", environment="dev")
    async with db.as_user(bob.id) as conn:
        await projects.create_project(conn, name="bob's")
        assert [p.name for p in await projects.list_projects(conn)] == ["bob's"]
        with pytest.raises(NotFound):
            await projects.get_project(conn, mine.id)
    async with db.as_service() as conn:
        assert {p.name for p in await projects.list_projects(conn)} == {"alice's", "bob's"}
    assert mine.owner_id == alice.id


async def test_role_and_claims_do_not_outlive_the_transaction(
    db: Database, make_user: MakeUser
) -> None:
    alice = await make_user("alice@example.com")
    async with db.as_user(alice.id) as conn:
        cur = await conn.execute("select current_user as role, auth.uid() as uid")
        assert await cur.fetchone() == {"role": "authenticated", "uid": alice.id}
    async with db.pool.connection() as conn:
        cur = await conn.execute("select current_user as role, auth.uid() as uid")
        row = await cur.fetchone()
        assert row is not None
        assert row["role"] != "authenticated"
        assert row["uid"] is None


async def test_service_settings_hold_for_their_transaction_only(db: Database) -> None:
    query = "select current_user as who, current_setting('work_mem') as work_mem"
    async with db.pool.connection() as conn:
        before = await (await conn.execute(query)).fetchone()
    async with db.as_service({"work_mem": "7MB"}) as conn:
        during = await (await conn.execute(query)).fetchone()
    async with db.pool.connection() as conn:
        after = await (await conn.execute(query)).fetchone()
    assert during == {"who": "service_role", "work_mem": "7MB"}
    assert before == after and before is not None and before["work_mem"] != "7MB"


async def test_a_pipelined_service_transaction_commits_as_a_whole_or_not_at_all(
    db: Database, make_user: MakeUser
) -> None:
    # One round trip: BEGIN with the role and settings, the block's statements and COMMIT go out
    # together; the cursors are read after the block. A statement that fails takes the others
    # with it, and its error is raised as the project's own.
    alice = await make_user("alice@example.com")
    query = "select current_user as who, current_setting('work_mem') as work_mem"
    insert = "insert into public.projects (name, owner_id) values (%s, %s) returning name"
    async with db.as_service_pipelined({"work_mem": "7MB"}) as conn:
        who = await conn.execute(query)
        made = await conn.execute(insert, ("kept", alice.id))
    assert await who.fetchone() == {"who": "service_role", "work_mem": "7MB"}
    assert await made.fetchone() == {"name": "kept"}

    with pytest.raises(NotFound):  # 23503: no such owner
        async with db.as_service_pipelined() as conn:
            await conn.execute(insert, ("undone", alice.id))
            await conn.execute(insert, ("orphan", uuid4()))
    async with db.pool.connection() as conn:
        names = await (await conn.execute("select name from public.projects")).fetchall()
        after = await (await conn.execute(query)).fetchone()
    assert [row["name"] for row in names] == ["kept"]
    assert after is not None and (after["who"], after["work_mem"]) != ("service_role", "7MB")


async def test_a_user_cannot_create_a_key_in_someone_elses_project(
    db: Database, make_user: MakeUser
) -> None:
    alice, bob = await make_user("alice@example.com"), await make_user("bob@example.com")
    async with db.as_user(alice.id) as conn:
        project = await projects.create_project(conn, name="alice's")
    with pytest.raises(NotFound):
        async with db.as_user(bob.id) as conn:
            await apikeys.create_key(conn, project.id, KeyKind.SECRET)
    with pytest.raises(PermissionDenied):
        async with db.as_user(alice.id) as conn:
            await conn.execute("select key_hash from public.api_keys")


async def test_invalid_environment_is_refused_before_the_database(
    db: Database, make_user: MakeUser
) -> None:
    alice = await make_user("alice@example.com")
    with pytest.raises(InvalidEnvironment, match="'production'"):
        async with db.as_user(alice.id) as conn:
            await projects.create_project(conn, name="x", environment="production")
    async with db.as_service() as conn:
        assert await projects.list_projects(conn) == []


async def test_a_connection_the_server_ended_is_replaced_before_it_is_handed_out(
    database_url: str,
) -> None:
    # The pool asks a connection only when its socket has something to read (the server's
    # goodbye): a terminated backend must still never reach a caller.
    async with Database(database_url, min_size=1, max_size=1) as db:
        async with db.as_service() as conn:
            cur = await conn.execute("select pg_backend_pid() as pid")
            first = await cur.fetchone()
        assert first is not None
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as admin:
            await admin.execute("select pg_terminate_backend(%s)", (first["pid"],))
            for _ in range(500):
                left = await admin.execute(
                    "select count(*) from pg_stat_activity where pid = %s", (first["pid"],)
                )
                gone = await left.fetchone()
                if gone is not None and gone[0] == 0:
                    break
                await asyncio.sleep(0.01)
        async with db.as_service() as conn:
            cur = await conn.execute("select pg_backend_pid() as pid, current_user as role")
            second = await cur.fetchone()
        assert second is not None
        assert second["pid"] != first["pid"] and second["role"] == "service_role"
