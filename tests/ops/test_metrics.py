"""Prometheus metrics scraped from real processes while real traffic flows, parsed with
prometheus_client's own parser: counters move by exactly the requests and attempts made, and
labels stay bounded (no project, key or delivery id, no raw path)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from shared.db import Database
from shared.environment import Environment
from tests.console.conftest import free_port_socket
from tests.worker.conftest import (
    MakeProject,
    Receiver,
    add_endpoint,
    add_usage,
    always,
    emit_events,
    eventually,
    make_project,
    serving,
    status_counts,
    stop_process,
    worker_env,
)
from worker import metrics as worker_metrics

__all__ = ["make_project"]  # fixture used here

REPO_ROOT = Path(__file__).resolve().parents[2]
UUID_PATTERN = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
ENVIRONMENTS = {env.value for env in Environment}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition, keyed by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def scrape(port: int) -> str:
    answer = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    return answer.text


def free_port() -> int:
    with free_port_socket() as sock:
        port: int = sock.getsockname()[1]
        return port


def wait_for_http(url: str, process: subprocess.Popen[bytes], within: float = 60) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.TransportError:
            assert process.poll() is None, "the process exited"
            assert time.monotonic() < deadline, f"{url} did not answer within {within:g} s"
            time.sleep(0.05)


@pytest.fixture
def console(database_url: str) -> Iterator[tuple[str, int]]:
    """`python -m console` with its metrics on a port of their own: (base URL, metrics port)."""
    port, metrics_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONSOLE_", "PARITY_"))}
    process = subprocess.Popen(
        [sys.executable, "-m", "console", "--host", "127.0.0.1", "--port", str(port)],
        cwd=REPO_ROOT,
        env={**env, "DATABASE_URL": database_url, "CONSOLE_METRICS_PORT": str(metrics_port)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/healthz", process)
        wait_for_http(f"http://127.0.0.1:{metrics_port}/metrics", process)
        yield f"http://127.0.0.1:{port}", metrics_port
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=20)
        # The access log is off by default: no uvicorn line per request.
        assert '"GET /healthz HTTP/1.1" 200' not in err.decode()


def test_console_counts_requests_by_route_template_and_status(
    console: tuple[str, int],
) -> None:
    base, metrics_port = console
    before = parse(scrape(metrics_port))
    with httpx.Client(base_url=base, timeout=10) as client:
        for _ in range(7):
            assert client.get("/healthz").status_code == 200
        for _ in range(3):
            assert client.get("/api/v1/projects").status_code == 401
        for _ in range(4):
            assert client.get(f"/api/v1/projects/{uuid.uuid4()}").status_code == 401
        for _ in range(5):
            assert client.get(f"/no/such/page/{uuid.uuid4()}").status_code == 404
        for _ in range(2):
            assert client.get("/static/console.css").status_code == 200
        assert client.get(f"/static/{uuid.uuid4()}.css").status_code == 404
    text = scrape(metrics_port)
    after = parse(text)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    requests = "parity_console_requests_total"
    assert moved(requests, route="/healthz", method="GET", status="200") == 7
    assert moved(requests, route="/api/v1/projects", method="GET", status="401") == 3
    assert moved(requests, route="/api/v1/projects/{project_id}", method="GET", status="401") == 4
    assert moved(requests, route="unmatched", method="GET", status="404") == 5
    assert moved(requests, route="/static/{path}", method="GET", status="200") == 2
    assert moved(requests, route="/static/{path}", method="GET", status="404") == 1
    durations = "parity_console_request_duration_seconds_count"
    assert moved(durations, route="/healthz", method="GET") == 7
    # Bounded labels: templates, never the ids or paths requested.
    assert not UUID_PATTERN.search(text)
    assert "/no/such/page" not in text
    routes = {dict(labels)["route"] for (name, labels) in after if name == requests}
    assert all(route == "unmatched" or route.startswith("/") for route in routes)


async def test_worker_counts_attempts_and_sweep_actions(
    database_url: str, db: Database, make_project: MakeProject
) -> None:
    metrics_port = free_port()
    async with (
        serving(Receiver()) as ok,
        serving(Receiver(respond=always(500))) as failing,
    ):
        prod = await make_project("prod")
        await add_endpoint(db, prod, ok)
        delivered = await emit_events(db, prod, count=5)
        staging = await make_project("staging")
        await add_endpoint(db, staging, failing)
        exhausted = await emit_events(db, staging, count=1)
        later = await make_project("dev")
        await add_endpoint(db, later, ok)
        scheduled = await emit_events(db, later, count=1)
        async with db.as_service() as conn:
            await conn.execute(
                "update public.webhook_deliveries set next_attempt_at = now() + interval '1 hour'"
                " where id = %s",
                (scheduled[0],),
            )
        now = datetime.now(UTC)
        over_prod = await make_project("prod")
        await add_usage(db, over_prod, requests=150, request_cap=100, window_start=now)
        over_dev = await make_project("dev")
        await add_usage(db, over_dev, requests=150, request_cap=100, window_start=now)

        process = await asyncio.to_thread(
            subprocess.Popen,
            [sys.executable, "-m", "worker"],
            cwd=REPO_ROOT,
            env=worker_env(database_url, metrics_port=metrics_port, metrics_refresh_seconds=0),
        )
        try:

            async def done() -> bool:
                counts = await status_counts(db)
                return counts.get("succeeded") == len(delivered) and counts.get("exhausted") == 1

            await eventually(done, within=60, what="deliveries succeeding and exhausting")

            async def swept() -> bool:
                async with db.as_service() as conn:
                    cur = await conn.execute(
                        "select count(*) as n from public.usage_counters"
                        " where handled_at is not null"
                    )
                    row = await cur.fetchone()
                return row is not None and row["n"] == 2

            await eventually(swept, within=60, what="the sweep handling both violators")
            text = await asyncio.to_thread(scrape, metrics_port)
        finally:
            assert await stop_process(process) == 0

    samples = parse(text)
    attempts = "parity_webhook_attempts_total"
    assert value(samples, attempts, environment="prod", outcome="succeeded") == 5
    # staging: 6 attempts in all, the last one exhausting the delivery.
    assert value(samples, attempts, environment="staging", outcome="failed") == 5
    assert value(samples, attempts, environment="staging", outcome="exhausted") == 1
    async with db.as_service() as conn:
        cur = await conn.execute("select count(*) as n from public.webhook_attempts")
        row = await cur.fetchone()
    assert row is not None
    total = sum(v for (name, _), v in samples.items() if name == attempts)
    assert total == row["n"] == 11
    actions = "parity_autosuspend_actions_total"
    assert value(samples, actions, environment="prod", action="suspended") == 1
    assert value(samples, actions, environment="dev", action="cap_exceeded") == 1
    assert sum(v for (name, _), v in samples.items() if name == actions) == 2
    assert value(samples, "parity_autosuspend_sweep_duration_seconds_count") >= 1
    deliveries = "parity_webhook_deliveries"
    assert value(samples, deliveries, environment="dev", state="scheduled") == 1
    assert sum(v for (name, _), v in samples.items() if name == deliveries) == 1
    assert value(samples, "parity_webhook_oldest_due_seconds") == 0
    assert exhausted and not UUID_PATTERN.search(text)
    for (name, labels), _ in samples.items():
        if name.startswith("parity_"):
            found = dict(labels)
            assert set(found) <= {"environment", "outcome", "state", "action", "le"}, name
            assert found.get("environment", "prod") in ENVIRONMENTS


async def test_queue_gauges_read_pending_deliveries(
    db: Database, make_project: MakeProject
) -> None:
    async with serving(Receiver()) as receiver:
        project = await make_project("prod")
        await add_endpoint(db, project, receiver)
        due_late, due, leased, scheduled = await emit_events(db, project, count=4)
    async with db.as_service() as conn:
        await conn.execute(
            "update public.webhook_deliveries set next_attempt_at = now() - interval '120 seconds'"
            " where id = %s",
            (due_late,),
        )
        await conn.execute(
            "update public.webhook_deliveries set lease_expires_at = now() + interval '1 minute',"
            " leased_by = 'elsewhere' where id = %s",
            (leased,),
        )
        await conn.execute(
            "update public.webhook_deliveries set next_attempt_at = now() + interval '1 hour'"
            " where id = %s",
            (scheduled,),
        )
    await worker_metrics.refresh_queue(db)
    samples = parse(generate_latest(REGISTRY).decode())
    deliveries = "parity_webhook_deliveries"
    assert value(samples, deliveries, environment="prod", state="due") == 2
    assert value(samples, deliveries, environment="prod", state="in_flight") == 1
    assert value(samples, deliveries, environment="prod", state="scheduled") == 1
    assert value(samples, deliveries, environment="dev", state="due") == 0
    oldest = value(samples, "parity_webhook_oldest_due_seconds")
    assert 120 <= oldest < 120 + 60
    assert due
