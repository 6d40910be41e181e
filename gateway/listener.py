"""Cache invalidation through Postgres notifications, on a dedicated connection that reconnects
whenever it is lost."""

from __future__ import annotations

import asyncio

import psycopg
from loguru import logger

from gateway.keycache import KeyCache
from shared.apikeys import listen_for_changes


async def listen_for_invalidations(
    database_url: str,
    cache: KeyCache,
    *,
    retry_seconds: float,
    connected: asyncio.Event | None = None,
) -> None:
    """Drop cached keys as notifications name them, until cancelled.

    A LISTEN needs a session of its own (not a pooled or transaction-pooled connection). Each time
    it (re)connects the whole cache is cleared: notifications sent while it was away are lost.
    """
    while True:
        try:
            async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
                await listen_for_changes(conn)
                cache.clear()
                if connected is not None:
                    connected.set()
                logger.info("listening for key and project changes")
                async for notification in conn.notifies():
                    cache.invalidate(notification.payload)
        except psycopg.Error as exc:
            if connected is not None:
                connected.clear()
            logger.warning(
                "notification listener lost its connection ({}); retrying in {}s",
                type(exc).__name__,
                retry_seconds,
            )
        await asyncio.sleep(retry_seconds)
