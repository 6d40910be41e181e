"""Gateways as real processes (`python -m gateway`): two of them sharing Redis enforce one budget,
and JSON log lines come out when configured."""

from __future__ import annotations

import json
import os
import secrets
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as redis

from tests.gateway.conftest import (
    GatewayProcess,
    IssueKey,
    Upstream,
    bearer,
    start_gateway_process,
    wait_until_listening,
)

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    """A Redis key prefix no other test uses; its keys are deleted afterwards."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        await client.ping()
    except redis.ConnectionError:
        await client.aclose()
        pytest.skip(f"Redis is not running at {REDIS_URL}")
    prefix = f"parity-test-{secrets.token_hex(6)}"
    try:
        yield prefix
    finally:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


async def test_two_gateway_processes_share_one_redis_budget(
    database_url: str,
    upstream: Upstream,
    issue_key: IssueKey,
    redis_prefix: str,
    tmp_path: Path,
    http: aiohttp.ClientSession,
) -> None:
    env = {
        "DATABASE_URL": database_url,
        "REDIS_URL": REDIS_URL,
        "GATEWAY_REDIS_KEY_PREFIX": redis_prefix,
        "GATEWAY_UPSTREAM_URL": upstream.url,
        "PARITY_DEFAULT_RATE_LIMIT": "4",
        "PARITY_LOG_FORMAT": "json",
    }
    gateways: list[GatewayProcess] = [
        start_gateway_process(env, tmp_path / f"gateway-{n}.log") for n in (1, 2)
    ]
    try:
        urls = [await wait_until_listening(gateway) for gateway in gateways]
        prod = await issue_key("prod")
        statuses = []
        for n in range(12):  # alternate between the two processes
            async with http.get(urls[n % 2], headers=bearer(prod.token)) as response:
                statuses.append(response.status)
        # One budget of 4 in all, not 4 per process.
        assert statuses == [200] * 4 + [429] * 8
    finally:
        for gateway in gateways:
            gateway.process.send_signal(signal.SIGTERM)
        for gateway in gateways:
            gateway.process.wait(timeout=20)

    for gateway in gateways:
        # uvicorn shuts down gracefully, then re-raises the signal it caught as its exit status.
        assert gateway.process.returncode == -signal.SIGTERM, gateway.log_file.read_text()
        records = [json.loads(line) for line in gateway.log_file.read_text().splitlines()]
        assert records[-1]["record"]["message"] == "gateway stopped"
        requests = [r["record"] for r in records if "project=" in r["record"]["message"]]
        assert len(requests) == 6
        assert all(r["level"]["name"] == "INFO" for r in requests)
        assert {r["extra"]["status"] for r in requests} <= {200, 429}
        assert all(r["extra"]["env"] == "prod" for r in requests)
