"""Which master of a Redis Cluster serves a key: the slot map, learned with `CLUSTER SLOTS` from
any node that answers, and a bounded client per node.

The gateway batches its decisions per node (see `gateway.ratelimit.RedisWindows`), which
redis-py's `RedisCluster` does not offer without letting one failing node fail, and retry, the
batches of the others; and its slot-map refresh also re-reads `COMMAND` (some 100 ms of CPU per
refresh, measured), which a failover asks for many times. This map costs one `CLUSTER SLOTS`
per refresh, and concurrent refreshes share one.
"""

from __future__ import annotations

import asyncio
import time
from typing import Final

import redis.asyncio as redis
from loguru import logger
from redis.crc import key_slot
from redis.exceptions import RedisError

from shared.redisurl import RedisTarget, node_client

Address = tuple[str, int]

SLOTS: Final = 16384
MIN_REFRESH_SECONDS: Final = 0.1
"""Refreshes asked for within this of the last one reuse it (a failover asks many times)."""


class SlotMap:
    def __init__(self, target: RedisTarget, *, timeout_seconds: float, retries: int) -> None:
        self._target = target
        self._timeout = timeout_seconds
        self._retries = retries
        self._known: list[Address] = list(target.nodes)
        self._owners: list[Address | None] = [None] * SLOTS
        self._clients: dict[Address, redis.Redis] = {}
        self._refreshing: asyncio.Task[None] | None = None
        self._refreshed_at = float("-inf")

    def owner(self, key: str) -> Address | None:
        """The master serving `key` as last learned (None: not known yet)."""
        return self._owners[key_slot(key.encode())]

    def masters(self) -> list[Address]:
        """The masters serving slots, as last learned."""
        return list(dict.fromkeys(owner for owner in self._owners if owner is not None))

    def client(self, address: Address) -> redis.Redis:
        client = self._clients.get(address)
        if client is None:
            client = self._clients[address] = node_client(
                self._target, *address, timeout_seconds=self._timeout, retries=self._retries
            )
        return client

    def moved(self, slot: int, address: Address) -> None:
        """A MOVED answer says where `slot` lives now."""
        self._owners[slot] = address

    async def refresh(self) -> None:
        """Learn the slot map again, unless it was just learned; callers at the same time
        share one `CLUSTER SLOTS`."""
        if self._refreshing is None or self._refreshing.done():
            if time.monotonic() - self._refreshed_at < MIN_REFRESH_SECONDS:
                return
            self._refreshing = asyncio.create_task(self._refresh())
        await asyncio.shield(self._refreshing)

    async def _refresh(self) -> None:
        failures = []
        for address in list(self._known):
            try:
                ranges = await self.client(address).execute_command(  # type: ignore[no-untyped-call]
                    "CLUSTER SLOTS"
                )
            except (RedisError, OSError) as exc:
                failures.append(f"{address[0]}:{address[1]}: {exc}")
                continue
            owners: list[Address | None] = [None] * SLOTS
            for start, end, master, *replicas in ranges:
                primary = (_host(master[0], address), int(master[1]))
                owners[start : end + 1] = [primary] * (end - start + 1)
                for node in (primary, *((_host(r[0], address), int(r[1])) for r in replicas)):
                    if node not in self._known:
                        self._known.append(node)
            self._owners = owners
            self._refreshed_at = time.monotonic()
            # The node that answered is asked first next time.
            self._known.remove(address)
            self._known.insert(0, address)
            return
        logger.warning("no Redis Cluster node gave its slot map: {}", "; ".join(failures))

    async def close(self) -> None:
        for client in self._clients.values():
            await client.aclose()


def _host(value: bytes | str, asked: Address) -> str:
    host = value.decode() if isinstance(value, bytes) else value
    return host or asked[0]  # an empty host: the node that was asked
