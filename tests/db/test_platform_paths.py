"""The paths the product itself takes through the database rules, as the console (signed-in user),
the operator commands and the worker (service) take them: issuing, rotating and revoking keys,
redelivering, and disabling and enabling endpoints."""

from __future__ import annotations

from datetime import timedelta

import pytest

from ops.demo import seed_demo
from shared import apikeys, projects, webhooks
from shared.db import Database
from shared.errors import Conflict, InvalidInput, PermissionDenied
from shared.keys import KeyKind, parse_token
from tests.conftest import MakeUser
from worker import queue


async def test_an_owner_issues_rotates_and_revokes_through_the_platform(
    db: Database, make_user: MakeUser
) -> None:
    owner = await make_user("owner@example.com")
    async with db.as_user(owner.id) as conn:
        project = await projects.create_project(conn, name="shop", environment="staging")
        issued = await apikeys.create_key(conn, project.id, KeyKind.PUBLISHABLE, name=" web ")
        parsed = parse_token(issued.token)
        assert (parsed.environment, parsed.kind) == (project.environment, KeyKind.PUBLISHABLE)
        assert (issued.key.prefix, issued.key.name) == ("nm_staging_pk_", "web")
        assert issued.key.last_four == issued.token[-4:]

        rotated = await apikeys.rotate_key(conn, issued.key.id, grace=timedelta(hours=1))
        old = await apikeys.get_key(conn, issued.key.id)
        assert old.status == "active" and old.expires_at is not None
        assert rotated.key.kind == KeyKind.PUBLISHABLE and rotated.key.expires_at is None

        again = await apikeys.rotate_key(conn, rotated.key.id, grace=timedelta(0))
        revoked = await apikeys.get_key(conn, rotated.key.id)
        assert revoked.status == "revoked" and revoked.revoked_at is not None
        assert again.key.status == "active"
        # Revoking twice changes nothing.
        assert (await apikeys.revoke_key(conn, revoked.id)).revoked_at == revoked.revoked_at

    # A key whose grace period has run out is not rotated again: its replacement would be born
    # expired.
    async with db.as_user(owner.id) as conn:
        short = await apikeys.rotate_key(conn, again.key.id, grace=timedelta(microseconds=1))
    with pytest.raises(Conflict, match="has expired: issue a new key instead"):
        async with db.as_user(owner.id) as conn:
            await apikeys.rotate_key(conn, again.key.id, grace=timedelta(hours=1))
    assert short.key.status == "active"

    with pytest.raises(InvalidInput, match="is revoked, and revocation is final"):
        async with db.as_user(owner.id) as conn:
            await conn.execute(
                "update public.api_keys set status = 'active' where id = %s", (revoked.id,)
            )
    with pytest.raises(InvalidInput, match="can only be set or moved earlier, not removed"):
        async with db.as_user(owner.id) as conn:
            await conn.execute(
                "update public.api_keys set expires_at = null where id = %s", (old.id,)
            )
    # Not even the platform reactivates a key: revocation is final.
    with pytest.raises(InvalidInput, match="revocation is final"):
        async with db.as_service() as conn:
            await conn.execute(
                "update public.api_keys set status = 'active', revoked_at = null where id = %s",
                (revoked.id,),
            )


async def test_who_disabled_an_endpoint_decides_who_may_enable_it(
    db: Database, make_user: MakeUser
) -> None:
    owner = await make_user("owner@example.com")
    async with db.as_user(owner.id) as conn:
        project = await projects.create_project(conn, name="hooks")
        by_receiver = await webhooks.create_endpoint(conn, project.id, "https://example.com/a")
        by_operator = await webhooks.create_endpoint(conn, project.id, "https://example.com/b")
        by_owner = await webhooks.create_endpoint(conn, project.id, "https://example.com/c")
        await webhooks.set_enabled(conn, by_owner.endpoint.id, False)
    async with db.as_service() as conn:
        # The worker after a 410 Gone; then an operator, who names nobody.
        await queue.disable_endpoint(conn, by_receiver.endpoint.id, reason="410 Gone")
        await conn.execute(
            "update public.webhook_endpoints set enabled = false, disabled_reason = 'abuse'"
            " where id = %s",
            (by_operator.endpoint.id,),
        )
        cur = await conn.execute(
            "select url, disabled_by::text from public.webhook_endpoints order by url"
        )
        assert [tuple(row.values()) for row in await cur.fetchall()] == [
            ("https://example.com/a", "receiver"),
            ("https://example.com/b", "operator"),
            ("https://example.com/c", "owner"),
        ]

    async with db.as_user(owner.id) as conn:
        assert (await webhooks.set_enabled(conn, by_owner.endpoint.id, True)).enabled
        assert (await webhooks.set_enabled(conn, by_receiver.endpoint.id, True)).enabled
    with pytest.raises(PermissionDenied, match="disabled by an operator"):
        async with db.as_user(owner.id) as conn:
            await webhooks.set_enabled(conn, by_operator.endpoint.id, True)
    async with db.as_service() as conn:
        assert (await webhooks.set_enabled(conn, by_operator.endpoint.id, True)).enabled


async def test_the_demo_seed_issues_through_the_platform_every_time(db: Database) -> None:
    first = await seed_demo(db)
    second = await seed_demo(db)
    assert len(first) == len(second) == 3
    for demo in second:
        assert parse_token(demo.token).environment == demo.environment
    async with db.as_service() as conn:
        cur = await conn.execute(
            "select count(*) filter (where status = 'active') as active, count(*) as total"
            " from public.api_keys"
        )
        assert await cur.fetchone() == {"active": 3, "total": 6}
