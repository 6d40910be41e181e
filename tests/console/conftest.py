"""Console fixtures: the app over ASGI on the test's database, signed-in users, and the console
served by uvicorn on a free loopback port for the browser and the schema run."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import psycopg
import pytest
import uvicorn
from fastapi import FastAPI

from console.app import create_app
from console.auth import Authenticator
from console.settings import ConsoleSettings
from shared.db import Database
from shared.settings import PlatformSettings
from shared.users import User as AuthUser
from tests.conftest import MakeUser, User

STARTUP_POLLS = 500
TEST_SECRET = "test-console-secret-of-at-least-32-characters"


@pytest.fixture
def console_settings() -> ConsoleSettings:
    # Built explicitly: nothing from the machine's environment or a .env file leaks in. Not a
    # local run (create_app's default), so what tests rely on is stated: plain-HTTP cookies and
    # sign-up on first sign-in.
    return ConsoleSettings(
        _env_file=None, jwt_secret=TEST_SECRET, cookie_secure=False, allow_signup=True, docs=True
    )


@pytest.fixture
def platform_settings(database_url: str) -> PlatformSettings:
    return PlatformSettings(_env_file=None, database_url=database_url)


@pytest.fixture
def app(
    console_settings: ConsoleSettings, platform_settings: PlatformSettings, db: Database
) -> FastAPI:
    return create_app(console_settings, platform_settings, database=db)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://console.test") as http:
        yield http


@dataclass(frozen=True)
class SignedIn:
    user: User
    headers: dict[str, str]


SignInAs = Callable[[str], Awaitable[SignedIn]]


@pytest.fixture
def sign_in_as(make_user: MakeUser, console_settings: ConsoleSettings) -> SignInAs:
    """A user in auth.users and a session token the console verifies like any other."""
    authenticator = Authenticator(console_settings)

    async def sign_in(email: str) -> SignedIn:
        user = await make_user(email)
        token = authenticator.issue(AuthUser(id=user.id, email=user.email))
        return SignedIn(user=user, headers={"Authorization": f"Bearer {token}"})

    return sign_in


def free_port_socket() -> socket.socket:
    """A loopback socket bound to a port the system picked (never a fixed port)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    """Run `app` under uvicorn in a thread (its own event loop); yield its base URL."""
    sock = free_port_socket()
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        for _ in range(STARTUP_POLLS):
            if server.started or not thread.is_alive():
                break
            time.sleep(0.02)
        if not server.started:
            raise RuntimeError("the console did not start")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture
def served_console(
    console_settings: ConsoleSettings, platform_settings: PlatformSettings
) -> Iterator[str]:
    """The console on a free loopback port, with its own pool on the test's database."""
    with serve(create_app(console_settings, platform_settings)) as url:
        yield url


def create_user_sync(database_url: str, email: str) -> User:
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "insert into auth.users (email) values (%s) returning id", (email,)
        ).fetchone()
        assert row is not None
        return User(id=row[0], email=email)


JsonAnswer = Callable[[str, str, dict[str, str], bytes], tuple[int, object]]
"""(method, path, headers with lower-case names, body) -> (status, JSON payload)."""


@contextmanager
def json_server(answer: JsonAnswer) -> Iterator[str]:
    """A real HTTP server on a free loopback port answering JSON; yields its base URL."""

    class Handler(BaseHTTPRequestHandler):
        def handle_any(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            status, payload = answer(
                self.command,
                self.path,
                {k.lower(): v for k, v in self.headers.items()},
                self.rfile.read(length),
            )
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = handle_any

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def console_env(**extra: str) -> dict[str, str]:
    """The environment for a `python -m console` process: this machine's, without any console,
    platform or Supabase setting a developer may have exported, plus `extra`."""
    keep = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CONSOLE_", "PARITY_", "SUPABASE_")) and k != "DATABASE_URL"
    }
    return {**keep, **extra}


@dataclass
class ConsoleProcess:
    """A running `python -m console`; its output is filled in once it has stopped."""

    base: str
    process: subprocess.Popen[bytes]
    stdout: str = ""
    stderr: str = ""


@contextmanager
def running_console(env: dict[str, str]) -> Iterator[ConsoleProcess]:
    """`python -m console` on a free loopback port, answering `/healthz`; SIGTERM at the end."""
    with free_port_socket() as sock:
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "console", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    running = ConsoleProcess(f"http://127.0.0.1:{port}", process)
    try:
        for _ in range(STARTUP_POLLS):
            try:
                if httpx.get(f"{running.base}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.02)
        yield running
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=15)
        running.stdout, running.stderr = out.decode(), err.decode()
