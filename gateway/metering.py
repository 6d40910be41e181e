"""Usage metering: requests counted in memory per project and flushed in batches, so the hot path
never writes to the database. Each flush is one transaction: one statement for the usage counters
(the worker's auto-suspend sweep reads them) and one for the keys' last-used times."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from uuid import UUID

from loguru import logger

from shared.apikeys import touch_last_used
from shared.db import Database
from shared.errors import ParityError
from shared.usage import flush_usage


class UsageMeter:
    """Counts requests per project and last use per key until the next flush."""

    def __init__(self, db: Database, *, window_seconds: int, default_cap: int) -> None:
        self._db = db
        self._window = window_seconds
        self._default_cap = default_cap
        self._counts: dict[UUID, int] = {}
        self._last_used: dict[UUID, float] = {}

    def record(self, project_id: UUID, key_id: UUID) -> None:
        """Count one request; costs two dict writes."""
        self._counts[project_id] = self._counts.get(project_id, 0) + 1
        self._last_used[key_id] = time.time()

    @property
    def pending(self) -> int:
        """Requests counted and not yet flushed."""
        return sum(self._counts.values())

    async def flush(self) -> None:
        """Write what was counted since the last flush. On failure the counts are kept for the
        next one, so a database outage delays usage rather than losing it."""
        counts, self._counts = self._counts, {}
        last_used, self._last_used = self._last_used, {}
        if not counts and not last_used:
            return
        try:
            async with self._db.as_service() as conn:
                await flush_usage(
                    conn, counts, window_seconds=self._window, default_cap=self._default_cap
                )
                await touch_last_used(
                    conn,
                    {key: datetime.fromtimestamp(at, UTC) for key, at in last_used.items()},
                )
        except ParityError:
            for project_id, count in counts.items():
                self._counts[project_id] = self._counts.get(project_id, 0) + count
            for key_id, at in last_used.items():
                self._last_used[key_id] = max(at, self._last_used.get(key_id, at))
            raise

    async def run(self, interval_seconds: float) -> None:
        """Flush every `interval_seconds` until cancelled, then flush once more."""
        try:
            while True:
                await asyncio.sleep(interval_seconds)
                try:
                    await self.flush()
                except ParityError as exc:
                    logger.warning("usage flush failed, kept for the next one: {}", exc.message)
        finally:
            # Shutting down: what was counted since the last flush is written, not dropped.
            try:
                await self.flush()
            except ParityError as exc:
                logger.error("final usage flush failed: {} requests lost", self.pending, exc=exc)
