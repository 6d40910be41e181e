"""Key lookups cached in process.

An entry lives at most `ttl` seconds; notifications on channel `gateway_invalidate` drop it
sooner (see gateway.listener). A lookup that was in flight when an invalidation arrived is not
cached, so a stale row read just before a change cannot outlive the notification that announced it.

Hashes found unknown are remembered too, for `unknown_ttl` seconds and at most
`max_unknown` of them: anyone can make up well-formed tokens (the checksum is public), and each
must not cost a query every time it is presented. A key created meanwhile notifies `key:<id>`,
which forgets every unknown hash, so a new key works at once. Concurrent lookups of one hash share
one query.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from uuid import UUID

from shared.apikeys import Credential, find_credential
from shared.db import Database


class KeyCache:
    """Credentials by token hash, with indexes by key and by project for invalidation."""

    def __init__(
        self,
        db: Database,
        *,
        ttl_seconds: float,
        max_entries: int,
        unknown_ttl_seconds: float = 5.0,
        max_unknown: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._db = db
        self._ttl = ttl_seconds
        self._max_entries = max_entries
        self._unknown_ttl = unknown_ttl_seconds
        self._max_unknown = max_unknown
        self._clock = clock
        self._entries: dict[bytes, tuple[float, Credential]] = {}
        self._by_key: dict[UUID, bytes] = {}
        self._by_project: dict[UUID, set[bytes]] = {}
        # Insertion order is expiry order (one TTL for all): the first entry is the oldest.
        self._unknown: dict[bytes, float] = {}
        self._inflight: dict[bytes, asyncio.Future[Credential | None]] = {}
        # Bumped by every invalidation: a lookup that saw another generation start does not cache.
        self._generation = 0
        self.lookups = 0
        """Queries made so far (what a flood of unknown tokens would drive up)."""

    def __len__(self) -> int:
        return len(self._entries)

    def cached(self, key_hash: bytes) -> Credential | None:
        """The cached credential for `key_hash` if it is still fresh; no database call."""
        entry = self._entries.get(key_hash)
        if entry is None:
            return None
        expires, credential = entry
        if expires <= self._clock():
            self._drop(key_hash)
            return None
        return credential

    def known_unknown(self, key_hash: bytes) -> bool:
        """Whether `key_hash` was looked up and found unknown within the last `unknown_ttl`."""
        expires = self._unknown.get(key_hash)
        if expires is None:
            return False
        if expires <= self._clock():
            del self._unknown[key_hash]
            return False
        return True

    async def get(
        self, key_hash: bytes, before_query: Callable[[], None] | None = None
    ) -> Credential | None:
        """The credential for `key_hash`, from the cache or the database; None if unknown.
        `before_query` is called when (and only when) this call is about to query, and may
        refuse by raising: a lookup that joins one in flight, or needs none, is not counted."""
        credential = self.cached(key_hash)
        if credential is not None:
            return credential
        if self.known_unknown(key_hash):
            return None
        pending = self._inflight.get(key_hash)
        if pending is not None:
            return await asyncio.shield(pending)
        if before_query is not None:
            before_query()
        future: asyncio.Future[Credential | None] = asyncio.get_running_loop().create_future()
        self._inflight[key_hash] = future
        try:
            credential = await self._fetch(key_hash)
        except BaseException as exc:
            if isinstance(exc, Exception):
                future.set_exception(exc)
                future.exception()  # retrieved: no "never retrieved" warning without waiters
            else:
                future.cancel()
            raise
        else:
            future.set_result(credential)
        finally:
            del self._inflight[key_hash]
        return credential

    async def _fetch(self, key_hash: bytes) -> Credential | None:
        generation = self._generation
        self.lookups += 1
        async with self._db.as_service() as conn:
            credential = await find_credential(conn, key_hash)
        if generation == self._generation:
            if credential is not None:
                self._store(key_hash, credential)
            else:
                self._store_unknown(key_hash)
        return credential

    def _store(self, key_hash: bytes, credential: Credential) -> None:
        if key_hash not in self._entries and len(self._entries) >= self._max_entries:
            self._drop(next(iter(self._entries)))  # the oldest insertion
        self._entries[key_hash] = (self._clock() + self._ttl, credential)
        self._by_key[credential.key_id] = key_hash
        self._by_project.setdefault(credential.project_id, set()).add(key_hash)

    def _store_unknown(self, key_hash: bytes) -> None:
        if len(self._unknown) >= self._max_unknown:
            del self._unknown[next(iter(self._unknown))]  # the oldest, soonest to expire anyway
        self._unknown[key_hash] = self._clock() + self._unknown_ttl

    def _drop(self, key_hash: bytes) -> None:
        entry = self._entries.pop(key_hash, None)
        if entry is None:
            return
        credential = entry[1]
        self._by_key.pop(credential.key_id, None)
        hashes = self._by_project.get(credential.project_id)
        if hashes is not None:
            hashes.discard(key_hash)
            if not hashes:
                del self._by_project[credential.project_id]

    def invalidate(self, payload: str) -> None:
        """Apply one notification: `key:<id>` or `project:<id>`. Anything else clears the whole
        cache, the safe answer to a payload this version does not understand. A `key:` payload
        may announce a new key, whose hash may be among the unknown ones: those are forgotten."""
        self._generation += 1
        kind, _, raw_id = payload.partition(":")
        try:
            target = UUID(raw_id)
        except ValueError:
            self.clear()
            return
        if kind == "key":
            self._unknown.clear()
            key_hash = self._by_key.get(target)
            if key_hash is not None:
                self._drop(key_hash)
        elif kind == "project":
            for key_hash in list(self._by_project.get(target, ())):
                self._drop(key_hash)
        else:
            self.clear()

    def clear(self) -> None:
        """Forget everything (the listener reconnected: notifications may have been missed)."""
        self._generation += 1
        self._entries.clear()
        self._by_key.clear()
        self._by_project.clear()
        self._unknown.clear()
