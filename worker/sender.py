"""Sending one webhook attempt: the Standard Webhooks body and signature, an aiohttp client with
connect and total timeouts, and the SSRF guard.

aiohttp directly, not httpx's default transport: on this path the latter manages a tenth of the
throughput (see the benchmark). The SSRF guard sits in the connector's resolver, so the address
checked is the address connected to (no second lookup a rebinding DNS server could answer).
"""

from __future__ import annotations

import ipaddress
import json
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from functools import lru_cache
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from standardwebhooks import Webhook

from worker.queue import ClaimedDelivery
from worker.settings import WorkerSettings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class TargetRefused(OSError):
    """The webhook target resolves to an address the SSRF guard refuses."""


def refusal(address: IPAddress) -> str | None:
    """Why `address` is not a public target, or None when it is."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    for attribute, what in (
        # Most specific first: `is_private` also covers loopback, link-local and the rest.
        ("is_loopback", "loopback"),
        ("is_link_local", "link-local"),
        ("is_multicast", "multicast"),
        ("is_unspecified", "unspecified"),
        ("is_reserved", "reserved"),
        ("is_private", "private"),
    ):
        if getattr(address, attribute):
            return f"{address} is a {what} address"
    return None


def _refuse(host: str, reason: str) -> TargetRefused:
    return TargetRefused(
        f"target {host} refused: {reason} (WORKER_ALLOW_PRIVATE_TARGETS allows it in local runs)"
    )


class GuardedResolver(AbstractResolver):
    """Resolves names like aiohttp's default resolver, keeping only public addresses."""

    def __init__(self) -> None:
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        allowed = [r for r in results if refusal(ipaddress.ip_address(r["host"])) is None]
        if not allowed:
            reason = refusal(ipaddress.ip_address(results[0]["host"])) or "no address"
            raise _refuse(host, reason)
        return allowed

    async def close(self) -> None:
        await self._inner.close()


def check_literal_target(url: str) -> None:
    """Refuse a URL whose host is a literal non-public IP (aiohttp skips the resolver for those)."""
    host = urlsplit(url).hostname or ""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return
    reason = refusal(address)
    if reason is not None:
        raise _refuse(host, reason)


def webhook_body(delivery: ClaimedDelivery) -> str:
    """The JSON the receiver gets: the same text on every attempt, so retries are identical."""
    return json.dumps(
        {
            "id": str(delivery.event_id),
            "type": delivery.event_type,
            "created_at": delivery.event_created_at.isoformat(),
            "project_id": str(delivery.project_id),
            "environment": delivery.environment.value,
            "data": delivery.payload,
        },
        separators=(",", ":"),
        sort_keys=True,
    )


@lru_cache(maxsize=1024)
def _signer(secret: str) -> Webhook:
    # Decoding the secret costs more than signing; endpoints are few and their secrets stable.
    return Webhook(secret)


def signed_headers(delivery_id: str, secret: str, body: str, at: datetime) -> dict[str, str]:
    """Standard Webhooks headers for `body` sent at `at`: `body` is exactly what is signed."""
    return {
        "content-type": "application/json",
        "webhook-id": delivery_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": _signer(secret).sign(delivery_id, at, body),
    }


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds asked for by a `Retry-After` header (seconds or an HTTP date); None if absent or
    unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


@dataclass(frozen=True, slots=True)
class Response:
    """What came back from one attempt (or why nothing usable did)."""

    started_at: datetime
    duration_ms: int
    status_code: int | None
    body: str | None
    error: str | None
    retry_after: float | None

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class Sender:
    """An aiohttp session shared by every attempt of one worker."""

    def __init__(self, settings: WorkerSettings) -> None:
        self._settings = settings
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Sender:
        settings = self._settings
        connector = aiohttp.TCPConnector(
            limit=settings.concurrency,
            resolver=None if settings.allow_private_targets else GuardedResolver(),
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=settings.request_timeout_seconds,
                sock_connect=settings.connect_timeout_seconds,
            ),
            # Receivers see our own headers only; no cookies carried between receivers.
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent",),
            headers={"user-agent": "environment-parity-webhooks/1"},
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def send(self, delivery: ClaimedDelivery, body: str) -> Response:
        """POST `body`, signed with a fresh timestamp, to the delivery's endpoint."""
        assert self._session is not None, "use Sender as an async context manager"
        started_at = datetime.now(UTC)
        clock = time.perf_counter()
        status: int | None = None
        text: str | None = None
        error: str | None = None
        retry_after: float | None = None
        try:
            if not self._settings.allow_private_targets:
                check_literal_target(delivery.url)
            headers = signed_headers(str(delivery.id), delivery.secret, body, started_at)
            async with self._session.post(
                delivery.url, data=body.encode(), headers=headers, allow_redirects=False
            ) as resp:
                status = resp.status
                raw = await resp.content.read(self._settings.response_body_limit)
                text = raw.decode("utf-8", errors="replace")
                retry_after = parse_retry_after(resp.headers.get("retry-after"))
                if 300 <= status < 400:
                    location = resp.headers.get("location", "")
                    error = f"redirect to {location!r} not followed: the endpoint URL must answer"
        except TargetRefused as exc:
            error = str(exc)
        except aiohttp.ClientConnectorError as exc:
            error = str(exc.os_error) if isinstance(exc.os_error, TargetRefused) else _describe(exc)
        except TimeoutError:
            error = f"timed out after {self._settings.request_timeout_seconds:g} s"
        except (aiohttp.ClientError, ValueError) as exc:
            error = _describe(exc)
        duration_ms = round((time.perf_counter() - clock) * 1000)
        return Response(
            started_at, duration_ms, status, _storable(text), _storable(error), retry_after
        )


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500] if str(exc) else type(exc).__name__


def _storable(text: str | None) -> str | None:
    """`text` as Postgres can store it: a receiver's NUL byte must not fail the attempt's record."""
    return None if text is None else text.replace("\x00", "\ufffd")
