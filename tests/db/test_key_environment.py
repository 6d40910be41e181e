"""US-002 at write time: the database refuses keys whose environment differs from the project's."""

from __future__ import annotations

import pytest

from shared import apikeys, projects
from shared.db import Database
from shared.environment import Environment
from shared.errors import EnvironmentLocked, EnvironmentMismatch
from shared.keys import KeyKind, generate_token
from tests.conftest import MakeUser


async def insert_raw_key(db: Database, project_id: object, environment: str) -> None:
    token = generate_token(Environment(environment), KeyKind.SECRET)
    async with db.as_service() as conn:
        await conn.execute(
            "insert into public.api_keys"
            " (project_id, kind, environment, prefix, last_four, key_hash)"
            " values (%s, 'sk', %s, %s, %s, %s)",
            (project_id, environment, token.prefix, token.last_four, token.hash),
        )


async def test_dev_key_on_prod_project_is_rejected_naming_both(
    db: Database, make_user: MakeUser
) -> None:
    owner = await make_user("a@example.com")
    async with db.as_service() as conn:
        project = await projects.create_project(conn, name="shop", owner_id=owner.id)
    with pytest.raises(EnvironmentMismatch) as info:
        await insert_raw_key(db, project.id, "dev")
    assert "API key environment dev does not match project environment prod" in str(info.value)
    assert info.value.hint == "Create the key with environment prod."
    async with db.as_service() as conn:
        assert await apikeys.list_keys(conn, project.id) == []


async def test_updates_into_a_mismatch_are_rejected(db: Database, make_user: MakeUser) -> None:
    owner = await make_user("a@example.com")
    async with db.as_service() as conn:
        prod = await projects.create_project(conn, name="p", owner_id=owner.id)
        dev = await projects.create_project(conn, name="d", environment="dev", owner_id=owner.id)
        issued = await apikeys.create_key(conn, prod.id, KeyKind.SECRET)
    with pytest.raises(EnvironmentMismatch, match=r"environment staging does not match .* prod"):
        async with db.as_service() as conn:
            await conn.execute(
                "update public.api_keys set environment = 'staging' where id = %s",
                (issued.key.id,),
            )
    with pytest.raises(EnvironmentMismatch, match=r"environment prod does not match .* dev"):
        async with db.as_service() as conn:
            await conn.execute(
                "update public.api_keys set project_id = %s where id = %s",
                (dev.id, issued.key.id),
            )
    async with db.as_service() as conn:
        key = await apikeys.get_key(conn, issued.key.id)
    assert (key.project_id, key.environment) == (prod.id, Environment.PROD)


async def test_project_environment_is_locked_while_keys_are_active(
    db: Database, make_user: MakeUser
) -> None:
    owner = await make_user("a@example.com")
    async with db.as_service() as conn:
        project = await projects.create_project(conn, name="p", owner_id=owner.id)
        first = await apikeys.create_key(conn, project.id, KeyKind.SECRET)
        await apikeys.create_key(conn, project.id, KeyKind.PUBLISHABLE)
    with pytest.raises(EnvironmentLocked) as info:
        async with db.as_service() as conn:
            await projects.change_environment(conn, project.id, "dev")
    assert "from prod to dev while it has 2 active API keys" in str(info.value)

    async with db.as_service() as conn:
        for key in await apikeys.list_keys(conn, project.id):
            await apikeys.revoke_key(conn, key.id)
        moved = await projects.change_environment(conn, project.id, "dev")
        assert moved.environment is Environment.DEV
        # A revoked key of the old environment cannot be brought back to life.
    with pytest.raises(EnvironmentMismatch):
        async with db.as_service() as conn:
            await conn.execute(
                "update public.api_keys set status = 'active', revoked_at = null where id = %s",
                (first.key.id,),
            )
    async with db.as_service() as conn:
        fresh = await apikeys.create_key(conn, project.id, KeyKind.SECRET)
    assert fresh.token.startswith("nm_dev_sk_")
