"""Per-project rate limits with the `limits` library: a fixed window per project, in memory by
default or in Redis so that several gateways share one budget.

The effective limit is the project's base limit (or the platform default) times its environment's
`rate_limit_multiplier`; the caller computes it from `get_environment_config`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from uuid import UUID

from limits import RateLimitItem, RateLimitItemPerSecond
from limits.aio.storage import MemoryStorage, Storage
from limits.errors import StorageError
from limits.storage import storage_from_string

from gateway.errors import RateLimiterUnavailable


class SweepingMemoryStorage(MemoryStorage):
    """`limits`' asyncio memory storage, sweeping expired windows at most once a second.

    The library's version starts a task that scans every key whenever the previous scan has
    finished, which on a busy event loop means a task and a full scan per request: more than the
    decision itself costs. Expired windows are already dropped lazily when read (`get`), so the
    sweep only reclaims memory of keys no longer used, and once a second does that.
    """

    SWEEP_SECONDS = 1.0

    def __init__(self) -> None:
        super().__init__()
        self._last_sweep = 0.0

    # The name the parent's private method has after name mangling: this overrides it.
    async def _MemoryStorage__schedule_expiry(self) -> None:
        now = time.monotonic()
        if now - self._last_sweep >= self.SWEEP_SECONDS:
            self._last_sweep = now
            await super()._MemoryStorage__schedule_expiry()  # type: ignore[misc]


def build_storage(redis_url: str | None, *, key_prefix: str) -> Storage:
    """Redis storage when `redis_url` is set (replicas share budgets), memory storage otherwise."""
    if not redis_url:
        return SweepingMemoryStorage()
    storage = storage_from_string(f"async+{redis_url}", key_prefix=key_prefix, wrap_exceptions=True)
    assert isinstance(storage, Storage)
    return storage


@dataclass(slots=True)  # one per request: see gateway.reqlog.Exchange on not freezing it
class Decision:
    """One rate-limit decision and what the response headers say about it."""

    allowed: bool
    limit: int
    remaining: int
    reset_at: float
    """Epoch seconds when the window resets."""
    window_seconds: int

    @property
    def reset_after(self) -> int:
        """Whole seconds until the window resets (at least 1 while it has not)."""
        return max(1, math.ceil(self.reset_at - time.time()))

    def headers(self) -> list[tuple[bytes, bytes]]:
        """`RateLimit-Policy` and `RateLimit` (IETF draft) and the `X-RateLimit-*` family
        (`X-RateLimit-Reset` in epoch seconds, as GitHub's), plus `Retry-After` on a refusal."""
        reset_after = self.reset_after
        limit = str(self.limit).encode()
        remaining = str(self.remaining).encode()
        headers = [
            (b"ratelimit-policy", b"%s;w=%d" % (limit, self.window_seconds)),
            (b"ratelimit", b"limit=%s, remaining=%s, reset=%d" % (limit, remaining, reset_after)),
            (b"x-ratelimit-limit", limit),
            (b"x-ratelimit-remaining", remaining),
            (b"x-ratelimit-reset", b"%d" % math.ceil(self.reset_at)),
        ]
        if not self.allowed:
            headers.append((b"retry-after", b"%d" % reset_after))
        return headers


class ProjectRateLimiter:
    """A fixed window of `window_seconds` per project.

    The decision is `FixedWindowRateLimiter.hit`'s own (one `incr` of the limit's key, allowed
    while the count stays within the limit), made on the storage directly so that the count it
    returns also gives the remaining budget: one storage call per request instead of three (with
    Redis, one round trip instead of three). The window's reset time is fixed once the window
    starts, so it is asked of the storage once per window and remembered.
    """

    def __init__(self, storage: Storage, *, window_seconds: int) -> None:
        self.storage = storage
        self._window = window_seconds
        self._targets: dict[tuple[UUID, int], tuple[RateLimitItem, str]] = {}
        self._resets: dict[str, float] = {}

    def _target(self, project_id: UUID, limit: int) -> tuple[RateLimitItem, str]:
        """The limit's item and the project's storage key under it, built once rather than
        per request (`key_for` joins and escapes its parts, and the id is formatted anew)."""
        target = self._targets.get((project_id, limit))
        if target is None:
            if len(self._targets) > 100_000:
                self._targets.clear()  # bounded memory; entries are rebuilt on demand
            item = RateLimitItemPerSecond(limit, self._window)
            target = self._targets[(project_id, limit)] = (item, item.key_for(str(project_id)))
        return target

    async def hit(self, project_id: UUID, limit: int) -> Decision:
        """Count one request of `project_id` against `limit` and decide. Raises
        :class:`RateLimiterUnavailable` when the storage cannot be reached: requests are refused
        rather than let through uncounted."""
        try:
            return await self._hit(project_id, limit)
        except StorageError as exc:
            raise RateLimiterUnavailable(
                "the rate limiter's storage cannot be reached, so the request cannot be counted:"
                " retry shortly"
            ) from exc

    async def _hit(self, project_id: UUID, limit: int) -> Decision:
        item, key = self._target(project_id, limit)
        count = await self.storage.incr(key, item.get_expiry())
        reset_at = self._resets.get(key)
        now = time.time()
        if reset_at is None or reset_at <= now or count == 1:
            # A new window (or one we have not seen): ask when it ends, once.
            reset_at = await self.storage.get_expiry(key)
            if len(self._resets) > 100_000:
                self._resets.clear()  # bounded memory; entries are refetched on demand
            self._resets[key] = reset_at
        return Decision(
            allowed=count <= item.amount,
            limit=limit,
            remaining=max(0, item.amount - count),
            reset_at=reset_at,
            window_seconds=self._window,
        )
