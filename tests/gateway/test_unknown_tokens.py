"""Floods of well-formed unknown tokens (the checksum is public, so anyone can mint them): each
costs at most one lookup per unknown-key TTL, a new key works at once all the same, and one client
address cannot cause more lookups than its limit, so valid keys are not slowed down."""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import time

import aiohttp
import pytest

from shared.environment import Environment
from shared.keys import KeyKind, generate_token
from tests.gateway.conftest import (
    REPO_ROOT,
    IssueKey,
    StartGateway,
    bearer,
    edit_as_superuser,
    register_token,
)

FLOOD = 5_000

pytestmark = pytest.mark.slow(20)


async def statuses(url: str, tokens: list[str], concurrency: int = 50) -> dict[int, int]:
    counts: dict[int, int] = {}
    queue = list(reversed(tokens))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as http:

        async def worker() -> None:
            while queue:
                token = queue.pop()
                async with http.get(url, headers=bearer(token)) as response:
                    await response.read()
                    counts[response.status] = counts.get(response.status, 0) + 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return counts


async def test_an_unknown_token_costs_one_lookup_per_ttl_and_a_new_key_works_at_once(
    start_gateway: StartGateway, issue_key: IssueKey, database_url: str
) -> None:
    gateway = await start_gateway(
        gateway={"client_lookup_limit": 0, "unknown_key_ttl_seconds": 300}
    )
    tokens = [generate_token(Environment.PROD, KeyKind.SECRET) for _ in range(FLOOD)]
    before = gateway.app.cache.lookups
    assert await statuses(gateway.url, [t.token for t in tokens]) == {401: FLOOD}
    assert gateway.app.cache.lookups - before == FLOOD  # one each
    assert await statuses(gateway.url, [t.token for t in tokens]) == {401: FLOOD}
    assert gateway.app.cache.lookups - before == FLOOD  # none more within the TTL

    # One of them becomes a real key: it works long before the TTL ends, because creating a
    # key notifies (even when written around the usual triggers).
    project = (await issue_key("prod")).project
    token = tokens[123]
    register_token(token.token)
    await edit_as_superuser(
        database_url,
        ("set local session_replication_role = replica", ()),
        (
            "insert into public.api_keys"
            " (project_id, kind, environment, prefix, last_four, key_hash)"
            " values (%s, 'sk', 'prod', %s, %s, %s)",
            (project.id, token.prefix, token.last_four, token.hash),
        ),
    )
    for _ in range(40):
        if await statuses(gateway.url, [token.token]) == {200: 1}:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("a key created after its token was found unknown never worked")


FLOOD_SCRIPT = """
import asyncio, json, sys, time
import aiohttp
from shared.environment import Environment
from shared.keys import KeyKind, generate_token

async def main(url, count, rate):
    tokens = [generate_token(Environment.PROD, KeyKind.SECRET).token for _ in range(count)]
    counts = {}
    limit = asyncio.Semaphore(20)
    async with aiohttp.ClientSession() as http:
        async def one(token):
            async with limit, http.get(url, headers={"Authorization": "Bearer " + token}) as r:
                await r.read()
                counts[r.status] = counts.get(r.status, 0) + 1
        start = time.monotonic()
        tasks = []
        for n, token in enumerate(tokens):
            await asyncio.sleep(max(0.0, start + n / rate - time.monotonic()))
            tasks.append(asyncio.create_task(one(token)))
        await asyncio.gather(*tasks)
    print(json.dumps(counts))

asyncio.run(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3])))
"""


async def timed_gets(http: aiohttp.ClientSession, url: str, token: str, count: int) -> float:
    """The median time of `count` sequential GETs."""
    times = []
    for _ in range(count):
        started = time.perf_counter()
        async with http.get(url, headers=bearer(token)) as response:
            assert response.status == 200
            await response.read()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


async def test_a_flood_from_one_address_is_limited_before_lookup_and_spares_valid_keys(
    start_gateway: StartGateway, issue_key: IssueKey
) -> None:
    limit, window = 200, 10
    gateway = await start_gateway(
        platform={"default_rate_limit": 1_000_000},
        gateway={"client_lookup_limit": limit, "client_lookup_window_seconds": window},
    )
    valid = await issue_key("prod")
    later = await issue_key("prod")  # looked up for the first time during the flood
    # Valid clients come from another loopback address than the flood.
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with aiohttp.ClientSession(connector=connector) as http:
        await timed_gets(http, gateway.url, valid.token, 10)  # cached, connection open
        baseline = await timed_gets(http, gateway.url, valid.token, 50)
        before = gateway.app.cache.lookups
        started = time.monotonic()
        flood = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            FLOOD_SCRIPT,
            gateway.url,
            str(FLOOD),
            "1000",
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
        )
        await asyncio.sleep(0.5)  # the flood is under way
        during = await timed_gets(http, gateway.url, valid.token, 50)
        assert await timed_gets(http, gateway.url, later.token, 1) > 0  # looked up: 200
        output, _ = await flood.communicate()
        elapsed = time.monotonic() - started
    assert flood.returncode == 0
    counts = {int(status): n for status, n in json.loads(output).items()}
    assert set(counts) <= {401, 429} and sum(counts.values()) == FLOOD
    bound = limit * (int(elapsed // window) + 1) + 1  # the flood's windows, and `later`
    lookups = gateway.app.cache.lookups - before
    assert lookups <= bound, f"{lookups} lookups for a flood of {FLOOD} (bound {bound})"
    assert counts[429] >= FLOOD - bound
    assert during <= 2 * baseline, (
        f"valid requests: {during * 1000:.2f} ms during the flood, {baseline * 1000:.2f} ms before"
    )


async def test_concurrent_requests_for_one_key_share_one_lookup_and_one_count(
    start_gateway: StartGateway, issue_key: IssueKey
) -> None:
    """Many clients of one address presenting a key not cached yet (a new process, an expired
    entry) cause one query, counted once against the address's limit."""
    gateway = await start_gateway(gateway={"client_lookup_limit": 2})
    valid = await issue_key("prod")
    unknown = generate_token(Environment.PROD, KeyKind.SECRET).token
    before = gateway.app.cache.lookups
    assert await statuses(gateway.url, [valid.token] * 100, concurrency=100) == {200: 100}
    assert await statuses(gateway.url, [unknown] * 100, concurrency=100) == {401: 100}
    assert gateway.app.cache.lookups - before == 2
