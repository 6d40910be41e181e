"""`python -m console` as a real process: it serves on the port it is given, refuses to start
without a database, and stops cleanly on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx

from tests.console.conftest import STARTUP_POLLS, free_port_socket


def console_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONSOLE_", "PARITY_"))}
    env.pop("DATABASE_URL", None)
    return {**env, **extra}


def test_serves_the_dashboard_and_the_api_then_stops_on_sigterm(database_url: str) -> None:
    with free_port_socket() as sock:
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "console", "--host", "127.0.0.1", "--port", str(port)],
        env=console_env(DATABASE_URL=database_url),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(STARTUP_POLLS):
            try:
                if httpx.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.02)
        signin = httpx.get(f"{base}/signin")
        assert signin.status_code == 200
        assert "Sign in" in signin.text
        assert httpx.get(f"{base}/api/v1/projects").status_code == 401
        assert "/api/v1/projects" in httpx.get(f"{base}/openapi.json").json()["paths"]
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=15)
    # uvicorn shuts down gracefully, then re-raises the signal it caught (so -SIGTERM).
    assert process.returncode in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in err.decode()
    assert f"Console: http://127.0.0.1:{port}/" in out.decode()
    # Without CONSOLE_JWT_SECRET the built-in development secret is used, and said so.
    assert "CONSOLE_JWT_SECRET is the built-in development secret" in err.decode()


def test_refuses_to_start_without_a_database() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "console", "--port", "0"],
        env=console_env(),
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert b"DATABASE_URL is not set" in result.stderr


def test_json_log_format_gives_one_json_object_per_line_uvicorn_included(database_url: str) -> None:
    with free_port_socket() as sock:
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "console", "--host", "127.0.0.1", "--port", str(port)],
        env=console_env(
            DATABASE_URL=database_url, PARITY_LOG_FORMAT="json", CONSOLE_ACCESS_LOG="true"
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(STARTUP_POLLS):
            try:
                if httpx.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.02)
        assert httpx.get(f"{base}/api/v1/projects").status_code == 401
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=15)
    lines = err.decode().splitlines()
    records = [json.loads(line) for line in lines]  # every line, uvicorn's own included
    messages = " ".join(record["record"]["message"] for record in records)
    assert "Application startup complete" in messages
    assert "/api/v1/projects" in messages  # the access log line, through the same format
