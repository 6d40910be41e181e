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

from loguru import logger
from redis.commands.core import AsyncScript
from redis.exceptions import AskError, MovedError, RedisError

from gateway.errors import RateLimiterUnavailable
from gateway.slots import Address, SlotMap
from shared.redisurl import parse_redis_url, redis_client

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
# gets one again. One key per script, so on a cluster each decision goes to one node.
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

# A window's count and time left without counting (0 and -2 when there is none).
_PEEK: Final = """
local count = redis.call('GET', KEYS[1])
if not count then return {0, -2} end
return {tonumber(count), redis.call('PTTL', KEYS[1])}
"""

DOWN_SECONDS: Final = 0.2
"""How long decisions for a cluster node that just failed are refused without asking it."""

MAX_REDIRECTS: Final = 2

_ONE_NODE_OF_A_CLUSTER: Final = (
    "REDIS_URL names one node of a Redis Cluster, which redirects:"
    " list the nodes as redis+cluster://host:port,host:port"
)


@dataclass(slots=True)
class _Call:
    """One script call waiting to go to Redis, and who waits for its answer."""

    key: str
    script: AsyncScript
    args: list[int]
    future: asyncio.Future[Any]


class RedisWindows:
    """Fixed windows in Redis or a Redis Cluster (`redis_url` as `shared.redisurl` reads it),
    shared by every gateway with the same `key_prefix`, counted exactly (a Lua script: INCR,
    PEXPIRE on a window's first request, PTTL).

    Decisions asked for while others are on their way to the same node wait and go together
    in one pipeline: one round trip and one connection for a batch instead of one per
    request, and each decision still waits for the count Redis returns for it. On a cluster
    there is one such queue per master, so a master that fails holds up only the decisions of
    its own slots; MOVED and ASK answers are followed (at most twice per decision), and a
    connection error or a MOVED refreshes the slot map, which is how a replica's promotion is
    found. Every batch is answered within `(1 + retries) * timeout_seconds`."""

    def __init__(
        self, url: str, *, key_prefix: str, timeout_seconds: float = 0.45, retries: int = 1
    ) -> None:
        target = parse_redis_url(url)
        self._slots: SlotMap | None = None
        if target.cluster:
            self._slots = SlotMap(target, timeout_seconds=timeout_seconds, retries=retries)
            self._client = self._slots.client(target.nodes[0])
        else:
            self._client = redis_client(url, timeout_seconds=timeout_seconds, retries=retries)
        self._deadline = timeout_seconds * (1 + retries)
        self._script = self._client.register_script(_HIT)
        self._peek = self._client.register_script(_PEEK)
        self._prefix = key_prefix + ":"
        self._queues: dict[Address | None, list[_Call]] = {}
        self._flushing: set[Address | None] = set()
        self._down: dict[Address, float] = {}
        """Cluster nodes that just failed, until when their decisions are refused at once."""
        self._ends: dict[str, float] = {}

    async def connect(self, *, within: float = 10.0) -> None:
        """Learn a cluster's slot map now rather than on the first requests, tried for up to
        `within` seconds. Redis being down is not fatal (decisions are refused until it
        answers): a warning says so."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while self._slots is not None and not self._slots.masters():
            if loop.time() > deadline:
                logger.warning("no Redis Cluster node answered at start: decisions are refused")
                return
            await self._slots.refresh()
            await asyncio.sleep(0.1)

    def storage_key(self, key: str) -> str:
        """The Redis key of window `key`."""
        return self._prefix + key

    async def hit(self, key: str, window_seconds: int) -> tuple[int, float]:
        key = self._prefix + key
        count, ttl = await self._call(key, self._script, [window_seconds * 1000])
        return int(count), self._end(key, int(count), ttl, time.time())

    async def peek(self, key: str) -> tuple[int, float | None]:
        count, ttl = await self._call(self._prefix + key, self._peek, [])
        if not count or ttl < 0:
            return 0, None
        return int(count), time.time() + ttl / 1000

    async def _call(self, key: str, script: AsyncScript, args: list[int]) -> Any:
        node = await self._node(key)
        loop = asyncio.get_running_loop()
        call = _Call(key, script, args, loop.create_future())
        self._queues.setdefault(node, []).append(call)
        if node not in self._flushing:
            self._flushing.add(node)
            loop.call_soon(self._start_flushing, node)
        return await call.future

    async def _node(self, key: str) -> Address | None:
        """Where `key` goes: None for a single server; on a cluster its master, unless that
        failed within `DOWN_SECONDS` (WindowsUnavailable at once)."""
        if self._slots is None:
            return None
        node = self._slots.owner(key)
        if node is None:
            await self._slots.refresh()
            node = self._slots.owner(key)
            if node is None:
                raise WindowsUnavailable("no Redis Cluster node is known to serve the key")
        until = self._down.get(node)
        if until is not None:
            if time.monotonic() < until:
                raise WindowsUnavailable(f"{node[0]}:{node[1]} failed just now")
            del self._down[node]
        return node

    def _start_flushing(self, node: Address | None) -> None:
        task = asyncio.ensure_future(self._flush(node))
        task.add_done_callback(_retrieved)

    async def _flush(self, node: Address | None) -> None:
        try:
            while batch := self._queues.pop(node, None):
                try:
                    await self._send(node, batch)
                except Exception as exc:
                    # A bug here must not leave requests waiting for ever.
                    for call in batch:
                        _fail(call, WindowsUnavailable(f"{type(exc).__name__}: {exc}"))
                    raise
        finally:
            self._flushing.discard(node)

    async def _send(
        self, node: Address | None, batch: list[_Call], *, asking: bool = False, hops: int = 0
    ) -> None:
        client = self._client if node is None or self._slots is None else self._slots.client(node)
        try:
            async with asyncio.timeout(self._deadline), client.pipeline(transaction=False) as pipe:
                for call in batch:
                    if asking:
                        pipe.execute_command("ASKING")
                    await call.script(keys=[call.key], args=call.args, client=pipe)
                results: list[Any] = await pipe.execute(raise_on_error=False)
        except Exception as exc:
            self._failed(node, batch, exc)
            return
        if asking:
            results = results[1::2]
        redirects: dict[tuple[Address, bool], list[_Call]] = {}
        for call, result in zip(batch, results, strict=True):
            redirect = isinstance(result, (MovedError, AskError))
            if redirect and self._slots is None:
                _fail(call, WindowsUnavailable(_ONE_NODE_OF_A_CLUSTER))
            elif redirect and self._slots is not None and hops < MAX_REDIRECTS:
                to = (result.host, int(result.port))
                if isinstance(result, MovedError):
                    self._slots.moved(result.slot_id, to)
                redirects.setdefault((to, isinstance(result, AskError)), []).append(call)
            elif isinstance(result, Exception):
                _fail(call, WindowsUnavailable(str(result)))
            elif not call.future.done():
                call.future.set_result(result)
        for (to, ask), calls in redirects.items():
            await self._send(to, calls, asking=ask, hops=hops + 1)

    def _failed(self, node: Address | None, batch: list[_Call], exc: Exception) -> None:
        """Whatever failed on the way to Redis (its errors, the socket's, the deadline), the
        batch's decisions could not be counted. A cluster node is left alone for
        `DOWN_SECONDS` and the slot map refreshed: after a failover it names the new master."""
        for call in batch:
            _fail(call, WindowsUnavailable(str(exc) or type(exc).__name__))
        if node is None or self._slots is None:
            return
        if node not in self._down:  # at most one line per node and DOWN_SECONDS
            logger.warning(
                "rate-limit storage node {}:{} failed: {}: {}",
                *node,
                type(exc).__name__,
                exc,
            )
        self._down[node] = time.monotonic() + DOWN_SECONDS
        task = asyncio.ensure_future(self._slots.refresh())
        task.add_done_callback(_retrieved)

    def _end(self, key: str, count: int, ttl: int, now: float) -> float:
        """The end of `key`'s window, fixed when the window is first seen."""
        end = self._ends.get(key)
        if end is None or end <= now or count == 1:
            # A new window (or one not seen yet): its end is fixed from now on.
            end = now + ttl / 1000
            if len(self._ends) > 100_000:
                self._ends.clear()  # bounded memory; entries are refetched on demand
            self._ends[key] = end
        return end

    async def ping(self) -> None:
        """Raise unless Redis answers (the gateway's readiness check). On a cluster: ready
        while any master answers (a master being replaced makes its slots' decisions fail, not
        every gateway unready)."""
        if self._slots is None:
            await self._client.ping()
            return
        await self._slots.refresh()
        failures = []
        for node in self._slots.masters():
            try:
                await self._slots.client(node).ping()
                return
            except (RedisError, OSError) as exc:
                failures.append(f"{node[0]}:{node[1]}: {exc}")
        raise WindowsUnavailable("no Redis Cluster master answers: " + "; ".join(failures))

    async def close(self) -> None:
        if self._slots is not None:
            await self._slots.close()
        else:
            await self._client.aclose()


def _fail(call: _Call, exc: Exception) -> None:
    if not call.future.done():
        call.future.set_exception(exc)


def _retrieved(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()  # failures were handed to the waiting decisions


def build_windows(
    redis_url: str | None, *, key_prefix: str, timeout_seconds: float = 0.45, retries: int = 1
) -> Windows:
    """Redis windows when `redis_url` is set (replicas share budgets), memory otherwise."""
    if not redis_url:
        return MemoryWindows()
    return RedisWindows(
        redis_url, key_prefix=key_prefix, timeout_seconds=timeout_seconds, retries=retries
    )


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
            # The project id is the hash tag: on a cluster all of a project's windows share
            # one slot, and different projects spread over the masters.
            key = self._keys[(project_id, limit)] = f"{{{project_id}}}/{limit}/{self._window}"
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
