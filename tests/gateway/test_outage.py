"""Postgres down, on a throwaway cluster of this test's own (the shared server is not ours to
stop): a key the gateway has not cached is answered 503 DATABASE_UNAVAILABLE within the connection
wait bound, not after the pool's 30 s default; a cached key is served until its cache entry's TTL
ends; once Postgres is back, everything works again without a restart."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit

import aiohttp
import psycopg

from shared import apikeys, projects
from shared.db import Database
from shared.keys import KeyKind
from tests.gateway.conftest import (
    Upstream,
    bearer,
    gateway_settings,
    platform_settings,
    register_token,
    run_gateway,
)
from tests.gateway.test_errors import assert_error, call
from tests.worker.test_restart import Cluster, throwaway_cluster

__all__ = ["throwaway_cluster"]  # the fixture, used by name below

WAIT_SECONDS = 1.0


async def issue(database_url: str, count: int) -> list[str]:
    """`count` keys of one prod project; their tokens."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        cur = await conn.execute(
            "insert into auth.users (email) values ('outage@example.com') returning id"
        )
        row = await cur.fetchone()
        assert row is not None
    async with Database(database_url) as db, db.as_service() as conn:
        project = await projects.create_project(
            conn, name="outage", environment="prod", owner_id=row[0]
        )
        tokens = [
            (await apikeys.create_key(conn, project.id, KeyKind.SECRET)).token for _ in range(count)
        ]
    for token in tokens:
        register_token(token)
    return tokens


def start_again(cluster: Cluster) -> None:
    port = urlsplit(cluster.url).port
    options = f"-p {port} -k {cluster.root} -c listen_addresses=127.0.0.1 -c fsync=off"
    cluster.pg_ctl("-o", options, "start")


async def test_postgres_down_answers_503_within_the_bound_and_recovers_without_restart(
    throwaway_cluster: Cluster, upstream: Upstream, http: aiohttp.ClientSession
) -> None:
    cached, uncached = await issue(throwaway_cluster.url, 2)
    async with run_gateway(
        platform_settings(throwaway_cluster.url),
        gateway_settings(upstream_url=upstream.url, db_wait_seconds=WAIT_SECONDS),
    ) as gateway:
        status, _, _ = await call(http, "GET", gateway.url, headers=bearer(cached))
        assert status == 200

        await asyncio.to_thread(throwaway_cluster.pg_ctl, "-m", "immediate", "stop")
        try:
            # A cached key is served during the outage (until its entry's TTL ends).
            status, _, _ = await call(http, "GET", gateway.url, headers=bearer(cached))
            assert status == 200
            # An uncached one is refused within the wait bound, twice in a row (no lingering).
            for _ in range(2):
                started = time.monotonic()
                status, body, _ = await call(http, "GET", gateway.url, headers=bearer(uncached))
                elapsed = time.monotonic() - started
                assert_error(status, body, 503, "DATABASE_UNAVAILABLE")
                assert elapsed < WAIT_SECONDS + 1.5, f"503 after {elapsed:.1f} s"
        finally:
            await asyncio.to_thread(start_again, throwaway_cluster)

        # Back without a restart of the gateway: the uncached key is looked up and served.
        deadline = time.monotonic() + 60
        while True:
            status, body, _ = await call(http, "GET", gateway.url, headers=bearer(uncached))
            if status == 200:
                break
            assert status == 503, body
            assert time.monotonic() < deadline, "the gateway never recovered"
            await asyncio.sleep(0.2)
        status, _, _ = await call(http, "GET", gateway.url, headers=bearer(cached))
        assert status == 200
