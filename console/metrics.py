"""The console's Prometheus metrics (requests by route template and status), served on
`CONSOLE_METRICS_PORT` (unset: off), and the process's access-log setting."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import Counter, Histogram
from pydantic import Field
from pydantic_settings import SettingsConfigDict
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.metrics import MetricsSettings


class ConsoleProcessSettings(MetricsSettings):
    """`CONSOLE_METRICS_PORT`, `CONSOLE_METRICS_HOST` and `CONSOLE_ACCESS_LOG`."""

    model_config = SettingsConfigDict(
        env_prefix="CONSOLE_", env_file=".env", extra="ignore", frozen=True
    )

    access_log: bool = Field(
        default=False,
        description="uvicorn's own line per request (its format, not the console's); the"
        " request metrics count requests without it.",
    )


UNMATCHED = "unmatched"
"""The route label of a request no route matched (404s of any path): paths stay out of labels."""

REQUESTS = Counter(
    "parity_console_requests",
    "Console HTTP requests by route template, method and status.",
    ["route", "method", "status"],
)
DURATION = Histogram(
    "parity_console_request_duration_seconds",
    "Time the console took to answer, by route template and method.",
    ["route", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def route_template(scope: Scope) -> str:
    """The matched route's path template (`/api/projects/{project_id}`), never the raw path."""
    route: Any = scope.get("route")
    template = getattr(route, "path", None)
    if isinstance(template, str):
        return template
    mount = scope.get("app_root_path") or ""
    root = scope.get("root_path") or ""
    # A mounted app (static files) leaves its mount point in root_path.
    if root and root != mount:
        return f"{root}/{{path}}"
    return UNMATCHED


class RequestMetrics:
    """ASGI middleware counting and timing every HTTP request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = route_template(scope)
            method = scope["method"] if scope["method"] in _METHODS else "OTHER"
            REQUESTS.labels(route, method, str(status)).inc()
            DURATION.labels(route, method).observe(time.perf_counter() - started)
