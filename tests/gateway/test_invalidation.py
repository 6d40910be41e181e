"""Revocation, suspension and environment changes reach a running gateway's cache through Postgres
notifications (within 2 s, no restart), and through the cache TTL if notifications are lost."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import aiohttp
import psycopg

from shared import apikeys
from shared.db import Database
from shared.keys import hash_token
from tests.gateway.conftest import (
    IssueKey,
    StartGateway,
    bearer,
    edit_as_superuser,
    register_token,
)

LIMIT_SECONDS = 2.0


async def status_of(http: aiohttp.ClientSession, url: str, token: str) -> tuple[int, str]:
    async with http.get(url, headers=bearer(token)) as response:
        body = await response.json()
        return response.status, body.get("error", {}).get("code", "")


async def first_refusal(
    http: aiohttp.ClientSession, url: str, token: str, within: float
) -> tuple[int, str]:
    """Poll until the gateway refuses `token`; fail if it still accepts it after `within` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        status, code = await status_of(http, url, token)
        if status != 200:
            return status, code
        assert loop.time() < deadline, f"still accepted {within} s after the change"
        await asyncio.sleep(0.05)


async def test_revoked_key_and_suspended_project_are_refused_within_2_s(
    start_gateway: StartGateway,
    http: aiohttp.ClientSession,
    issue_key: IssueKey,
    db: Database,
    database_url: str,
) -> None:
    gateway = await start_gateway()  # cache TTL 300 s: only a notification can evict
    revoked = await issue_key("prod")
    suspended = await issue_key("dev")
    for seeded in (revoked, suspended):
        assert await status_of(http, gateway.url, seeded.token) == (200, "")
        assert gateway.app.cache.cached(hash_token(seeded.token)) is not None

    async with db.as_service() as conn:
        await apikeys.revoke_key(conn, revoked.key_id)
    await edit_as_superuser(
        database_url,
        ("update public.projects set status = 'suspended' where id = %s", (suspended.project.id,)),
    )
    assert await first_refusal(http, gateway.url, revoked.token, LIMIT_SECONDS) == (
        401,
        "INVALID_API_KEY",
    )
    assert await first_refusal(http, gateway.url, suspended.token, LIMIT_SECONDS) == (
        403,
        "PROJECT_SUSPENDED",
    )


async def test_a_rotated_key_stops_at_the_end_of_its_grace_period(
    start_gateway: StartGateway,
    http: aiohttp.ClientSession,
    issue_key: IssueKey,
    db: Database,
) -> None:
    gateway = await start_gateway()
    old = await issue_key("staging")
    assert await status_of(http, gateway.url, old.token) == (200, "")
    async with db.as_service() as conn:
        new = await apikeys.rotate_key(conn, old.key_id, grace=timedelta(seconds=1))
    register_token(new.token)
    assert await status_of(http, gateway.url, new.token) == (200, "")
    assert await first_refusal(http, gateway.url, old.token, 1 + LIMIT_SECONDS) == (
        401,
        "INVALID_API_KEY",
    )
    assert await status_of(http, gateway.url, new.token) == (200, "")


async def test_lost_notifications_are_bounded_by_the_cache_ttl(
    start_gateway: StartGateway,
    http: aiohttp.ClientSession,
    issue_key: IssueKey,
    database_url: str,
) -> None:
    gateway = await start_gateway(gateway={"key_cache_ttl_seconds": 0.5})
    seeded = await issue_key("prod")
    assert await status_of(http, gateway.url, seeded.token) == (200, "")
    # The notification is lost: the trigger that sends it is off for this change.
    await edit_as_superuser(
        database_url,
        ("alter table public.api_keys disable trigger api_keys_notify_gateway", ()),
        (
            "update public.api_keys set status = 'revoked', revoked_at = now() where id = %s",
            (seeded.key_id,),
        ),
        ("alter table public.api_keys enable trigger api_keys_notify_gateway", ()),
    )
    assert await first_refusal(http, gateway.url, seeded.token, 0.5 + LIMIT_SECONDS) == (
        401,
        "INVALID_API_KEY",
    )


async def test_listener_reconnects_after_its_connection_is_killed(
    start_gateway: StartGateway,
    http: aiohttp.ClientSession,
    issue_key: IssueKey,
    db: Database,
    database_url: str,
) -> None:
    gateway = await start_gateway()
    seeded = await issue_key("prod")
    assert await status_of(http, gateway.url, seeded.token) == (200, "")
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        cur = await conn.execute(
            "select pg_terminate_backend(pid) from pg_stat_activity"
            " where datname = current_database() and query ilike 'listen %%'"
        )
        assert await cur.fetchall() == [(True,)]
    # The listener notices, reconnects (clearing the cache) and hears the next change.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while gateway.app.listening.is_set():
        assert loop.time() < deadline, "the listener did not notice its connection was killed"
        await asyncio.sleep(0.02)
    await asyncio.wait_for(gateway.app.listening.wait(), 10)
    assert len(gateway.app.cache) == 0
    assert await status_of(http, gateway.url, seeded.token) == (200, "")
    async with db.as_service() as conn:
        await apikeys.revoke_key(conn, seeded.key_id)
    assert await first_refusal(http, gateway.url, seeded.token, LIMIT_SECONDS) == (
        401,
        "INVALID_API_KEY",
    )
