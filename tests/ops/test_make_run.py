"""`make run` end to end: `python -m ops up` migrates, seeds, starts the upstream, gateway, worker
and console, prints keys whose curl works as printed, serves metrics where it says, lets `parity`
commands in another shell find its database with nothing exported, and stops everything on
SIGTERM."""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(url: str, deadline: float) -> httpx.Response:
    while True:
        try:
            return httpx.get(url, timeout=2)
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.mark.slow(11)
def test_make_run_serves_every_environment(database_url: str, tmp_path: Path) -> None:
    names = (
        "console",
        "gateway",
        "upstream",
        "gateway_metrics",
        "worker_metrics",
        "console_metrics",
    )
    ports = {name: free_port() for name in names}
    state_file = tmp_path / "run.json"
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        **{f"RUN_{name.upper()}_PORT": str(port) for name, port in ports.items()},
        "RUN_STATE_FILE": str(state_file),
        "PYTHONUNBUFFERED": "1",
    }
    log = tmp_path / "up.log"
    with log.open("wb") as out:
        up = subprocess.Popen(
            [sys.executable, "-m", "ops", "up"], cwd=REPO_ROOT, env=env, stdout=out, stderr=out
        )
        try:
            deadline = time.monotonic() + 60
            while "Ctrl-C stops everything" not in log.read_text():
                assert up.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
            output = log.read_text()
            curls = re.findall(r"^\s+(curl .+)$", output, flags=re.MULTILINE)
            assert len(curls) == 3, output
            assert [re.search(r"nm_(\w+?)_sk_", c)[1] for c in curls] == [  # type: ignore[index]
                "live",
                "dev",
                "staging",
            ]

            console = wait_for(f"http://127.0.0.1:{ports['console']}/healthz", deadline)
            assert console.status_code == 200
            for curl, environment in zip(curls, ["prod", "dev", "staging"], strict=True):
                wait_for(f"http://127.0.0.1:{ports['gateway']}/", deadline)
                result = subprocess.run(
                    shlex.split(curl), capture_output=True, text=True, timeout=10, check=True
                )
                echoed = httpx.Response(200, content=result.stdout).json()
                assert echoed["path"] == "/hello"
                assert environment in echoed["identity"].values(), echoed

            check = subprocess.run(
                [sys.executable, "-m", "worker", "--check"],
                cwd=REPO_ROOT,
                env=env,
                capture_output=True,
                timeout=30,
                check=False,
            )
            assert check.returncode == 0, check.stderr

            assert "[Y/n]" not in output
            assert f"export DATABASE_URL={shlex.quote(database_url)}" in output

            # Another shell, nothing exported: `parity` finds the running database.
            with psycopg.connect(database_url) as conn:
                row = conn.execute(
                    "select id from public.projects where name = 'Demo Production'"
                ).fetchone()
            assert row is not None
            bare = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
            listing = subprocess.run(
                [sys.executable, "-m", "ops", "keys", "list", "--project", str(row[0])],
                cwd=REPO_ROOT,
                env={**bare, "RUN_STATE_FILE": str(state_file)},
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert listing.returncode == 0, listing.stderr
            assert " prod  active " in listing.stdout, listing.stdout

            for name, expected in (
                ("gateway_metrics", "parity_gateway_requests"),
                ("worker_metrics", "parity_webhook_attempts"),
                ("console_metrics", "parity_console_requests"),
            ):
                url = f"http://127.0.0.1:{ports[name]}/metrics"
                assert url in output
                families = {
                    f.name for f in text_string_to_metric_families(wait_for(url, deadline).text)
                }
                assert expected in families
            ready = wait_for(f"http://127.0.0.1:{ports['gateway_metrics']}/readyz", deadline)
            assert ready.status_code == 200, ready.text
        finally:
            up.send_signal(signal.SIGTERM)
            try:
                code = up.wait(timeout=30)
            except subprocess.TimeoutExpired:
                up.kill()
                pytest.fail(f"`ops up` did not stop on SIGTERM:\n{log.read_text()}")
    assert code == 0, log.read_text()
    assert not state_file.exists()
    for port in ports.values():
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still served"
