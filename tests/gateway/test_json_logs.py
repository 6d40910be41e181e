"""`PARITY_LOG_FORMAT=json`: every line a gateway process writes to stderr is one JSON object,
on every path: requests served and refused, a malformed HTTP request (uvicorn's own warning), an
upstream timeout, a debug record of a deeply nested body, the pool's warnings, and shutdown."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import aiohttp

from tests.gateway.conftest import (
    IssueKey,
    Upstream,
    bearer,
    start_gateway_process,
    wait_until_listening,
)


async def malformed_request(url: str) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"NOT HTTP AT ALL\r\n\r\n")
    await writer.drain()
    answer = await reader.read()
    writer.close()
    return answer


async def test_every_stderr_line_is_one_json_object(
    database_url: str,
    upstream: Upstream,
    issue_key: IssueKey,
    tmp_path: Path,
    http: aiohttp.ClientSession,
) -> None:
    env = {
        "DATABASE_URL": database_url,
        "GATEWAY_UPSTREAM_URL": upstream.url,
        "GATEWAY_UPSTREAM_TIMEOUT_SECONDS": "0.3",
        "PARITY_LOG_FORMAT": "json",
    }
    gateway = start_gateway_process(env, tmp_path / "gateway.log")
    try:
        url = await wait_until_listening(gateway)
        dev = await issue_key("dev")
        async with http.get(url, headers=bearer(dev.token)) as response:
            assert response.status == 200
        async with http.get(url, headers=bearer(dev.token[:-1] + "x")) as response:
            assert response.status == 401
        async with http.get(f"{url}/slow?seconds=2", headers=bearer(dev.token)) as response:
            assert response.status == 504
        nested = b"[" * 5000 + b"]" * 5000
        async with http.post(
            url, headers={**bearer(dev.token), "Content-Type": "application/json"}, data=nested
        ) as response:
            assert response.status == 200
        assert b"400 Bad Request" in await malformed_request(url)
    finally:
        gateway.process.send_signal(signal.SIGTERM)
        gateway.process.wait(timeout=20)
    lines = gateway.log_file.read_text().splitlines()
    records = [json.loads(line) for line in lines]  # fails on the first line that is not JSON
    assert all(isinstance(record, dict) and "record" in record for record in records)
    loggers = {record["record"]["extra"].get("logger") for record in records}
    assert "uvicorn.error" in loggers  # uvicorn's own warning came through loguru
    messages = [record["record"]["message"] for record in records]
    assert any("Invalid HTTP request" in message for message in messages)
    assert any(" -> 504 " in message for message in messages)
    assert any("gateway stopped" in message for message in messages)
