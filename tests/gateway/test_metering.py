"""Usage is counted in memory and flushed in batches into usage_counters, in the shape the worker's
auto-suspend sweep relies on."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID

import aiohttp
import psycopg
from psycopg.rows import dict_row

from shared.db import Database
from shared.usage import flush_usage
from tests.gateway.conftest import IssueKey, StartGateway, bearer


async def usage_rows(database_url: str) -> list[dict[str, object]]:
    async with await psycopg.AsyncConnection.connect(database_url, row_factory=dict_row) as conn:
        cur = await conn.execute(
            "select project_id, window_start, requests, request_cap, updated_at"
            " from public.usage_counters order by requests"
        )
        return await cur.fetchall()


async def test_requests_are_counted_and_flushed_in_batches(
    start_gateway: StartGateway,
    http: aiohttp.ClientSession,
    issue_key: IssueKey,
    database_url: str,
) -> None:
    # A flush interval longer than the test: nothing is written until the gateway flushes.
    gateway = await start_gateway(
        platform={"default_request_cap": 500, "cap_window_seconds": 86400},
        gateway={"usage_flush_interval_seconds": 3600},
    )
    prod = await issue_key("prod")
    dev = await issue_key("dev")
    for token, count in ((prod.token, 3), (dev.token, 5)):
        for _ in range(count):
            async with http.get(gateway.url, headers=bearer(token)) as response:
                assert response.status == 200
    async with http.get(gateway.url, headers=bearer(prod.token[:-2] + "zz")) as response:
        assert response.status == 401  # refused requests are not usage
    assert await usage_rows(database_url) == []
    assert gateway.app.meter.pending == 8

    await gateway.app.meter.flush()
    rows = await usage_rows(database_url)
    window = int(datetime.now(UTC).timestamp()) // 86400 * 86400
    assert [(r["project_id"], r["requests"], r["request_cap"]) for r in rows] == [
        (prod.project.id, 3, 500),
        (dev.project.id, 5, 500),
    ]
    assert {r["window_start"] for r in rows} == {datetime.fromtimestamp(window, UTC)}
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute(
            "select count(*) from public.api_keys where last_used_at is not null"
        )
        assert await cur.fetchone() == (2,)


async def test_flush_usage_adds_and_copies_the_current_cap(
    db: Database, issue_key: IssueKey, database_url: str
) -> None:
    seeded = await issue_key("prod")
    gone = UUID(int=1)  # a project deleted since it was counted is skipped, not an error
    async with db.as_service() as conn:
        await flush_usage(
            conn, {seeded.project.id: 4, gone: 2}, window_seconds=86400, default_cap=10
        )
    first = await usage_rows(database_url)
    async with db.as_service() as conn:
        await conn.execute(
            "update public.projects set request_cap = 7 where id = %s", (seeded.project.id,)
        )
        await flush_usage(conn, {seeded.project.id: 2}, window_seconds=86400, default_cap=10)
    second = await usage_rows(database_url)
    assert [(r["requests"], r["request_cap"]) for r in first] == [(4, 10)]
    assert [(r["requests"], r["request_cap"]) for r in second] == [(6, 7)]
    assert second[0]["updated_at"] > first[0]["updated_at"]  # type: ignore[operator]
    assert second[0]["window_start"].timestamp() % 86400 == 0  # type: ignore[attr-defined]
