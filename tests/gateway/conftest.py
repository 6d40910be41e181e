"""Fixtures for gateway tests: a real upstream server, real gateways (in process on uvicorn, or as
processes), and projects with keys. Tokens issued and gateway log files are registered for the
suite's final secret scan (tests/logscan.py)."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import aiohttp
import psycopg
import pytest
from aiohttp import web
from http_sfv.list import List as SfList
from loguru import logger

from gateway.__main__ import bind, build_server
from gateway.app import Gateway
from gateway.settings import GatewaySettings
from shared import apikeys, projects
from shared.db import Database
from shared.identity import IDENTITY_HEADERS
from shared.keys import KeyKind
from shared.projects import Project
from shared.settings import PlatformSettings
from tests.conftest import MakeUser
from tests.logscan import SUITE_RECORDS

REPO_ROOT = Path(__file__).resolve().parents[2]
LISTENING = re.compile(r"gateway listening on (?P<url>http://[0-9.]+:[0-9]+)")


@pytest.fixture
def captured() -> Iterator[list[dict[str, Any]]]:
    """Loguru records of one test, as dicts (message, level name, extra)."""
    records: list[dict[str, Any]] = []

    def sink(message: Any) -> None:
        record = message.record
        records.append(
            {"message": record["message"], "level": record["level"].name, **record["extra"]}
        )

    sink_id = logger.add(sink, level="DEBUG")
    try:
        yield records
    finally:
        logger.remove(sink_id)


# Upstream --------------------------------------------------------------------------------------


@dataclass
class Upstream:
    url: str
    requests: list[dict[str, Any]]


SEEN: web.AppKey[list[dict[str, Any]]] = web.AppKey("seen", list)


async def _echo(request: web.Request) -> web.Response:
    body = await request.read()
    seen = {
        "method": request.method,
        "path": request.path,
        "raw_path": request.raw_path,
        "headers": {name.lower(): value for name, value in request.headers.items()},
        "body": body.decode("utf-8", errors="replace"),
    }
    request.app[SEEN].append(seen)
    identity = {name: request.headers.get(name) for name in IDENTITY_HEADERS}
    return web.json_response({**seen, "identity": identity}, headers={"x-upstream": "yes"})


async def _slow(request: web.Request) -> web.Response:
    await asyncio.sleep(float(request.query.get("seconds", "5")))
    return web.json_response({"slow": True})


async def _binary(request: web.Request) -> web.Response:
    return web.Response(body=bytes(range(256)) * 4, content_type="application/octet-stream")


@asynccontextmanager
async def run_upstream() -> AsyncIterator[Upstream]:
    app = web.Application()
    app[SEEN] = []
    app.router.add_get("/slow", _slow)
    app.router.add_get("/binary", _binary)
    app.router.add_route("*", "/{tail:.*}", _echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield Upstream(url=f"http://127.0.0.1:{port}", requests=app[SEEN])
    finally:
        await runner.cleanup()


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    """A real HTTP server on loopback that echoes what reached it."""
    async with run_upstream() as server:
        yield server


def closed_port_url() -> str:
    """A loopback URL nobody listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# Gateways --------------------------------------------------------------------------------------


def platform_settings(database_url: str, **overrides: Any) -> PlatformSettings:
    """Platform settings for a test: only what is given, nothing from the environment."""
    values: dict[str, Any] = {"DATABASE_URL": database_url, "REDIS_URL": None, **overrides}
    return PlatformSettings(_env_file=None, **values)


def gateway_settings(**overrides: Any) -> GatewaySettings:
    values: dict[str, Any] = {
        "usage_flush_interval_seconds": 0.2,
        "listener_retry_seconds": 0.1,
        "key_cache_ttl_seconds": 300,  # invalidation must come from notifications, not expiry
        **overrides,
    }
    return GatewaySettings(_env_file=None, **values)


@dataclass
class RunningGateway:
    url: str
    app: Gateway


@asynccontextmanager
async def run_gateway(
    platform: PlatformSettings, settings: GatewaySettings
) -> AsyncIterator[RunningGateway]:
    """The gateway on uvicorn in this process, on a free loopback port."""
    app = Gateway(platform, settings)
    server = build_server(app)
    sock = bind("127.0.0.1", 0)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await asyncio.wait_for(app.started.wait(), 30)
        await asyncio.wait_for(app.listening.wait(), 30)
        yield RunningGateway(url=f"http://127.0.0.1:{sock.getsockname()[1]}", app=app)
    finally:
        server.should_exit = True
        await task
        sock.close()


StartGateway = Callable[..., Awaitable[RunningGateway]]


@pytest.fixture
async def start_gateway(database_url: str, upstream: Upstream) -> AsyncIterator[StartGateway]:
    """Start gateways in process: `await start_gateway(platform=..., gateway=...)` with setting
    overrides; all are stopped when the test ends."""

    async with AsyncExitStack() as stack:

        async def start(
            *, platform: dict[str, Any] | None = None, gateway: dict[str, Any] | None = None
        ) -> RunningGateway:
            return await stack.enter_async_context(
                run_gateway(
                    platform_settings(database_url, **(platform or {})),
                    gateway_settings(**{"upstream_url": upstream.url, **(gateway or {})}),
                )
            )

        yield start


@dataclass
class GatewayProcess:
    url: str
    process: subprocess.Popen[str]
    log_file: Path


def start_gateway_process(env: dict[str, str], log_file: Path) -> GatewayProcess:
    """`python -m gateway --port 0` as a real process; its output goes to `log_file` (which the
    secret scan reads) and the port is read from its "listening" line."""
    SUITE_RECORDS.log_files.append(log_file)
    handle = log_file.open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "--port", "0"],
        cwd=REPO_ROOT,
        env={**os.environ, **env},
        stdout=handle,
        stderr=subprocess.STDOUT,
        text=True,
    )
    handle.close()
    return GatewayProcess(url="", process=process, log_file=log_file)


async def wait_until_listening(gateway: GatewayProcess) -> str:
    """The URL a gateway process announced once it was ready (within 30 s)."""
    deadline = asyncio.get_running_loop().time() + 30
    while asyncio.get_running_loop().time() < deadline:
        found = LISTENING.search(gateway.log_file.read_text())
        if found:
            gateway.url = found["url"]
            return gateway.url
        if gateway.process.poll() is not None:
            raise AssertionError(f"gateway exited early:\n{gateway.log_file.read_text()}")
        await asyncio.sleep(0.05)
    raise AssertionError(f"gateway did not start:\n{gateway.log_file.read_text()}")


# Data ------------------------------------------------------------------------------------------


@dataclass
class Seeded:
    project: Project
    token: str
    key_id: UUID


IssueKey = Callable[..., Awaitable[Seeded]]


@pytest.fixture
def issue_key(db: Database, make_user: MakeUser) -> IssueKey:
    """A project of `environment` (or `project`'s) with a new key of `kind`; registers the
    token for the final secret scan."""
    owners: list[UUID] = []

    async def issue(
        environment: str = "prod",
        kind: str = "sk",
        *,
        project: Project | None = None,
        rate_limit: int | None = None,
        **key_options: Any,
    ) -> Seeded:
        if not owners:
            owners.append((await make_user(f"owner-{len(SUITE_RECORDS.tokens)}@example.com")).id)
        async with db.as_service() as conn:
            if project is None:
                project = await projects.create_project(
                    conn, name=f"{environment} app", environment=environment, owner_id=owners[0]
                )
            if rate_limit is not None:
                await conn.execute(
                    "update public.projects set rate_limit = %s where id = %s",
                    (rate_limit, project.id),
                )
            issued = await apikeys.create_key(conn, project.id, KeyKind(kind), **key_options)
        SUITE_RECORDS.tokens.add(issued.token)
        return Seeded(project=project, token=issued.token, key_id=issued.key.id)

    return issue


async def edit_as_superuser(database_url: str, *statements: tuple[str, tuple[Any, ...]]) -> None:
    """Run `statements` in one transaction as the database superuser, as an operator editing
    the database by hand would (triggers can be switched off)."""
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        for query, params in statements:
            await conn.execute(query.encode(), params)
        await conn.commit()


def register_token(token: str) -> None:
    """Add a token issued outside `issue_key` (the CLI, the demo) to the final scan."""
    SUITE_RECORDS.tokens.add(token)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass(frozen=True)
class RateLimitHeaders:
    """The rate-limit headers of one response, parsed as the standard defines them."""

    policy: str
    quota: int
    window: int
    remaining: int
    reset_after: int
    x_limit: int
    x_remaining: int
    x_reset: int


def rate_limit_headers(headers: Mapping[str, str]) -> RateLimitHeaders:
    """`RateLimit-Policy` and `RateLimit` parsed as structured-field lists (httpapi draft -10)
    with `http-sfv`, beside the `X-RateLimit-*` integers; fails if any is missing or invalid."""
    policy = SfList()
    policy.parse(headers["RateLimit-Policy"].encode())
    limit = SfList()
    limit.parse(headers["RateLimit"].encode())
    assert len(policy) == 1 and len(limit) == 1
    assert policy[0].value == limit[0].value  # one policy, named in both
    return RateLimitHeaders(
        policy=policy[0].value,
        quota=policy[0].params["q"],
        window=policy[0].params["w"],
        remaining=limit[0].params["r"],
        reset_after=limit[0].params["t"],
        x_limit=int(headers["X-RateLimit-Limit"]),
        x_remaining=int(headers["X-RateLimit-Remaining"]),
        x_reset=int(headers["X-RateLimit-Reset"]),
    )
