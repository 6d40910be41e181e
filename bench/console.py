"""Console latency: the project list of a user with 100 projects, signed in, under RLS.

`python -m bench.console [--quick] [--check]`. Starts `python -m console` as its own process on a
free loopback port against a fresh, migrated database, then measures sequential requests,
interleaved round-robin so that every figure shares the same moment of a noisy machine:

- reference: `GET /healthz` (the same server, no auth, no database): the HTTP floor;
- `GET /api/v1/me`: JWT verification and the session check (revoked? user still there?: one
  indexed query), no RLS transaction;
- `GET /api/v1/projects`: JWT + a transaction as the user (RLS) + JSON of 100 projects;
- `GET /projects`: the same query rendered by Jinja2 into the dashboard page;
- in this process, the RLS transaction alone over psycopg (the database floor).

Targets (issue #5): page median < 20 ms, API median < 10 ms. `--check` exits 1 when missed.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg

from console.auth import Authenticator
from console.settings import ConsoleSettings
from ops import database
from shared.users import User

PROJECTS = 100
PAGE_TARGET_MS = 20.0
API_TARGET_MS = 10.0
SECRET = "bench-console-secret-of-at-least-32-chars"


@dataclass(frozen=True)
class Figure:
    name: str
    samples: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def p90(self) -> float:
        return statistics.quantiles(self.samples, n=10)[-1]


def seed(url: str) -> User:
    """A user with PROJECTS projects across the three environments (as the service)."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "insert into auth.users (email) values ('bench@example.com') returning id"
        ).fetchone()
        assert row is not None
        user = User(id=row[0], email="bench@example.com")
        environments = ("prod", "dev", "staging")
        with conn.cursor() as cur:
            cur.executemany(
                "insert into public.projects (owner_id, name, environment) values (%s, %s, %s)",
                [(user.id, f"project {i:03}", environments[i % 3]) for i in range(PROJECTS)],
            )
        # A second owner's rows, so that RLS has something to filter out.
        other = conn.execute(
            "insert into auth.users (email) values ('other@example.com') returning id"
        ).fetchone()
        assert other is not None
        with conn.cursor() as cur:
            cur.executemany(
                "insert into public.projects (owner_id, name) values (%s, %s)",
                [(other[0], f"other {i:03}") for i in range(PROJECTS)],
            )
        conn.execute("analyze")
    return user


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_console(url: str, port: int, *, log: Path | None = None) -> subprocess.Popen[bytes]:
    """`python -m console` on `url` and `port`, its log written to `log` (else discarded), once
    it answers."""
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "CONSOLE_JWT_SECRET": SECRET,
        "PARITY_LOG_FORMAT": "text",
    }
    with open(log or os.devnull, "ab") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "console", "--port", str(port)],
            env=env,
            stdout=output,
            stderr=output,
        )
    for _ in range(300):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            break
        time.sleep(0.05)
    process.kill()
    raise SystemExit("the console did not start")


def rls_query(url: str, user: User) -> Callable[[], None]:
    """The list query as the user, in this process: what the database alone costs."""
    conn = psycopg.connect(url, autocommit=True)
    claims = json.dumps({"sub": str(user.id), "role": "authenticated"})

    def run() -> None:
        with conn.transaction():
            conn.execute(
                "select set_config('role', 'authenticated', true),"
                " set_config('request.jwt.claims', %s, true)",
                (claims,),
            )
            rows = conn.execute(
                "select id, owner_id, name, environment, status, rate_limit, request_cap,"
                " created_at, updated_at from public.projects order by created_at desc, id"
            ).fetchall()
            assert len(rows) == PROJECTS

    return run


def measure(rounds: int, probes: dict[str, Callable[[], None]]) -> list[Figure]:
    samples: dict[str, list[float]] = {name: [] for name in probes}
    for _ in range(rounds):
        for name, probe in probes.items():
            started = time.perf_counter()
            probe()
            samples[name].append((time.perf_counter() - started) * 1000)
    return [Figure(name, values) for name, values in samples.items()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.console", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    rounds, warmup = (100, 20) if args.quick else (600, 50)

    admin = database.server_url(
        os.environ.get("BENCH_DATABASE_URL"), database.DATA_DIR / "bench-postgres"
    )
    process = None
    with database.scratch_database(admin, "parity_bench_console") as url:
        try:
            user = seed(url)
            port = free_port()
            process = start_console(url, port)
            token = Authenticator(ConsoleSettings(_env_file=None, jwt_secret=SECRET)).issue(user)
            base = f"http://127.0.0.1:{port}"
            with httpx.Client(base_url=base) as http:
                bearer = {"Authorization": f"Bearer {token}"}
                cookies = {"parity_session": token}

                def get(path: str, **kwargs: object) -> Callable[[], None]:
                    def probe() -> None:
                        response = http.get(path, **kwargs)  # type: ignore[arg-type]
                        response.raise_for_status()

                    return probe

                api_list = get("/api/v1/projects", headers=bearer)
                page = get("/projects", cookies=cookies)
                assert len(http.get("/api/v1/projects", headers=bearer).json()) == PROJECTS
                assert (
                    http.get("/projects", cookies=cookies).text.count("data-project-id=")
                    == PROJECTS
                )
                probes = {
                    "GET /healthz (reference)": get("/healthz"),
                    "GET /api/v1/me (JWT + session check)": get("/api/v1/me", headers=bearer),
                    "GET /api/v1/projects (100, RLS)": api_list,
                    "GET /projects page (100, RLS)": page,
                    "RLS query alone, in-process": rls_query(url, user),
                }
                measure(warmup, probes)
                figures = measure(rounds, probes)
        finally:
            if process is not None:
                process.terminate()
                process.wait(timeout=15)

    reference = figures[0].median
    print(f"console, {PROJECTS} projects, {rounds} sequential rounds (after {warmup} warm-up)")
    print(f"{'what':36} {'median ms':>10} {'p90 ms':>8} {'x reference':>12}")
    for figure in figures:
        print(
            f"{figure.name:36} {figure.median:10.2f} {figure.p90:8.2f}"
            f" {figure.median / reference:12.1f}"
        )
    by_name = {figure.name: figure for figure in figures}
    page_ms = by_name["GET /projects page (100, RLS)"].median
    api_ms = by_name["GET /api/v1/projects (100, RLS)"].median
    met = page_ms < PAGE_TARGET_MS and api_ms < API_TARGET_MS
    print(
        f"targets: page {page_ms:.2f} < {PAGE_TARGET_MS} ms, API {api_ms:.2f} < {API_TARGET_MS} ms:"
        f" {'met' if met else 'MISSED'}"
    )
    return 1 if args.check and not met else 0


if __name__ == "__main__":
    sys.exit(main())
