"""`python -m console` as a real process: it serves on the port it is given, refuses to start
without a database, and stops cleanly on SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import httpx

from tests.console.conftest import console_env, running_console


def test_serves_the_dashboard_and_the_api_then_stops_on_sigterm(database_url: str) -> None:
    with running_console(console_env(DATABASE_URL=database_url)) as console:
        base = console.base
        signin = httpx.get(f"{base}/signin")
        assert signin.status_code == 200
        assert "Sign in" in signin.text
        assert httpx.get(f"{base}/api/v1/projects").status_code == 401
        assert "/api/v1/projects" in httpx.get(f"{base}/openapi.json").json()["paths"]
    # uvicorn shuts down gracefully, then re-raises the signal it caught (so -SIGTERM).
    assert console.process.returncode in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in console.stderr
    assert f"Console: {base}/" in console.stdout
    # Without CONSOLE_JWT_SECRET the built-in development secret is used, and said so.
    assert "CONSOLE_JWT_SECRET is the built-in development secret" in console.stderr


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
    env = console_env(
        DATABASE_URL=database_url, PARITY_LOG_FORMAT="json", CONSOLE_ACCESS_LOG="true"
    )
    with running_console(env) as console:
        assert httpx.get(f"{console.base}/api/v1/projects").status_code == 401
    records = [json.loads(line) for line in console.stderr.splitlines()]  # uvicorn's included
    messages = " ".join(record["record"]["message"] for record in records)
    assert "Application startup complete" in messages
    assert "/api/v1/projects" in messages  # the access log line, through the same format
