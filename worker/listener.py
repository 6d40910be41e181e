"""LISTEN on the deliveries channel on a connection of its own, reconnecting whenever it drops
(pg_terminate_backend, a Postgres restart): a notification only wakes the dispatcher early, the
polling fallback covers whatever is missed while reconnecting."""

from __future__ import annotations

import asyncio

import psycopg
from loguru import logger
from psycopg import sql

from shared.events import DELIVERIES_CHANNEL
from worker.outage import Outage


async def listen(
    url: str, wake: asyncio.Event, *, reconnect_max_seconds: float, outage: Outage | None = None
) -> None:
    """Set `wake` on every notification, forever (until cancelled)."""
    delay = 0.1
    while True:
        try:
            async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                await conn.execute(sql.SQL("listen {}").format(sql.Identifier(DELIVERIES_CHANNEL)))
                logger.debug("listening on {}", DELIVERIES_CHANNEL)
                if outage is not None:
                    outage.ok()
                delay = 0.1
                # Something may have been written while we were not listening.
                wake.set()
                async for _ in conn.notifies():
                    wake.set()
        except psycopg.OperationalError as exc:
            if outage is not None:
                outage.failed("listening for notifications", exc)
            else:
                logger.warning(
                    "notification connection lost ({}); reconnecting in {:.1f} s", exc, delay
                )
        await asyncio.sleep(delay)
        delay = min(delay * 2, reconnect_max_seconds)
