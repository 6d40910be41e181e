"""The worker process: named tasks (sweeper, dispatcher, heartbeat, listener, the audit trail's
retention job) and a monitor that stops the process loudly if one of them dies, rather than
limping on without it."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import socket
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from loguru import logger
from psycopg.rows import dict_row

from shared import audit
from shared.db import Database
from shared.environment import Environment
from shared.errors import DatabaseUnavailable, ParityError
from shared.settings import PlatformSettings
from worker import autosuspend, heartbeat, metrics
from worker.autosuspend import SweepResult
from worker.dispatcher import Dispatcher, wait_any
from worker.errors import is_transient
from worker.listener import listen
from worker.outage import Outage
from worker.retry import build_policies, schedule_summary
from worker.sender import Sender
from worker.settings import WorkerSettings

EXIT_OK = 0
EXIT_TASK_DIED = 1
EXIT_CONFIG = 2
"""The database refuses us for a reason waiting cannot fix (unknown database or role, bad URL)."""

# Connection failures that mean the configuration is wrong, not that the database is away. libpq
# gives no SQLSTATE for these, only its message.
_UNFIXABLE = ("does not exist", "password authentication failed", "no pg_hba.conf entry")


async def purge_audit_trail(
    db: Database, settings: WorkerSettings, stop: asyncio.Event | None = None
) -> int:
    """The audit trail's retention job: delete entries older than the retention, a batch per
    transaction, until a batch comes back short; how many were deleted."""
    retention = timedelta(days=settings.audit_retention_days)
    total = 0
    while stop is None or not stop.is_set():
        async with db.as_service() as conn:
            purged = await audit.purge(
                conn, retention=retention, batch_size=settings.audit_purge_batch_size
            )
        total += purged
        metrics.AUDIT_PURGED.inc(purged)
        if purged < settings.audit_purge_batch_size:
            break
    return total


class Unfixable(Exception):
    """The database cannot be used as configured; retrying will not help."""


async def wait_for_database(url: str, stop: asyncio.Event, outage: Outage) -> None:
    """Return once the database accepts a connection; until then log once and keep trying (every
    second or so), or raise :class:`Unfixable` when the configuration itself is wrong."""
    while not stop.is_set():
        try:
            conn = await psycopg.AsyncConnection.connect(url, connect_timeout=3)
        except psycopg.ProgrammingError as exc:
            raise Unfixable(f"DATABASE_URL is not usable: {exc}") from None
        except psycopg.OperationalError as exc:
            message = str(exc).strip()
            if any(marker in message for marker in _UNFIXABLE):
                raise Unfixable(message) from None
            outage.failed("connecting at start", exc)
            await wait_any(stop, seconds=1.0)
            continue
        await conn.close()
        outage.ok()
        return


@metrics.timed_sweep
async def sweep(db: Database, settings: WorkerSettings) -> SweepResult:
    """Sweep every unhandled violator, batch by batch (each batch one transaction)."""
    total = SweepResult(0, 0, 0)
    while True:
        async with db.as_service() as conn:
            batch = await autosuspend.sweep_batch(conn, limit=settings.sweep_batch_size)
        # Counted once committed: a batch whose commit failed did nothing, and counts nothing.
        metrics.count_sweep_actions(suspended=batch.suspended, warned=batch.warned)
        result = batch.result
        if result.violators:
            logger.info(
                "auto-suspend: {} over cap, {} suspended, {} warned",
                result.violators,
                result.suspended,
                result.warned,
            )
        total = total + result
        if result.violators < settings.sweep_batch_size:
            return total


class Worker:
    """One worker process's work, runnable in-process (tests) or from `python -m worker`."""

    def __init__(self, platform: PlatformSettings, settings: WorkerSettings) -> None:
        if not platform.database_url:
            raise ValueError("DATABASE_URL is not set: the worker needs the platform's database")
        self.platform = platform
        self.settings = settings
        self.worker_id = settings.name or f"{socket.gethostname()}-{os.getpid()}"
        self.started_at = datetime.now(UTC)
        self.swept = SweepResult(0, 0, 0)
        """Totals of every sweep so far, for the heartbeat."""
        self.outage = Outage()

    def _database(self) -> Database:
        return Database(
            self.platform.database_url,
            min_size=max(1, self.platform.db_pool_min_size),
            max_size=max(4, self.platform.db_pool_max_size),
            name=f"worker-{self.worker_id}",
            prepared_statements=self.platform.db_prepared_statements,
            actor="worker",  # the audit trail names the worker for what it changes
        )

    async def run(self, stop: asyncio.Event, *, drain: bool = False) -> int:
        """Work until `stop` is set (or, with `drain`, until nothing is due); an exit code.

        A database that is down at start is waited for; one that refuses us (unknown database or
        role, bad URL) ends the run with EXIT_CONFIG and one log line."""
        try:
            await wait_for_database(self.platform.database_url, stop, self.outage)
        except Unfixable as exc:
            logger.error("cannot use the database: {}", exc)
            return EXIT_CONFIG
        if stop.is_set():
            return EXIT_OK
        for environment in Environment:
            logger.info("retries {}", schedule_summary(environment, self.settings))
        if self.settings.held_limit < self.settings.batch_size:
            logger.info(
                "holding at most {} deliveries (WORKER_BATCH_SIZE {}): what {} senders can start"
                " before a {:g} s lease ends with {:g} s requests",
                self.settings.held_limit,
                self.settings.batch_size,
                self.settings.concurrency,
                self.settings.lease_seconds,
                self.settings.request_timeout_seconds,
            )
        async with self._database() as db, Sender(self.settings) as sender:
            if not await self._take_name(db, stop):
                return EXIT_CONFIG
            wake = asyncio.Event()
            dispatcher = Dispatcher(
                db,
                self.settings,
                sender,
                build_policies(self.settings),
                worker_id=self.worker_id,
                wake=wake,
                outage=self.outage,
            )
            if drain:
                try:
                    await sweep(db, self.settings)
                    await dispatcher.run(stop, drain=True)
                finally:
                    await self._forget_name(db)
                return EXIT_OK
            return await self._supervise(db, dispatcher, wake, stop)

    async def _take_name(self, db: Database, stop: asyncio.Event) -> bool:
        """Make the worker's name its own before any claim; False if another live worker has it.

        Names must be unique: after a claim whose answer was lost, a worker releases the leases
        under its name that it does not know of, which would take a namesake's deliveries in
        flight. A name whose holder beat within WORKER_HEARTBEAT_MAX_AGE_SECONDS is waited for
        that long (a worker that died, restarted under the same name, finds its old row); one
        still beating after that belongs to another worker, and this one does not start."""
        loop = asyncio.get_running_loop()
        deadline = (
            loop.time()
            + self.settings.heartbeat_max_age_seconds
            + self.settings.heartbeat_interval_seconds
        )
        warned = False
        while not stop.is_set():
            try:
                async with db.as_service() as conn:
                    holder = await heartbeat.take_name(
                        conn,
                        worker_id=self.worker_id,
                        hostname=socket.gethostname(),
                        pid=os.getpid(),
                        started_at=self.started_at,
                        max_age_seconds=self.settings.heartbeat_max_age_seconds,
                    )
            except DatabaseUnavailable as exc:
                self.outage.failed("taking the worker's name", exc)
            else:
                self.outage.ok()
                if holder is None:
                    return True
                if loop.time() >= deadline:
                    logger.error(
                        "WORKER_NAME {} is in use by a running worker (pid {} on {}, last beat"
                        " at {}): every worker needs a name of its own; not starting",
                        self.worker_id,
                        holder.pid,
                        holder.hostname,
                        holder.beat_at,
                    )
                    return False
                if not warned:
                    warned = True
                    logger.warning(
                        "worker name {} was in use by pid {} on {} (last beat at {}): waiting up"
                        " to {:g} s for it to go silent before starting",
                        self.worker_id,
                        holder.pid,
                        holder.hostname,
                        holder.beat_at,
                        self.settings.heartbeat_max_age_seconds,
                    )
            await wait_any(stop, seconds=min(1.0, self.settings.heartbeat_interval_seconds))
        return True

    async def _forget_name(self, db: Database) -> None:
        """Delete the heartbeat row, so the name is free at once (bounded: the database may be
        away)."""
        with contextlib.suppress(DatabaseUnavailable, TimeoutError):
            async with asyncio.timeout(5.0), db.as_service() as conn:
                await heartbeat.forget(conn, self.worker_id)

    async def _supervise(
        self, db: Database, dispatcher: Dispatcher, wake: asyncio.Event, stop: asyncio.Event
    ) -> int:
        coroutines: dict[str, Coroutine[Any, Any, None]] = {
            "sweeper": self._sweep_loop(db, stop),
            "dispatcher": dispatcher.run(stop),
            "heartbeat": self._heartbeat_loop(db, dispatcher, stop),
            "audit_retention": self._audit_retention_loop(db, stop),
            "listener": listen(
                self.platform.session_database_url,
                wake,
                reconnect_max_seconds=self.settings.listen_reconnect_max_seconds,
                outage=self.outage,
            ),
        }
        tasks = [asyncio.create_task(coro, name=name) for name, coro in coroutines.items()]
        stopping = asyncio.create_task(stop.wait(), name="stop")
        logger.info("worker {} started: {}", self.worker_id, ", ".join(coroutines))
        exit_code = EXIT_OK
        try:
            done, _ = await asyncio.wait([*tasks, stopping], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                exc = None if task.cancelled() else task.exception()
                if task is stopping or (exc is None and stop.is_set()):
                    continue  # the loops return by themselves once stop is set
                # No task ends on its own while the worker runs: this one died.
                logger.opt(exception=exc).critical(
                    "task {} stopped unexpectedly ({}); stopping the worker",
                    task.get_name(),
                    repr(exc) if exc else "returned",
                )
                exit_code = EXIT_TASK_DIED
            stop.set()
        finally:
            stopping.cancel()
            await self._stop_tasks(tasks)
            await self._forget_name(db)
        logger.info("worker {} stopped", self.worker_id)
        return exit_code

    async def _stop_tasks(self, tasks: list[asyncio.Task[None]]) -> None:
        """The dispatcher stops itself on the stop event (finishing or releasing its in-flight
        deliveries); the other tasks hold nothing and are cancelled."""
        for task in tasks:
            if task.get_name() != "dispatcher":
                task.cancel()
        bound = self.settings.shutdown_grace_seconds + 10.0
        _, pending = await asyncio.wait(tasks, timeout=bound)
        for task in pending:
            logger.error("task {} did not stop within {:g} s", task.get_name(), bound)
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _repeat(
        self,
        what: str,
        step: Callable[[], Awaitable[None]],
        interval_seconds: float,
        stop: asyncio.Event,
    ) -> None:
        """Run `step` every `interval_seconds` until `stop`; a database outage or a transient
        error is reported and waited out, anything else ends the task (and the worker)."""
        while not stop.is_set():
            try:
                await step()
                self.outage.ok()
            except DatabaseUnavailable as exc:
                self.outage.failed(what, exc)
            except ParityError as exc:
                if not is_transient(exc):
                    raise
                logger.warning("{} failed ({}); trying again later", what, exc)
            await wait_any(stop, seconds=interval_seconds)

    async def _sweep_loop(self, db: Database, stop: asyncio.Event) -> None:
        async def step() -> None:
            self.swept = self.swept + await sweep(db, self.settings)

        await self._repeat("auto-suspend sweep", step, self.settings.sweep_interval_seconds, stop)

    async def _audit_retention_loop(self, db: Database, stop: asyncio.Event) -> None:
        async def step() -> None:
            purged = await purge_audit_trail(db, self.settings, stop)
            if purged:
                logger.info(
                    "audit trail: deleted {} entries older than {} days",
                    purged,
                    self.settings.audit_retention_days,
                )

        interval = self.settings.audit_purge_interval_seconds
        await self._repeat("audit retention", step, interval, stop)

    async def _heartbeat_loop(
        self, db: Database, dispatcher: Dispatcher, stop: asyncio.Event
    ) -> None:
        while not stop.is_set():
            try:
                async with db.as_service() as conn:
                    await heartbeat.beat(
                        conn,
                        worker_id=self.worker_id,
                        hostname=socket.gethostname(),
                        pid=os.getpid(),
                        started_at=self.started_at,
                        tasks={
                            "dispatcher": dispatcher.stats.as_dict(),
                            "sweeper": dataclasses.asdict(self.swept),
                        },
                    )
                    pruned = await heartbeat.prune(
                        conn, older_than_seconds=self.settings.heartbeat_retention_seconds
                    )
                self.outage.ok()
                if pruned:
                    logger.info("pruned {} heartbeats of workers silent for too long", pruned)
            except DatabaseUnavailable as exc:
                self.outage.failed("heartbeat", exc)
            await wait_any(stop, seconds=self.settings.heartbeat_interval_seconds)


async def check(platform: PlatformSettings, settings: WorkerSettings) -> int:
    """Exit 0 when some worker's heartbeat is fresh, 1 otherwise (the database unreachable
    included); print what was found. Answers within `check_timeout_seconds` either way."""
    max_age = settings.heartbeat_max_age_seconds
    bound = settings.check_timeout_seconds
    try:
        async with asyncio.timeout(bound):
            conn = await psycopg.AsyncConnection.connect(
                platform.database_url,
                connect_timeout=max(2, int(bound)),
                autocommit=True,
                row_factory=dict_row,
            )
            async with conn:
                await conn.execute("set role service_role")
                beats = await heartbeat.fresh(conn, max_age_seconds=max_age)
    except (TimeoutError, psycopg.Error) as exc:
        reason = "no answer" if isinstance(exc, TimeoutError) else str(exc).strip().splitlines()[0]
        print(f"database unavailable within {bound:g} s ({reason}): no worker heartbeat to read")
        return EXIT_TASK_DIED
    for beat in beats:
        print(f"{beat.worker_id} (pid {beat.pid} on {beat.hostname}): beat at {beat.beat_at}")
    if not beats:
        print(f"no worker heartbeat in the last {max_age:g} s")
    return EXIT_OK if beats else EXIT_TASK_DIED
