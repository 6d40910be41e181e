"""`make run`: the whole product on one machine, on embedded defaults when nothing is configured."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from ops import database
from shared.settings import PlatformSettings


@dataclass(frozen=True)
class ProcessSpec:
    """A process `up` starts and watches: `python -m <module> <args>`."""

    name: str
    module: str
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)


def resolve_database(settings: PlatformSettings) -> tuple[str, bool]:
    """The database to use and whether it is the embedded one."""
    if settings.database_url:
        return settings.database_url, False
    return database.start_embedded(), True


def processes() -> list[ProcessSpec]:
    """What `make run` starts beside the database."""
    return []


def run(specs: list[ProcessSpec], env: dict[str, str]) -> int:
    """Start every process, stop them all when one exits or on Ctrl-C; return an exit code."""
    children: dict[str, subprocess.Popen[bytes]] = {}
    for spec in specs:
        children[spec.name] = subprocess.Popen(
            [sys.executable, "-m", spec.module, *spec.args], env={**env, **spec.env}
        )
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    exit_code = 0
    try:
        while not stopping:
            for name, child in children.items():
                code = child.poll()
                if code is not None:
                    print(f"{name} exited with code {code}; stopping the others", flush=True)
                    exit_code = code or 1
                    stopping = True
                    break
            time.sleep(0.2)
    finally:
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children.values():
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()
    return exit_code


def main() -> int:
    settings = PlatformSettings()
    url, embedded = resolve_database(settings)
    where = "embedded Postgres (pgserver)" if embedded else "DATABASE_URL"
    print(f"Database ({where}): {url}", flush=True)
    try:
        if embedded:
            database.bootstrap(url)
        print(database.push_migrations(url), flush=True)
        print("Applied migrations:", ", ".join(database.applied_migrations(url)), flush=True)

        specs = processes()
        if not specs:
            print("Database ready. Press Ctrl-C to stop.", flush=True)
        env = {**os.environ, "DATABASE_URL": url}
        return run(specs, env) if specs else _wait_for_ctrl_c()
    finally:
        if embedded:
            database.stop_embedded()


def _wait_for_ctrl_c() -> int:
    with contextlib.suppress(KeyboardInterrupt):
        signal.pause()
    return 0
