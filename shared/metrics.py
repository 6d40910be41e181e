"""Prometheus metrics on a port of their own, for every process.

Each process defines its metrics with `prometheus_client` (module-level objects in the default
registry) and serves them with :func:`serve_metrics` on `<PROCESS>_METRICS_PORT`: unset, nothing
listens. The server runs in the process's own event loop, so a `refresh` coroutine can read the
database at scrape time (rate-limited by `min_refresh_seconds`) and extra `routes` (a gateway's
`/healthz` and `/readyz`) can use the process's own pools.

Labels stay bounded: environments, outcomes, codes, route templates; never a project or key id.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager

from aiohttp import web
from loguru import logger
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Refresh = Callable[[], Awaitable[None]]
Check = Callable[[], Awaitable[object]]
"""A readiness check: returns when the dependency answers, raises (or outlasts the timeout) when
it does not."""


class MetricsSettings(BaseSettings):
    """Where a process serves its metrics. Subclasses set the prefix (`WORKER_`, `CONSOLE_`...),
    so the variables read are `<PREFIX>METRICS_PORT` and `<PREFIX>METRICS_HOST`."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)

    metrics_port: int | None = Field(
        default=None, ge=1, le=65535, description="Port of /metrics; unset: no metrics server."
    )
    metrics_host: str = Field(
        default="127.0.0.1", description="Address the metrics server binds (0.0.0.0: all)."
    )


class MetricsServer:
    """`/metrics` (text exposition format) and any extra routes, on an aiohttp server."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        registry: CollectorRegistry = REGISTRY,
        refresh: Refresh | None = None,
        min_refresh_seconds: float = 5.0,
        routes: Mapping[str, Handler] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self._registry = registry
        self._refresh = refresh
        self._min_refresh_seconds = min_refresh_seconds
        self._refreshed_at: float | None = None
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        for path, handler in (routes or {}).items():
            app.router.add_get(path, handler)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)

    async def start(self) -> None:
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        logger.info("metrics at http://{}:{}/metrics", self.host, self.port)

    async def stop(self) -> None:
        await self._runner.cleanup()

    async def _metrics(self, request: web.Request) -> web.Response:
        await self._maybe_refresh()
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _maybe_refresh(self) -> None:
        if self._refresh is None:
            return
        now = time.monotonic()
        if self._refreshed_at is not None and now - self._refreshed_at < self._min_refresh_seconds:
            return
        self._refreshed_at = now
        try:
            await self._refresh()
        except Exception as exc:  # a scrape still answers, with the last values
            logger.warning("refreshing metrics failed: {!r}", exc)


def health_routes(checks: Mapping[str, Check], *, timeout: float = 1.0) -> dict[str, Handler]:
    """`/healthz` (the process answers) and `/readyz` (every check passes within `timeout`
    seconds, run side by side; else 503 naming what failed), for the metrics server's `routes`."""

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def run(check: Check) -> str:
        try:
            async with asyncio.timeout(timeout):
                await check()
        except TimeoutError:
            return f"no answer within {timeout:g} s"
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}".strip()
        return "ok"

    async def readyz(request: web.Request) -> web.Response:
        results = await asyncio.gather(*(run(check) for check in checks.values()))
        found = dict(zip(checks, results, strict=True))
        ready = all(result == "ok" for result in found.values())
        return web.json_response(
            {"status": "ready" if ready else "unready", "checks": found},
            status=200 if ready else 503,
        )

    return {"/healthz": healthz, "/readyz": readyz}


@asynccontextmanager
async def serve_metrics(
    settings: MetricsSettings,
    *,
    refresh: Refresh | None = None,
    min_refresh_seconds: float = 5.0,
    routes: Mapping[str, Handler] | None = None,
) -> AsyncIterator[MetricsServer | None]:
    """Serve metrics while the block runs, if `settings` name a port; yields the server or None."""
    if settings.metrics_port is None:
        yield None
        return
    server = MetricsServer(
        host=settings.metrics_host,
        port=settings.metrics_port,
        refresh=refresh,
        min_refresh_seconds=min_refresh_seconds,
        routes=routes,
    )
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
