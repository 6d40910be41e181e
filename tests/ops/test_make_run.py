"""`make run` end to end: `python -m ops up` migrates, seeds, starts the upstream, gateway, worker
and console, prints keys whose curl works as printed, and stops everything on SIGTERM."""

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
import pytest

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


def test_make_run_serves_every_environment(database_url: str, tmp_path: Path) -> None:
    ports = {name: free_port() for name in ("console", "gateway", "upstream")}
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "RUN_CONSOLE_PORT": str(ports["console"]),
        "RUN_GATEWAY_PORT": str(ports["gateway"]),
        "RUN_UPSTREAM_PORT": str(ports["upstream"]),
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
        finally:
            up.send_signal(signal.SIGTERM)
            try:
                code = up.wait(timeout=30)
            except subprocess.TimeoutExpired:
                up.kill()
                pytest.fail(f"`ops up` did not stop on SIGTERM:\n{log.read_text()}")
    assert code == 0, log.read_text()
    for port in ports.values():
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still served"
