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

# IPv6 ranges that carry an IPv4 address in their last 32 bits. Whether the IPv6 form is routable
# or not, the IPv4 inside decides where a translator or tunnel delivers the request.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
_SHARED = ipaddress.IPv4Network("100.64.0.0/10")  # carrier-grade NAT (cloud metadata lives here)


class TargetRefused(OSError):
    """The webhook target resolves to an address the SSRF guard refuses."""


def parse_address(host: str) -> IPAddress | None:
    """The address a numeric `host` means to the platform's own resolver, None for a name.

    IPv4 follows `inet_aton`: decimal, octal and hex parts and the short forms (`2130706433`,
    `0177.0.0.1`, `0x7f.1`, `127.1` are all 127.0.0.1), as getaddrinfo reads them when an HTTP
    client hands such a host to the socket layer without asking the resolver.
    """
    host = host.strip("[]")
    if host.endswith(".") and not host.endswith(".."):
        host = host[:-1]
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except (OSError, ValueError):
        return None


def looks_numeric(host: str) -> bool:
    """Whether `host` is shaped like an address (digits and dots, or an IPv6 colon) rather than
    a name: such a host that does not parse is refused instead of guessed at."""
    return ":" in host or all(ch.isdigit() or ch == "." for ch in host)


def embedded_ipv4(address: ipaddress.IPv6Address) -> list[tuple[str, ipaddress.IPv4Address]]:
    """The IPv4 addresses an IPv6 address wraps: mapped, 6to4, NAT64, Teredo, IPv4-compatible."""
    found: list[tuple[str, ipaddress.IPv4Address]] = []
    if address.ipv4_mapped is not None:
        found.append(("IPv4-mapped", address.ipv4_mapped))
    if address.sixtofour is not None:
        found.append(("6to4", address.sixtofour))
    if address.teredo is not None:
        server, client = address.teredo
        found += [("Teredo server", server), ("Teredo client", client)]
    last32 = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _NAT64:
        found.append(("NAT64", last32))
    elif address in _IPV4_COMPATIBLE and int(address) > 1:
        found.append(("IPv4-compatible", last32))
    return found


def _category(address: IPAddress) -> str | None:
    for attribute, what in (
        # Most specific first: `is_private` also covers loopback, link-local and the rest.
        ("is_loopback", "loopback"),
        ("is_link_local", "link-local"),
        ("is_multicast", "multicast"),
        ("is_unspecified", "unspecified"),
        ("is_site_local", "site-local"),
        ("is_reserved", "reserved"),
        ("is_private", "private"),
    ):
        if getattr(address, attribute, False):
            return what
    if isinstance(address, ipaddress.IPv4Address) and address in _SHARED:
        return "shared (carrier-grade NAT)"
    if not address.is_global:
        return "not globally routable"
    return None


def refusal(address: IPAddress) -> str | None:
    """Why `address` is not a public target, or None when it is: anything not globally routable,
    and any IPv6 form wrapping an IPv4 address that is not."""
    if isinstance(address, ipaddress.IPv6Address):
        for form, inner in embedded_ipv4(address):
            what = _category(inner)
            if what is not None:
                return f"{address} wraps {inner} ({form}), a {what} address"
    what = _category(address)
    return None if what is None else f"{address} is a {what} address"


def _refuse(host: str, reason: str) -> TargetRefused:
    return TargetRefused(
        f"target {host} refused: {reason} (WORKER_ALLOW_PRIVATE_TARGETS allows it in local runs)"
    )


class GuardedResolver(AbstractResolver):
    """Resolves names like aiohttp's default resolver, keeping only public addresses: the
    addresses returned here are the ones connected to, so a rebinding DNS answer cannot slip by."""

    def __init__(self) -> None:
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        reasons = [_resolved_refusal(r["host"]) for r in results]
        allowed = [r for r, reason in zip(results, reasons, strict=True) if reason is None]
        if not allowed:
            raise _refuse(host, next((r for r in reasons if r), "no address"))
        return allowed

    async def close(self) -> None:
        await self._inner.close()


def _resolved_refusal(resolved: str) -> str | None:
    address = parse_address(resolved)
    return f"{resolved!r} is not an address" if address is None else refusal(address)


def check_literal_target(url: str) -> None:
    """Refuse a URL whose host is a numeric address that is not public. HTTP clients connect to
    numeric hosts without asking the resolver, so this check must read them as the socket layer
    does, whatever the client version believes an address looks like."""
    host = urlsplit(url).hostname or ""
    address = parse_address(host)
    if address is None:
        if looks_numeric(host.rstrip(".")):
            raise _refuse(host, "a numeric host that is not a valid address")
        return
    reason = refusal(address)
    if reason is not None:
        raise _refuse(host, reason)


# One encoder for every body: `json.dumps` with options builds a new one per call.
_BODY_ENCODER = json.JSONEncoder(separators=(",", ":"), sort_keys=True)


def webhook_body(delivery: ClaimedDelivery) -> str:
    """The JSON the receiver gets: the same text on every attempt, so retries are identical."""
    return _BODY_ENCODER.encode(
        {
            "id": str(delivery.event_id),
            "type": delivery.event_type,
            "created_at": delivery.event_created_at.isoformat(),
            "project_id": str(delivery.project_id),
            "environment": delivery.environment.value,
            "data": delivery.payload,
        }
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
