"""`make run`: the whole product on one machine, on embedded defaults when nothing is configured.

Starts (or uses) the database, applies the migrations, seeds a demo (one project per environment,
a key each, printed once), then runs the demo upstream, the gateway, the worker and the console as
separate processes until Ctrl-C or until one of them exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from ops import database
from ops.demo import DemoKey, seed_demo_counting
from shared.db import Database
from shared.settings import PlatformSettings


class RunSettings(BaseSettings):
    """Where `make run` puts each process (env prefix `RUN_`)."""

    model_config = SettingsConfigDict(env_prefix="RUN_", extra="ignore", frozen=True)

    host: str = "127.0.0.1"
    console_port: int = Field(default=8000, ge=1, le=65535)
    gateway_port: int = Field(default=8080, ge=1, le=65535)
    upstream_port: int = Field(default=8081, ge=1, le=65535)
    gateway_metrics_port: int = Field(default=9100, ge=1, le=65535)
    worker_metrics_port: int = Field(default=9101, ge=1, le=65535)
    console_metrics_port: int = Field(default=9102, ge=1, le=65535)
    seed_demo: bool = True
    state_file: Path = Field(
        default=database.DATA_DIR / "run.json",
        description="Where a running `make run` records its database for `parity` commands.",
    )


def record_running_database(path: Path, url: str) -> None:
    """Let `parity` commands in other shells find this run's database (owner-only file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump({"pid": os.getpid(), "database_url": url}, out)


def running_database_url(path: Path) -> str | None:
    """The database of the `make run` that is running now, if one is."""
    try:
        state = json.loads(path.read_text())
        os.kill(int(state["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None  # no file, unreadable, or its `make run` has ended
    url = state.get("database_url")
    return url if isinstance(url, str) and url else None


@dataclass(frozen=True)
class ProcessSpec:
    """A process `up` starts and watches: `python -m <module> <args>`."""

    name: str
    module: str
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)


def processes(run: RunSettings) -> list[ProcessSpec]:
    """What `make run` starts beside the database."""
    upstream_url = f"http://{run.host}:{run.upstream_port}"
    return [
        ProcessSpec(
            "upstream", "ops.demo_upstream", ("--host", run.host, "--port", str(run.upstream_port))
        ),
        ProcessSpec(
            "gateway",
            "gateway",
            ("--host", run.host, "--port", str(run.gateway_port)),
            {
                "GATEWAY_UPSTREAM_URL": os.environ.get("GATEWAY_UPSTREAM_URL", upstream_url),
                "GATEWAY_METRICS_HOST": run.host,
                "GATEWAY_METRICS_PORT": str(run.gateway_metrics_port),
            },
        ),
        # Local receivers (a webhook.site stand-in on localhost) are the norm on a laptop.
        ProcessSpec(
            "worker",
            "worker",
            env={
                "WORKER_ALLOW_PRIVATE_TARGETS": os.environ.get(
                    "WORKER_ALLOW_PRIVATE_TARGETS", "true"
                ),
                "WORKER_METRICS_HOST": run.host,
                "WORKER_METRICS_PORT": str(run.worker_metrics_port),
            },
        ),
        ProcessSpec(
            "console",
            "console",
            ("--host", run.host, "--port", str(run.console_port)),
            {
                "CONSOLE_METRICS_HOST": run.host,
                "CONSOLE_METRICS_PORT": str(run.console_metrics_port),
            },
        ),
    ]


def supervise(specs: list[ProcessSpec], env: dict[str, str]) -> int:
    """Start every process, stop them all when one exits or on Ctrl-C; return an exit code."""
    children: dict[str, subprocess.Popen[bytes]] = {}
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    exit_code = 0
    try:
        for spec in specs:
            children[spec.name] = subprocess.Popen(
                [sys.executable, "-m", spec.module, *spec.args], env={**env, **spec.env}
            )
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


async def _seed(url: str) -> tuple[list[DemoKey], int]:
    async with Database(url, min_size=1, max_size=1, actor="operator") as db:
        return await seed_demo_counting(db)


def print_banner(
    run: RunSettings, keys: list[DemoKey], *, revoked: int = 0, database_url: str = ""
) -> None:
    gateway_url = f"http://{run.host}:{run.gateway_port}"
    lines = ["", "Demo keys (shown once; every `make run` issues new ones):"]
    if revoked:
        lines.append(
            f"  The {revoked} demo keys printed by earlier runs were revoked: their curls now"
            " answer 401 INVALID_API_KEY."
        )
    for key in keys:
        lines.append(f"  {key.project_name} [{key.environment.value}]")
        lines.append(f"    {key.curl(gateway_url)}")
    lines += [
        "",
        f"Gateway: {gateway_url}  (forwards to the demo upstream)",
        f"Console: http://{run.host}:{run.console_port}/",
        f"Metrics: gateway http://{run.host}:{run.gateway_metrics_port}/metrics"
        f" (and /healthz, /readyz), worker http://{run.host}:{run.worker_metrics_port}/metrics,"
        f" console http://{run.host}:{run.console_metrics_port}/metrics",
        "  Sign in with any email and a password of 8+ characters: the first sign-in creates the",
        "  account. Sign in as demo@example.com to see the demo projects (your first password",
        "  becomes its password).",
        "",
        "`parity` commands find this database while `make run` is up; elsewhere:",
        f"  export DATABASE_URL={shlex.quote(database_url)}",
        "",
        "Ctrl-C stops everything.",
        "",
    ]
    print("\n".join(lines), flush=True)


def main() -> int:
    settings = PlatformSettings()
    run = RunSettings()
    embedded = not settings.database_url
    try:
        url = database.start_embedded() if embedded else settings.database_url
        where = "embedded Postgres (pgserver)" if embedded else "DATABASE_URL"
        print(f"Database ({where}): {url}", flush=True)
        try:
            if embedded:
                database.bootstrap(url)
            else:
                database.require_supabase_parts(url)
            print(database.push_migrations(url), flush=True)
            print("Applied migrations:", ", ".join(database.applied_migrations(url)), flush=True)
            keys, revoked = asyncio.run(_seed(url)) if run.seed_demo else ([], 0)
        except (database.ProvisioningError, psycopg.Error) as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)
            return 2
        record_running_database(run.state_file, url)
        print_banner(run, keys, revoked=revoked, database_url=url)
        try:
            return supervise(processes(run), {**os.environ, "DATABASE_URL": url})
        finally:
            with contextlib.suppress(FileNotFoundError):
                run.state_file.unlink()
    finally:
        if embedded:
            with contextlib.suppress(Exception):
                database.stop_embedded()
