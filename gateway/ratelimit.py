"""Per-project rate limits: a fixed window per project, counted exactly, in process memory by
default or in Redis so that several gateways share one budget.

The effective limit is the project's base limit (or the platform default) times its environment's
`rate_limit_multiplier`; the caller computes it from `get_environment_config`.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol
from uuid import UUID

import redis.asyncio as redis
from redis.exceptions import RedisError

from gateway.errors import RateLimiterUnavailable

POLICY: Final = b'"default"'
"""The policy name both `RateLimit-Policy` and `RateLimit` carry (an sf-string)."""


class WindowsUnavailable(Exception):
    """The windows' storage cannot be reached."""


class Windows(Protocol):
    """Where windows are counted."""

    async def hit(self, key: str, window_seconds: int) -> tuple[int, float]:
        """Count one request under `key`; the count so far in the window and its end (epoch s).
        A window starts with its first request and lasts `window_seconds`."""
        ...

    async def peek(self, key: str) -> tuple[int, float | None]:
        """The count and end of the current window without counting (end None: no window)."""
        ...

    async def close(self) -> None:
        """Release connections (at shutdown)."""
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

    async def close(self) -> None:
        pass

    def _sweep(self, now: float) -> None:
        self._next_sweep = now + self._sweep_seconds
        for key in [key for key, (end, _) in self._windows.items() if end <= now]:
            del self._windows[key]


# One round trip per decision: count, start the window's expiry on its first request, and say
# how long the window has left. A key that lost its expiry (it cannot, but it would never reset)
# gets one again.
_HIT: Final = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
    redis.call('PEXPIRE', KEYS[1], ARGV[1])
    ttl = tonumber(ARGV[1])
end
return {count, ttl}
"""


class RedisWindows:
    """Fixed windows in Redis, shared by every gateway with the same `key_prefix`, counted
    exactly (a Lua script: INCR, PEXPIRE on a window's first request, PTTL).

    Decisions asked for while others are on their way to Redis wait and go together in one
    pipeline: one round trip and one connection for a batch instead of one per request, and
    each decision still waits for the count Redis returns for it."""

    def __init__(self, url: str, *, key_prefix: str, timeout_seconds: float = 2.0) -> None:
        self._client: redis.Redis = redis.Redis.from_url(
            url, socket_timeout=timeout_seconds, socket_connect_timeout=timeout_seconds
        )
        self._script = self._client.register_script(_HIT)
        self._prefix = key_prefix + ":"
        self._pending: list[tuple[str, int, asyncio.Future[tuple[int, float]]]] = []
        self._flushing = False
        self._ends: dict[str, float] = {}

    async def hit(self, key: str, window_seconds: int) -> tuple[int, float]:
        future: asyncio.Future[tuple[int, float]] = asyncio.get_running_loop().create_future()
        self._pending.append((self._prefix + key, window_seconds, future))
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().call_soon(self._start_flushing)
        return await future

    def _start_flushing(self) -> None:
        task = asyncio.ensure_future(self._flush())
        task.add_done_callback(_retrieved)

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                await self._send(batch)
        finally:
            self._flushing = False

    async def _send(self, batch: list[tuple[str, int, asyncio.Future[tuple[int, float]]]]) -> None:
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for key, window_seconds, _ in batch:
                    await self._script(keys=[key], args=[window_seconds * 1000], client=pipe)
                results: list[Any] = await pipe.execute()
        except (RedisError, OSError) as exc:
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(WindowsUnavailable(str(exc)))
            return
        now = time.time()
        for (key, _, future), (count, ttl) in zip(batch, results, strict=True):
            end = self._ends.get(key)
            if end is None or end <= now or count == 1:
                # A new window (or one not seen yet): its end is fixed from now on.
                end = now + ttl / 1000
                if len(self._ends) > 100_000:
                    self._ends.clear()  # bounded memory; entries are refetched on demand
                self._ends[key] = end
            if not future.done():
                future.set_result((int(count), end))

    async def peek(self, key: str) -> tuple[int, float | None]:
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.get(self._prefix + key)
                pipe.pttl(self._prefix + key)
                count, ttl = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise WindowsUnavailable(str(exc)) from exc
        if not count or ttl < 0:
            return 0, None
        return int(count), time.time() + ttl / 1000

    async def ping(self) -> None:
        """Raise unless Redis answers (the gateway's readiness check)."""
        await self._client.ping()

    async def close(self) -> None:
        await self._client.aclose()


def _retrieved(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()  # failures were handed to the waiting decisions


def build_windows(redis_url: str | None, *, key_prefix: str) -> Windows:
    """Redis windows when `redis_url` is set (replicas share budgets), memory otherwise."""
    if not redis_url:
        return MemoryWindows()
    return RedisWindows(redis_url, key_prefix=key_prefix)


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
        """The project's storage key under `limit` (so a limit change starts a new window),
        built once rather than per request."""
        key = self._keys.get((project_id, limit))
        if key is None:
            if len(self._keys) > 100_000:
                self._keys.clear()  # bounded memory; entries are rebuilt on demand
            key = self._keys[(project_id, limit)] = f"{project_id}/{limit}/{self._window}"
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
        except WindowsUnavailable as exc:
            raise _unavailable() from exc
        return self._decision(count, end, limit)

    async def close(self) -> None:
        await self.windows.close()

    async def peek(self, project_id: UUID, limit: int) -> Decision:
        """The project's standing under `limit` without counting a request (for the headers of
        a refusal that is not the limiter's)."""
        try:
            count, end = await self.windows.peek(self._key(project_id, limit))
        except WindowsUnavailable as exc:
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
