"""The shared metrics server: `/metrics` in the text format, extra routes (what a gateway's
/healthz and /readyz use), a refresh at scrape time no more often than asked, a failing refresh
that still answers with the last values, and nothing served when no port is set."""

from __future__ import annotations

import asyncio

import aiohttp
import psycopg
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.parser import text_string_to_metric_families

from shared.metrics import MetricsServer, MetricsSettings, health_routes, serve_metrics
from tests.console.conftest import free_port_socket


class ExampleSettings(MetricsSettings):
    pass


def free_port() -> int:
    with free_port_socket() as sock:
        port: int = sock.getsockname()[1]
        return port


async def test_metrics_routes_and_refresh() -> None:
    registry = CollectorRegistry()
    gauge = Gauge("example_value", "A value set at scrape time.", registry=registry)
    refreshes: list[int] = []
    failing = False

    async def refresh() -> None:
        if failing:
            raise RuntimeError("database down")
        refreshes.append(1)
        gauge.set(len(refreshes))

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    server = MetricsServer(
        host="127.0.0.1",
        port=free_port(),
        registry=registry,
        refresh=refresh,
        min_refresh_seconds=3600,
        routes={"/healthz": healthz},
    )
    await server.start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        async with aiohttp.ClientSession() as http:

            async def scrape() -> float:
                async with http.get(f"{base}/metrics") as answer:
                    assert answer.status == 200
                    assert answer.headers["Content-Type"].startswith("text/plain; version=")
                    families = text_string_to_metric_families(await answer.text())
                return {f.name: f.samples[0].value for f in families}["example_value"]

            assert await scrape() == 1
            assert await scrape() == 1  # within min_refresh_seconds: not read again
            assert len(refreshes) == 1
            server._refreshed_at = None  # as if the interval had passed
            failing = True
            assert await scrape() == 1  # the refresh failed: the last value is served
            async with http.get(f"{base}/healthz") as answer:
                assert answer.status == 200
                assert await answer.json() == {"status": "ok"}
            async with http.get(f"{base}/other") as answer:
                assert answer.status == 404
    finally:
        await server.stop()


async def test_no_port_no_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("METRICS_PORT", raising=False)
    async with serve_metrics(ExampleSettings(_env_file=None)) as server:
        assert server is None
    port = free_port()
    settings = ExampleSettings(_env_file=None, metrics_port=port)
    async with serve_metrics(settings) as server:
        assert server is not None
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{port}/metrics") as answer,
        ):
            assert answer.status == 200
    with pytest.raises(aiohttp.ClientConnectionError):
        async with aiohttp.ClientSession() as http:
            await http.get(f"http://127.0.0.1:{port}/metrics")


async def test_readyz_names_what_is_not_reachable(database_url: str) -> None:
    closed = free_port()  # nothing listens there

    async def database() -> None:
        async with await psycopg.AsyncConnection.connect(database_url, connect_timeout=1) as conn:
            await conn.execute("select 1")

    async def stopped_database() -> None:
        url = f"postgresql://postgres@127.0.0.1:{closed}/postgres"
        async with await psycopg.AsyncConnection.connect(url, connect_timeout=1) as conn:
            await conn.execute("select 1")

    async def hanging() -> None:
        await asyncio.sleep(30)

    cases = [
        ({"database": database}, 200, {"database": "ok"}),
        ({"database": database, "replica": stopped_database}, 503, None),
        ({"database": database, "redis": hanging}, 503, None),
    ]
    async with aiohttp.ClientSession() as http:
        for checks, status, expected in cases:
            port = free_port()
            routes = health_routes(checks, timeout=1.0)
            async with serve_metrics(
                ExampleSettings(_env_file=None, metrics_port=port), routes=routes
            ):
                async with http.get(f"http://127.0.0.1:{port}/healthz") as answer:
                    assert answer.status == 200
                async with http.get(f"http://127.0.0.1:{port}/readyz") as answer:
                    assert answer.status == status
                    body = await answer.json()
            assert body["status"] == ("ready" if status == 200 else "unready")
            assert body["checks"]["database"] == "ok"
            if expected is not None:
                assert body["checks"] == expected
            if "replica" in checks:
                assert "OperationalError" in body["checks"]["replica"]
            if "redis" in checks:
                assert body["checks"]["redis"] == "no answer within 1 s"
