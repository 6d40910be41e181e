"""The whole auto-suspend story with the real gateway: it meters a project's requests and
flushes them (`shared.usage.flush_usage`), the worker's sweep acts on them, the gateway refuses a
suspended prod project's keys, and serves them again once an operator lifts the suspension."""

from __future__ import annotations

import asyncio
from uuid import UUID

import aiohttp

from shared import apikeys, suspensions
from shared.db import Database
from shared.keys import KeyKind
from tests.gateway.conftest import gateway_settings, platform_settings, run_gateway, run_upstream
from tests.worker.conftest import MakeProject, eventually, worker_settings
from worker.app import sweep


async def _status(http: aiohttp.ClientSession, url: str, token: str) -> tuple[int, str]:
    async with http.get(f"{url}/items", headers={"authorization": f"Bearer {token}"}) as resp:
        body = await resp.json()
        return resp.status, body.get("error", {}).get("code", "") if resp.status >= 400 else ""


async def _counted(db: Database, project_id: UUID) -> int:
    async with db.as_service() as conn:
        cur = await conn.execute(
            "select coalesce(sum(requests), 0) as n from public.usage_counters"
            " where project_id = %s",
            (project_id,),
        )
        row = await cur.fetchone()
    assert row is not None
    counted: int = row["n"]
    return counted


async def test_over_cap_prod_keys_are_refused_until_lifted_while_dev_keeps_serving(
    db: Database, database_url: str, make_project: MakeProject
) -> None:
    prod = await make_project("prod", request_cap=3)
    dev = await make_project("dev", request_cap=3)
    tokens: dict[UUID, str] = {}
    async with db.as_service() as conn:
        for project in (prod, dev):
            tokens[project] = (await apikeys.create_key(conn, project, KeyKind.SECRET)).token

    async with (
        run_upstream() as upstream,
        run_gateway(
            platform_settings(database_url),
            gateway_settings(upstream_url=upstream.url, usage_flush_interval_seconds=0.1),
        ) as gateway,
        aiohttp.ClientSession() as http,
    ):
        for project in (prod, dev):
            for _ in range(4):
                assert await _status(http, gateway.url, tokens[project]) == (200, "")

        async def flushed() -> bool:
            return all([await _counted(db, p) >= 4 for p in (prod, dev)])

        await eventually(flushed, what="the gateway flushing its usage counts")
        result = await sweep(db, worker_settings())
        assert (result.violators, result.suspended, result.warned) == (2, 1, 1)

        async def refused() -> bool:
            return await _status(http, gateway.url, tokens[prod]) == (403, "PROJECT_SUSPENDED")

        await eventually(refused, what="the gateway refusing the suspended project's key")
        assert await _status(http, gateway.url, tokens[dev]) == (200, "")

        async with db.as_service() as conn:
            await suspensions.lift(conn, prod, lifted_by="ops")

        async def served() -> bool:
            return await _status(http, gateway.url, tokens[prod]) == (200, "")

        await eventually(served, what="the gateway serving the lifted project again")
        await asyncio.sleep(0.3)  # let the last counts flush before the gateway stops
