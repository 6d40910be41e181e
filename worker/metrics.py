"""The worker's Prometheus metrics, served on `WORKER_METRICS_PORT` (unset: off).

Counters move where the work happens (one line each in the dispatcher and the sweep); the queue
gauges are read from the database when scraped, at most every `WORKER_METRICS_REFRESH_SECONDS`,
with a query that reads only pending deliveries.
"""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Final, ParamSpec, TypeVar

from prometheus_client import Counter, Gauge, Histogram
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared import status
from shared.db import Database
from shared.environment import Environment
from shared.metrics import MetricsServer, MetricsSettings, serve_metrics
from shared.settings import PlatformSettings

P = ParamSpec("P")
T = TypeVar("T")


class WorkerMetricsSettings(MetricsSettings):
    """`WORKER_METRICS_PORT`, `WORKER_METRICS_HOST`, `WORKER_METRICS_REFRESH_SECONDS`."""

    model_config = SettingsConfigDict(
        env_prefix="WORKER_", env_file=".env", extra="ignore", frozen=True
    )

    metrics_refresh_seconds: float = Field(
        default=5.0, ge=0, description="Queue gauges are read from the database at most this often."
    )


ATTEMPT_OUTCOMES: Final = {
    "succeeded": "succeeded",
    "pending": "failed",  # a retry is scheduled
    "exhausted": "exhausted",
    "cancelled": "gone",  # the receiver answered 410: the endpoint is disabled
}

ATTEMPTS = Counter(
    "parity_webhook_attempts",
    "HTTP attempts made to deliver webhooks, by outcome.",
    ["environment", "outcome"],
)
DELIVERIES = Gauge(
    "parity_webhook_deliveries",
    "Pending webhook deliveries: due (waiting), in_flight (leased by a worker: being sent or"
    " held to be sent next) or scheduled (a later retry).",
    ["environment", "state"],
)
OLDEST_DUE = Gauge(
    "parity_webhook_oldest_due_seconds",
    "How long the oldest due delivery has been waiting (0: none is due).",
)
SWEEP_DURATION = Histogram(
    "parity_autosuspend_sweep_duration_seconds",
    "Time one auto-suspend sweep (all its batches) took.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
AUTOSUSPEND_ACTIONS = Counter(
    "parity_autosuspend_actions",
    "Projects acted on by the sweep: suspended, or warned with project.cap_exceeded.",
    ["environment", "action"],
)

AUDIT_PURGED = Counter(
    "parity_audit_entries_purged",
    "Audit trail entries deleted by the retention job (older than WORKER_AUDIT_RETENTION_DAYS).",
)

# Every series exists from the start (a scrape shows zeros, not gaps); the attempt counters are
# looked up once here, since `labels()` costs more than the increment on the delivery path.
_ATTEMPT_COUNTERS: Final = {
    (env, outcome): ATTEMPTS.labels(env.value, label)
    for env in Environment
    for outcome, label in ATTEMPT_OUTCOMES.items()
}
for _env in Environment:
    for _action in ("suspended", "cap_exceeded"):
        AUTOSUSPEND_ACTIONS.labels(_env.value, _action)


def count_attempt(environment: Environment, outcome: str) -> None:
    """One HTTP attempt finished with the delivery `outcome` it leads to."""
    counter = _ATTEMPT_COUNTERS.get((environment, outcome))
    if counter is None:
        counter = _ATTEMPT_COUNTERS[environment, "pending"]
    counter.inc()


def count_sweep_actions(*, suspended: Iterable[Environment], warned: Iterable[Environment]) -> None:
    """What one sweep batch did: a project's environment per suspension and per warning."""
    for env in suspended:
        AUTOSUSPEND_ACTIONS.labels(env.value, "suspended").inc()
    for env in warned:
        AUTOSUSPEND_ACTIONS.labels(env.value, "cap_exceeded").inc()


def timed_sweep(func: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Observe each call's duration in `parity_autosuspend_sweep_duration_seconds`."""

    @functools.wraps(func)
    async def timed(*args: P.args, **kwargs: P.kwargs) -> T:
        started = time.perf_counter()
        try:
            return await func(*args, **kwargs)
        finally:
            SWEEP_DURATION.observe(time.perf_counter() - started)

    return timed


async def refresh_queue(db: Database) -> None:
    """Set the queue gauges from the database (states with no delivery read 0)."""
    async with db.as_service() as conn:
        await conn.execute("set local statement_timeout = '2s'")
        queue = await status.queue(conn)
    for env in Environment:
        for state in status.QUEUE_STATES:
            DELIVERIES.labels(env.value, state).set(queue.counts.get((env, state), 0))
    OLDEST_DUE.set(queue.oldest_due_seconds)


@asynccontextmanager
async def serve(
    platform: PlatformSettings, settings: WorkerMetricsSettings
) -> AsyncIterator[MetricsServer | None]:
    """Serve the worker's metrics while the block runs (nothing when no port is set)."""
    if settings.metrics_port is None:
        yield None
        return
    # One connection of its own: a scrape never waits behind the dispatcher's pool.
    async with Database(
        platform.database_url,
        min_size=1,
        max_size=1,
        name="worker-metrics",
        prepared_statements=platform.db_prepared_statements,
    ) as db:

        async def refresh() -> None:
            await refresh_queue(db)

        async with serve_metrics(
            settings, refresh=refresh, min_refresh_seconds=settings.metrics_refresh_seconds
        ) as server:
            yield server
