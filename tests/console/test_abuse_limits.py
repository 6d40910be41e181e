"""Abuse limits: sign-in throttled per account and per client address (counted in memory, or in
Redis shared by replicas), one answer for unknown emails and wrong passwords, registration behind
a setting, and request bodies capped while they are read."""

from __future__ import annotations

import os
import select
import socket
import time
from collections.abc import Iterator
from typing import Any
from uuid import uuid4

import httpx
import pytest
import redis
from fastapi import FastAPI

from console.app import create_app
from console.settings import ConsoleSettings
from shared.db import Database
from shared.settings import PlatformSettings
from tests.console.conftest import (
    TEST_SECRET,
    console_env,
    free_port_socket,
    running_console,
    serve,
)

PASSWORD = "correct horse battery"
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def app_with(
    database_url: str, db: Database, *, redis_url: str | None = None, **console: Any
) -> FastAPI:
    settings = ConsoleSettings(
        _env_file=None, jwt_secret=TEST_SECRET, cookie_secure=False, **console
    )
    platform = PlatformSettings(_env_file=None, database_url=database_url, redis_url=redis_url)
    return create_app(settings, platform, database=db)


async def post_token(app: FastAPI, email: str, password: str, address: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, client=(address, 4000))
    async with httpx.AsyncClient(transport=transport, base_url="http://console.test") as http:
        return await http.post("/api/v1/auth/token", json={"email": email, "password": password})


async def test_sign_in_is_throttled_per_account(database_url: str, db: Database) -> None:
    app = app_with(database_url, db, allow_signup=True, signin_limit_per_account="3/minute")
    assert (await post_token(app, "ada@example.com", PASSWORD, "10.0.0.1")).status_code == 200
    # Every attempt counts; two wrong guesses (from two addresses) use up the three.
    for n in range(2):
        wrong = await post_token(app, "ada@example.com", "wrong password", f"10.0.1.{n}")
        assert wrong.status_code == 401
    blocked = await post_token(app, "ADA@example.com", PASSWORD, "10.0.2.1")
    assert blocked.status_code == 429
    assert blocked.json()["error"]["code"] == "TOO_MANY_SIGN_INS"
    assert 1 <= int(blocked.headers["retry-after"]) <= 60
    # Another account is not affected.
    assert (await post_token(app, "bob@example.com", PASSWORD, "10.0.2.1")).status_code == 200


async def test_sign_in_is_throttled_per_address(database_url: str, db: Database) -> None:
    app = app_with(database_url, db, allow_signup=False, signin_limit_per_address="5/minute")
    answers = [
        (await post_token(app, f"u{n}@example.com", PASSWORD, "10.9.9.9")).status_code
        for n in range(7)
    ]
    assert answers == [401] * 5 + [429] * 2
    # The same emails from another address still get their (401) answer.
    assert (await post_token(app, "u0@example.com", PASSWORD, "10.9.9.10")).status_code == 401


async def test_unknown_emails_and_wrong_passwords_get_the_same_answer(
    database_url: str, db: Database
) -> None:
    open_app = app_with(database_url, db, allow_signup=True)
    assert (await post_token(open_app, "ada@example.com", PASSWORD, "10.1.1.1")).status_code == 200
    closed = app_with(database_url, db, allow_signup=False)
    wrong = await post_token(closed, "ada@example.com", "not the password", "10.1.1.2")
    unknown = await post_token(closed, "eve@example.com", "not the password", "10.1.1.3")
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()
    assert wrong.json()["error"]["message"] == "wrong email or password"
    # No account was created for the unknown email, and the known one still signs in.
    again = await post_token(closed, "eve@example.com", PASSWORD, "10.1.1.4")
    assert again.status_code == 401
    assert (await post_token(closed, "ada@example.com", PASSWORD, "10.1.1.5")).status_code == 200


async def test_replicas_share_the_counts_in_redis(database_url: str, db: Database) -> None:
    try:
        redis.Redis.from_url(REDIS_URL, socket_timeout=2).ping()
    except redis.RedisError:
        pytest.skip(f"no Redis at {REDIS_URL}")
    email = f"{uuid4().hex}@example.com"  # keys in a shared Redis: unique to this run
    replicas = [
        app_with(
            database_url,
            db,
            redis_url=REDIS_URL,
            allow_signup=False,
            signin_limit_per_account="4/minute",
        )
        for _ in range(2)
    ]
    statuses = [
        (await post_token(replicas[n % 2], email, PASSWORD, f"10.7.{n}.1")).status_code
        for n in range(6)
    ]
    assert statuses == [401] * 4 + [429] * 2


async def test_an_unreachable_counter_refuses_sign_in_at_once_with_503(
    database_url: str, db: Database
) -> None:
    """Without its attempt counter the console allows no attempt (an outage must not lift the
    limit) and says so at once: 503 SIGN_IN_UNAVAILABLE, not a 500 or a hang."""
    with free_port_socket() as sock:  # a port nothing listens on: Redis is down
        dead = f"redis://127.0.0.1:{sock.getsockname()[1]}/0"
    app = app_with(database_url, db, redis_url=dead, allow_signup=True)
    started = time.perf_counter()
    response = await post_token(app, "ada@example.com", PASSWORD, "10.8.0.1")
    assert time.perf_counter() - started < 5
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "SIGN_IN_UNAVAILABLE"


# Request bodies ----------------------------------------------------------------------------------


def read_response(sock: socket.socket, timeout: float = 30) -> bytes:
    """One HTTP response, headers and (Content-Length) body, read off a raw socket."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        ),
        0,
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def test_a_declared_oversize_body_is_refused_before_it_is_sent(served_console: str) -> None:
    port = int(served_console.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(
            b"POST /api/v1/auth/token HTTP/1.1\r\nHost: console\r\n"
            b"Content-Type: application/json\r\nContent-Length: 67108864\r\n\r\n"
        )
        answer = read_response(sock)
    assert answer.startswith(b"HTTP/1.1 413")
    assert b'"code": "REQUEST_TOO_LARGE"' in answer


@pytest.fixture
def console_process(database_url: str) -> Iterator[tuple[str, int]]:
    """`python -m console` on loopback (a local run), as deployed, with a small body cap."""
    env = console_env(DATABASE_URL=database_url, CONSOLE_MAX_BODY_BYTES=str(1024 * 1024))
    with running_console(env) as console:
        yield console.base, console.process.pid


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_streamed_64_mb_body_is_refused_while_read(console_process: tuple[str, int]) -> None:
    """Chunked, so no Content-Length warns the server: it must count as it reads, answer 413 and
    stop reading. The client keeps streaming until the answer arrives; far less than the 64 MB is
    ever sent, and the server's memory does not grow by anything like the body's size."""
    base, pid = console_process
    port = int(base.rsplit(":", 1)[1])
    before = rss_kib(pid)
    total = 64 * 1024 * 1024
    chunk = b"[" + b"1," * 32_767 + b"1"  # 64 KiB of valid JSON-ish bytes
    frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    sent = 0
    answer = b""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(
            b"POST /api/v1/auth/token HTTP/1.1\r\nHost: console\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        sock.setblocking(False)
        while sent < total:
            readable, writable, _ = select.select([sock], [sock], [], 30)
            if readable:
                break
            if not writable:
                raise AssertionError("the server neither read nor answered for 30 s")
            try:
                sent += sock.send(frame)
            except (BrokenPipeError, ConnectionResetError):
                break
        sock.setblocking(True)
        try:
            answer = read_response(sock)
        except ConnectionResetError:
            answer = b""
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"REQUEST_TOO_LARGE" in answer
    grown = rss_kib(pid) - before
    print(f"64 MB streamed body: {sent} bytes sent before the 413, server RSS grew {grown} KiB")
    assert sent < 16 * 1024 * 1024, f"{sent} bytes were sent before the server answered"
    assert grown < 32 * 1024, f"the server grew by {grown} KiB"
    # And the server is fine afterwards.
    assert httpx.get(f"{base}/healthz").status_code == 200


async def test_bodies_within_the_cap_are_read(client: httpx.AsyncClient) -> None:
    small = await client.post(
        "/api/v1/auth/token", json={"email": "ada@example.com", "password": PASSWORD}
    )
    assert small.status_code == 200
    big = await client.post(
        "/api/v1/auth/token",
        content=b'{"email": "' + b"a" * (2 * 1024 * 1024) + b'"}',
        headers={"Content-Type": "application/json"},
    )
    assert big.status_code == 413
    assert big.json()["error"]["code"] == "REQUEST_TOO_LARGE"
    assert "1048576 bytes" in big.json()["error"]["hint"]


def test_the_cap_applies_to_streamed_bodies_in_process(
    console_settings: ConsoleSettings, platform_settings: PlatformSettings
) -> None:
    settings = console_settings.model_copy(update={"max_body_bytes": 4096})
    with serve(create_app(settings, platform_settings)) as base:

        def body() -> Iterator[bytes]:
            for _ in range(1024):
                yield b" " * 1024

        answer = httpx.post(
            f"{base}/api/v1/auth/token",
            content=body(),
            headers={"Content-Type": "application/json"},
        )
    assert answer.status_code == 413
    assert answer.json()["error"]["code"] == "REQUEST_TOO_LARGE"


async def test_the_dashboard_sign_in_is_throttled_too(database_url: str, db: Database) -> None:
    app = app_with(database_url, db, allow_signup=False, signin_limit_per_account="2/minute")
    transport = httpx.ASGITransport(app=app, client=("10.5.5.5", 4000))
    async with httpx.AsyncClient(transport=transport, base_url="http://console.test") as http:
        page = await http.get("/signin")
        assert "8 to 200 characters" in page.text
        token = page.text.split('name="csrf_token" value="')[1].split('"')[0]
        form = {"email": "ada@example.com", "password": PASSWORD, "csrf_token": token}
        statuses = [(await http.post("/signin", data=form)).status_code for _ in range(2)]
        assert statuses == [401, 401]
        blocked = await http.post("/signin", data=form)
        assert blocked.status_code == 429
        assert int(blocked.headers["retry-after"]) >= 1
        assert "too many sign-in attempts" in blocked.text
