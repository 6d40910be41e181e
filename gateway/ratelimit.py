"""Per-project rate limits: a fixed window per project, counted exactly, in process memory by
default or in Redis (through the `limits` library's storage) so that several gateways share one
budget.

The effective limit is the project's base limit (or the platform default) times its environment's
`rate_limit_multiplier`; the caller computes it from `get_environment_config`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol
from uuid import UUID

from limits import RateLimitItemPerSecond
from limits.aio.storage import Storage
from limits.errors import StorageError
from limits.storage import storage_from_string

from gateway.errors import RateLimiterUnavailable

POLICY: Final = b'"default"'
"""The policy name both `RateLimit-Policy` and `RateLimit` carry (an sf-string)."""


class Windows(Protocol):
    """Where windows are counted."""

    async def hit(self, key: str, window_seconds: int) -> tuple[int, float]:
        """Count one request under `key`; the count so far in the window and its end (epoch s).
        A window starts with its first request and lasts `window_seconds`."""
        ...

    async def peek(self, key: str) -> tuple[int, float | None]:
        """The count and end of the current window without counting (end None: no window)."""
        ...


class MemoryWindows:
    """Fixed windows in this process's memory, counted exactly. Expired windows are replaced
    when next hit and swept out at most every `sweep_seconds` (memory of idle keys)."""

    def __init__(self, *, clock: Callable[[], float] = time.time, sweep_seconds: float = 10.0):
        self._clock = clock
        self._sweep_seconds = sweep_seconds
        self._next_sweep = clock() + sweep_seconds
        self._windows: dict[str, list[float]] = {}  # key -> [end, count]

    def __len__(self) -> int:
        return len(self._windows)

    def count(self, key: str, window_seconds: int) -> tuple[int, float]:
        """:meth:`hit` without the coroutine, for callers that know the storage is memory."""
        now = self._clock()
        entry = self._windows.get(key)
        if entry is None or entry[0] <= now:
            if now >= self._next_sweep:
                self._sweep(now)
            entry = self._windows[key] = [now + window_seconds, 0]
        entry[1] += 1
        return int(entry[1]), entry[0]

    async def hit(self, key: str, window_seconds: int) -> tuple[int, float]:
        return self.count(key, window_seconds)

    async def peek(self, key: str) -> tuple[int, float | None]:
        entry = self._windows.get(key)
        if entry is None or entry[0] <= self._clock():
            return 0, None
        return int(entry[1]), entry[0]

    def _sweep(self, now: float) -> None:
        self._next_sweep = now + self._sweep_seconds
        for key in [key for key, (end, _) in self._windows.items() if end <= now]:
            del self._windows[key]


class RedisWindows:
    """Fixed windows in Redis through `limits`' storage: one `incr` (a script that also sets the
    expiry of a new window) per request; the window's end is asked once per window and
    remembered, since it is fixed once the window starts."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self._ends: dict[str, float] = {}

    async def hit(self, key: str, window_seconds: int) -> tuple[int, float]:
        count = await self.storage.incr(key, window_seconds)
        end = self._ends.get(key)
        if end is None or end <= time.time() or count == 1:
            # A new window (or one we have not seen): ask when it ends, once.
            end = await self.storage.get_expiry(key)
            if len(self._ends) > 100_000:
                self._ends.clear()  # bounded memory; entries are refetched on demand
            self._ends[key] = end
        return count, end

    async def peek(self, key: str) -> tuple[int, float | None]:
        count = await self.storage.get(key)
        if not count:
            return 0, None
        return count, await self.storage.get_expiry(key)


def build_windows(redis_url: str | None, *, key_prefix: str) -> Windows:
    """Redis windows when `redis_url` is set (replicas share budgets), memory otherwise."""
    if not redis_url:
        return MemoryWindows()
    storage = storage_from_string(f"async+{redis_url}", key_prefix=key_prefix, wrap_exceptions=True)
    assert isinstance(storage, Storage)
    return RedisWindows(storage)


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
        """`RateLimit-Policy` and `RateLimit` as the IETF httpapi draft (-10) has them, as
        structured-field lists (`"default";q=600;w=60` and `"default";r=599;t=42`, `t` in
        seconds until the window resets), and the `X-RateLimit-*` family (`X-RateLimit-Reset`
        in epoch seconds, as GitHub's); plus `Retry-After` (seconds) on a refusal."""
        reset_after = self.reset_after
        remaining = b"%d" % self.remaining
        limit = b"%d" % self.limit
        headers = [
            (b"ratelimit-policy", b"%s;q=%s;w=%d" % (POLICY, limit, self.window_seconds)),
            (b"ratelimit", b"%s;r=%s;t=%d" % (POLICY, remaining, reset_after)),
            (b"x-ratelimit-limit", limit),
            (b"x-ratelimit-remaining", remaining),
            (b"x-ratelimit-reset", b"%d" % math.ceil(self.reset_at)),
        ]
        if not self.allowed:
            headers.append((b"retry-after", b"%d" % reset_after))
        return headers


class ProjectRateLimiter:
    """A fixed window of `window_seconds` per project: allowed while the window's count stays
    within the limit. One storage call per request (with Redis, one round trip)."""

    def __init__(self, windows: Windows, *, window_seconds: int) -> None:
        self.windows = windows
        self._memory = windows if isinstance(windows, MemoryWindows) else None
        self._window = window_seconds
        self._keys: dict[tuple[UUID, int], str] = {}

    def _key(self, project_id: UUID, limit: int) -> str:
        """The project's storage key under `limit` (`limits`' own naming, so a limit change
        starts a new window), built once rather than per request."""
        key = self._keys.get((project_id, limit))
        if key is None:
            if len(self._keys) > 100_000:
                self._keys.clear()  # bounded memory; entries are rebuilt on demand
            item = RateLimitItemPerSecond(limit, self._window)
            key = self._keys[(project_id, limit)] = item.key_for(str(project_id))
        return key

    def _decision(self, count: int, end: float, limit: int) -> Decision:
        return Decision(
            allowed=count <= limit,
            limit=limit,
            remaining=max(0, limit - count),
            reset_at=end,
            window_seconds=self._window,
        )

    async def hit(self, project_id: UUID, limit: int) -> Decision:
        """Count one request of `project_id` against `limit` and decide. Raises
        :class:`RateLimiterUnavailable` when the storage cannot be reached: requests are refused
        rather than let through uncounted."""
        key = self._key(project_id, limit)
        if self._memory is not None:
            return self._decision(*self._memory.count(key, self._window), limit)
        try:
            count, end = await self.windows.hit(key, self._window)
        except StorageError as exc:
            raise _unavailable() from exc
        return self._decision(count, end, limit)

    async def peek(self, project_id: UUID, limit: int) -> Decision:
        """The project's standing under `limit` without counting a request (for the headers of
        a refusal that is not the limiter's)."""
        try:
            count, end = await self.windows.peek(self._key(project_id, limit))
        except StorageError as exc:
            raise _unavailable() from exc
        if end is None:
            count, end = 0, time.time() + self._window
        return Decision(
            allowed=True,
            limit=limit,
            remaining=max(0, limit - count),
            reset_at=end,
            window_seconds=self._window,
        )


def _unavailable() -> RateLimiterUnavailable:
    return RateLimiterUnavailable(
        "the rate limiter's storage cannot be reached, so the request cannot be counted:"
        " retry shortly"
    )
