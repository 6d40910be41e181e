"""The gateway as a raw ASGI application: authenticate, check environment and suspension,
rate-limit, meter, forward, log. Kept free of a framework because every request of every customer
passes through it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import UTC, datetime
from typing import Any, Final
from uuid import UUID

from loguru import logger

from gateway.errors import PublishableKeyReadOnly, RequestTooLarge, status_for
from gateway.keycache import KeyCache
from gateway.listener import listen_for_invalidations
from gateway.metering import UsageMeter
from gateway.metrics import METRICS
from gateway.proxy import Upstream, UpstreamResponse, forward_headers
from gateway.ratelimit import (
    Decision,
    MemoryWindows,
    ProjectRateLimiter,
    RedisWindows,
    build_windows,
)
from gateway.reqlog import Exchange, log_bodies, log_request, logs_bodies
from gateway.settings import GatewaySettings
from shared.apikeys import Credential
from shared.db import Database
from shared.environment import Environment, get_environment_config
from shared.errors import (
    EnvironmentMismatch,
    InvalidApiKey,
    ParityError,
    ProjectSuspended,
    RateLimited,
)
from shared.identity import ENVIRONMENT_HEADER, KEY_ID_HEADER, KEY_KIND_HEADER, PROJECT_ID_HEADER
from shared.keys import KeyKind, hash_token, key_prefix, parse_token
from shared.logging import flush_logs
from shared.metrics import Check, health_routes, serve_metrics
from shared.settings import PlatformSettings

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

READ_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
_PREFIXES: Final = {
    (environment, kind): key_prefix(environment, kind)
    for environment in Environment
    for kind in KeyKind
}
"""The token prefix a key row's environment and kind call for."""
_JSON: Final = (b"content-type", b"application/json")


def _credential_header(headers: list[tuple[bytes, bytes]]) -> tuple[bytes, str] | None:
    """(header name, token) of the key: the `apikey` header if present (Supabase's convention,
    which leaves `Authorization` to a user's JWT), else `Authorization: Bearer`."""
    bearer: str | None = None
    for name, value in headers:
        if name == b"apikey":
            return b"apikey", value.decode("latin-1").strip()
        if name == b"authorization" and bearer is None:
            scheme, _, token = value.decode("latin-1").strip().partition(" ")
            if scheme.lower() == "bearer":
                bearer = token.strip()
    return (b"authorization", bearer) if bearer is not None else None


def authenticate(credential: Credential | None, now: datetime | None = None) -> Credential:
    """`credential` if it identifies a usable key; else the 401 that applies."""
    if credential is None:
        raise InvalidApiKey("unknown API key: it was never issued or has been deleted")
    if credential.key_status != "active":
        raise InvalidApiKey("this API key has been revoked: use an active key of the project")
    if credential.expires_at is not None and credential.expires_at <= (now or datetime.now(UTC)):
        raise InvalidApiKey("this API key has expired: use an active key of the project")
    return credential


def authorize(credential: Credential, method: str) -> None:
    """Raise the refusal that applies to a request of an authenticated key, if any."""
    # Checked on every request, not only by the database trigger at write time: no later edit of
    # either row can let a key act in another environment.
    if credential.key_environment is not credential.project_environment:
        raise EnvironmentMismatch(
            f"this {credential.key_environment.value} key cannot be used on a"
            f" {credential.project_environment.value} project: use a key issued for"
            f" the project's {credential.project_environment.value} environment"
        )
    if credential.project_status != "active":
        raise ProjectSuspended(
            "the project is suspended and its requests are refused until an operator lifts the"
            " suspension"
        )
    if credential.kind is KeyKind.PUBLISHABLE and method not in READ_METHODS:
        raise PublishableKeyReadOnly(
            f"publishable (pk) keys may only make read requests (GET, HEAD, OPTIONS), not"
            f" {method}: use a secret (sk) key from your server for writes"
        )


class TooManyLookups(RateLimited):
    """A client address caused more key lookups than allowed: refused before authentication."""

    def __init__(self, limit: int, window_seconds: int, retry_after: int) -> None:
        super().__init__(
            f"more than {limit} lookups of API keys not seen before from this address in"
            f" {window_seconds} s: retry after {retry_after} s with a valid key"
        )
        self.retry_after = retry_after


class RateLimitExceeded(RateLimited):
    """A refusal that carries what the response headers and the log line need."""

    def __init__(self, credential: Credential, decision: Decision) -> None:
        super().__init__(
            f"rate limit of {decision.limit} requests per {decision.window_seconds} s reached for"
            f" this {credential.project_environment.value} project: retry after"
            f" {decision.reset_after} s"
        )
        self.decision = decision


class Gateway:
    """The ASGI application and the resources it owns between start-up and shutdown."""

    def __init__(self, platform: PlatformSettings, settings: GatewaySettings) -> None:
        self.platform = platform
        self.settings = settings
        self.db = Database(
            platform.database_url,
            min_size=platform.db_pool_min_size,
            max_size=platform.db_pool_max_size,
            name="gateway",
            prepared_statements=platform.db_prepared_statements,
            wait_seconds=settings.db_wait_seconds,
        )
        self.cache = KeyCache(
            self.db,
            ttl_seconds=settings.key_cache_ttl_seconds,
            max_entries=settings.key_cache_max_entries,
            unknown_ttl_seconds=settings.unknown_key_ttl_seconds,
            max_unknown=settings.unknown_key_max_entries,
        )
        self._client_lookups = MemoryWindows()
        self.limiter = ProjectRateLimiter(
            build_windows(
                platform.redis_url,
                key_prefix=settings.redis_key_prefix,
                timeout_seconds=platform.redis_timeout_seconds,
                retries=platform.redis_retries,
            ),
            window_seconds=platform.rate_limit_window_seconds,
        )
        self.meter = UsageMeter(
            self.db,
            window_seconds=platform.cap_window_seconds,
            default_cap=platform.default_request_cap,
        )
        self.upstream = Upstream(
            settings.upstream_url,
            connect_timeout=settings.connect_timeout_seconds,
            total_timeout=settings.upstream_timeout_seconds,
            max_connections=settings.max_upstream_connections,
        )
        self.metrics = METRICS if settings.metrics_port is not None else None
        """None when no metrics port is set: the request path then counts nothing."""
        self.listening = asyncio.Event()
        self.started = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._metrics_server = contextlib.AsyncExitStack()
        self._identities: dict[UUID, tuple[Credential, dict[str, str]]] = {}

    # Lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.db.open()
        await self.upstream.open()
        windows = self.limiter.windows
        if isinstance(windows, RedisWindows):
            await windows.connect()
        self._tasks = [
            asyncio.create_task(
                listen_for_invalidations(
                    self.platform.session_database_url,
                    self.cache,
                    retry_seconds=self.settings.listener_retry_seconds,
                    connected=self.listening,
                ),
                name="gateway-listener",
            ),
            asyncio.create_task(
                self.meter.run(self.settings.usage_flush_interval_seconds), name="usage-flush"
            ),
        ]
        await self._metrics_server.enter_async_context(
            serve_metrics(self.settings, routes=health_routes(self.readiness_checks()))
        )
        self.started.set()

    def readiness_checks(self) -> dict[str, Check]:
        """What `/readyz` asks (each within a second): the database, and Redis when the rate
        limits live there."""
        checks: dict[str, Check] = {"database": self._database_answers}
        windows = self.limiter.windows
        if isinstance(windows, RedisWindows):
            checks["redis"] = windows.ping
        return checks

    async def _database_answers(self) -> None:
        async with self.db.as_service() as conn:
            await conn.execute("select 1")

    async def stop(self) -> None:
        await self._metrics_server.aclose()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self.upstream.close()
        await self.limiter.close()
        await self.db.close()
        logger.info("gateway stopped")
        # uvicorn re-raises the SIGTERM it caught once shutdown is done, which ends the process
        # without running exit handlers: write out the buffered lines now.
        flush_logs()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.start()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    raise
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # Requests ----------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        else:  # websockets are not proxied
            await send({"type": "websocket.close", "code": 1008})

    async def lookup(self, token: str, client: str | None = None) -> Credential | None:
        """The credential of `token`, or None if unknown. Malformed and mistyped tokens are
        refused here, before any query; on a cache hit no query is made at all, nor for a
        token found unknown within the last seconds. A `client` address that caused too many
        lookups lately is refused before its next one (429).

        A token whose environment label or kind disagrees with its key's row is refused (401):
        the row is what is trusted, and a token that does not say what its row says was not
        issued for it (a row edited by hand, or a bug in issuing)."""
        key_hash = hash_token(token)
        metrics = self.metrics
        # Only tokens of stored keys are ever cached, so a hit is a well-formed token with a
        # valid checksum: the format check is needed, and paid, only on a miss.
        credential = self.cache.cached(key_hash)
        if credential is None:
            parse_token(token)
            if self.cache.known_unknown(key_hash):
                if metrics is not None:
                    metrics.cache_negatives += 1
                return None
            if metrics is not None:
                metrics.cache_misses += 1
            limited = self.settings.client_lookup_limit and client is not None
            credential = await self.cache.get(
                key_hash, (lambda: self._count_lookup(client)) if limited else None
            )
            if credential is None:
                return None
        elif metrics is not None:
            metrics.cache_hits += 1
        if not token.startswith(_PREFIXES[credential.key_environment, credential.kind]):
            raise InvalidApiKey(
                "API key does not match its record (environment or kind): use the key exactly"
                " as it was issued"
            )
        return credential

    async def take(self, credential: Credential) -> Decision:
        """One request from the project's budget: its base limit (or the platform default)
        times its environment's multiplier. Raises :class:`RateLimitExceeded` past it."""
        decision = await self.limiter.hit(credential.project_id, self._limit(credential))
        if not decision.allowed:
            raise RateLimitExceeded(credential, decision)
        return decision

    def _count_lookup(self, client: str | None) -> None:
        """Count one key lookup caused by `client`; refuse it past the limit."""
        limit = self.settings.client_lookup_limit
        window = self.settings.client_lookup_window_seconds
        count, end = self._client_lookups.count(client or "", window)
        if count > limit:
            raise TooManyLookups(limit, window, max(1, int(end - time.time()) + 1))

    def _limit(self, credential: Credential) -> int:
        environment = get_environment_config(credential.project_environment)
        return (
            credential.rate_limit or self.platform.default_rate_limit
        ) * environment.rate_limit_multiplier

    async def standing(self, credential: Credential) -> Decision | None:
        """The project's budget without counting a request, for the headers of a refusal that
        is not the limiter's; None when the limiter's storage cannot be reached."""
        try:
            return await self.limiter.peek(credential.project_id, self._limit(credential))
        except ParityError:
            return None

    async def admit(self, credential: Credential | None, method: str) -> Decision:
        """What is decided about a looked-up credential before forwarding: the refusals of
        :func:`authenticate` and :func:`authorize`, then one request from the project's budget."""
        authorize(authenticate(credential), method)
        assert credential is not None
        return await self.take(credential)

    async def decide(self, token: str, method: str) -> tuple[Credential, Decision]:
        """Everything the gateway decides before forwarding, as a request does it (what the
        benchmark of in-process decisions measures); raises the refusal that applies."""
        credential = await self.lookup(token)
        decision = await self.admit(credential, method)
        assert credential is not None
        return credential, decision

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        method: str = scope["method"]
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        credential: Credential | None = None
        decision: Decision | None = None
        upstream_seconds: float | None = None  # set once an upstream exchange was attempted
        try:
            found = _credential_header(headers)
            if found is None:
                raise InvalidApiKey(
                    "missing API key: send it as `Authorization: Bearer <key>` or an `apikey`"
                    " header"
                )
            credential_header, token = found
            # Looked up before admitting, so a refusal's log line still names the project.
            client = scope.get("client")
            credential = await self.lookup(token, client[0] if client else None)
            decision = await self.admit(credential, method)
            assert credential is not None
            body = (
                await _read_body(receive, self.settings.max_request_body_bytes)
                if _has_body(headers)
                else b""
            )
            self.meter.record(credential.project_id, credential.key_id)
            upstream_headers = forward_headers(
                headers,
                drop=credential_header,
                identity=self._identity(credential),
            )
            upstream_started = time.perf_counter()
            try:
                response = await self.upstream.forward(
                    method,
                    scope.get("raw_path") or scope["path"].encode(),
                    scope["query_string"],
                    upstream_headers,
                    body,
                )
            finally:
                upstream_seconds = time.perf_counter() - upstream_started
        except RateLimitExceeded as refusal:
            await _send_error(send, 429, refusal, refusal.decision)
            if self.metrics is not None:
                self.metrics.rate_limited(credential)
            self._log(scope, 429, started, credential, refusal.code)
            return
        except TooManyLookups as refusal:
            await _send_error(
                send, 429, refusal, None, ((b"retry-after", b"%d" % refusal.retry_after),)
            )
            if self.metrics is not None:
                self.metrics.rate_limited(credential)
            self._log(scope, 429, started, credential, refusal.code)
            return
        except ParityError as error:
            status = status_for(error)
            if status == 403 and credential is not None:
                # A 403 refuses a key that authenticated (environment, suspension, publishable
                # write): its answer carries the project's budget, without spending from it.
                decision = await self.standing(credential)
            await _send_error(send, status, error, decision)
            self._log(scope, status, started, credential, error.code, upstream_seconds)
            return
        except Exception:
            logger.exception("unexpected error in the gateway")
            failure = ParityError(
                "the gateway failed unexpectedly: retry, and report it if it lasts"
            )
            await _send_error(send, 500, failure, decision)
            self._log(scope, 500, started, credential, failure.code, upstream_seconds)
            return
        await _send_response(send, response, decision, head=method == "HEAD")
        exchange = self._log(scope, response.status, started, credential, None, upstream_seconds)
        if logs_bodies(credential):
            log_bodies(
                exchange,
                request_headers=headers,
                request_body=body,
                response_headers=response.headers,
                response_body=response.body,
                cap=self.settings.log_body_max_bytes,
            )

    def _identity(self, credential: Credential) -> dict[str, str]:
        """The identity headers the upstream gets for `credential`, formatted once per cached
        credential rather than per request: the cache hands out the same object until the key
        or its project changes, and a changed one is a new object, so it is formatted anew."""
        memo = self._identities.get(credential.key_id)
        if memo is not None and memo[0] is credential:
            return memo[1]
        identity = {
            PROJECT_ID_HEADER: str(credential.project_id),
            ENVIRONMENT_HEADER: credential.project_environment.value,
            KEY_KIND_HEADER: credential.kind.value,
            KEY_ID_HEADER: str(credential.key_id),
        }
        if len(self._identities) >= self.settings.key_cache_max_entries:
            self._identities.clear()  # bounded like the key cache; rebuilt on demand
        self._identities[credential.key_id] = (credential, identity)
        return identity

    def _log(
        self,
        scope: Scope,
        status: int,
        started: float,
        credential: Credential | None,
        error_code: str | None,
        upstream_seconds: float | None = None,
    ) -> Exchange:
        """The request's info line and, when metrics are on, its count and times (the time in
        the gateway itself is the whole minus the upstream exchange)."""
        elapsed = time.perf_counter() - started
        exchange = Exchange(
            method=scope["method"],
            path=scope["path"],
            query=scope["query_string"].decode("latin-1"),
            status=status,
            duration_ms=elapsed * 1000,
            credential=credential,
            error_code=error_code,
        )
        log_request(exchange)
        if self.metrics is not None:
            self.metrics.request(
                credential, error_code, elapsed - (upstream_seconds or 0.0), upstream_seconds
            )
        return exchange


def _has_body(headers: list[tuple[bytes, bytes]]) -> bool:
    # HTTP/1.1 frames a request body only by Content-Length or Transfer-Encoding: without either
    # there is none, and the usual GET costs no extra await.
    return any(name in (b"content-length", b"transfer-encoding") for name, _ in headers)


async def _read_body(receive: Receive, limit: int) -> bytes:
    """The whole request body, or :class:`RequestTooLarge` as soon as it passes `limit` bytes
    (so an oversized upload is never held in memory whole)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise RequestTooLarge(
                f"request body larger than {limit} bytes: send less per request, or split it"
            )
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def _send_response(
    send: Send, response: UpstreamResponse, decision: Decision | None, *, head: bool
) -> None:
    headers = list(response.headers)
    if head:
        # A HEAD answer has no body but tells the length a GET would have: keep the upstream's.
        if response.content_length is not None:
            headers.append((b"content-length", response.content_length))
    else:
        headers.append((b"content-length", b"%d" % len(response.body)))
    if decision is not None:
        headers.extend(decision.headers())
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else response.body})


async def _send_error(
    send: Send,
    status: int,
    error: ParityError,
    decision: Decision | None,
    extra: tuple[tuple[bytes, bytes], ...] = (),
) -> None:
    body = json.dumps({"error": {"code": error.code, "message": error.message}}).encode()
    headers = [_JSON, (b"content-length", b"%d" % len(body)), *extra]
    if decision is not None:
        headers.extend(decision.headers())
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
