"""Forwarding to the upstream with one shared `aiohttp.ClientSession` (httpx's default transport is
an order of magnitude slower under concurrency; see the performance notes)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

import aiohttp
from yarl import URL

from gateway.errors import UpstreamTimeout, UpstreamUnavailable
from shared.identity import IDENTITY_HEADER_PREFIX

# RFC 9110 section 7.6.1, plus what aiohttp computes itself (host, content-length).
HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)


@dataclass(slots=True)  # one per request: see gateway.reqlog.Exchange on not freezing it
class UpstreamResponse:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    content_type: str
    content_length: bytes | None = None
    """The upstream's Content-Length header, which only a HEAD answer needs passed on."""


_HOP_BY_HOP_RAW: Final = frozenset(name.encode() for name in HOP_BY_HOP)
_IDENTITY_PREFIX_RAW: Final = IDENTITY_HEADER_PREFIX.encode()


def forward_headers(
    raw: list[tuple[bytes, bytes]], *, drop: bytes, identity: dict[str, str]
) -> list[tuple[str, str]]:
    """Request headers for the upstream: without hop-by-hop headers, the header named `drop`
    (the credential the gateway consumed) and any client-supplied identity header; with ours.
    `raw` is the ASGI scope's list, whose names are lower case.

    A plain list, not a multidict: aiohttp copies whatever it is given into its own multidict,
    so building one here would be built twice per request. The identity headers can simply be
    appended because every client-supplied header with their prefix was dropped above."""
    skip = _HOP_BY_HOP_RAW
    for name, value in raw:
        if name == b"connection":
            # Headers the client's Connection header names are hop-by-hop too (RFC 9110 7.6.1).
            skip = skip | {token.strip().lower() for token in value.split(b",")}
    headers = [
        (name.decode("latin-1"), value.decode("latin-1"))
        for name, value in raw
        if name != drop and name not in skip and not name.startswith(_IDENTITY_PREFIX_RAW)
    ]
    headers.extend(identity.items())
    return headers


# The gateway's server sets its own Date; two would confuse clients. As bytes: compared with
# raw header names on every response.
_RESPONSE_DROP_RAW: Final = _HOP_BY_HOP_RAW | {b"date"}


def _response_headers(raw: Iterable[tuple[bytes, bytes]]) -> tuple[list[tuple[bytes, bytes]], str]:
    headers: list[tuple[bytes, bytes]] = []
    content_type = ""
    for name, value in raw:
        lower = name.lower()
        if lower in _RESPONSE_DROP_RAW:
            continue
        if lower == b"content-type":
            content_type = value.decode("latin-1")
        headers.append((lower, value))
    return headers, content_type


class _ForwardedRequest(aiohttp.ClientRequest):
    """A request that goes upstream with the client's headers only: aiohttp adds none of its
    default ones (Accept, Accept-Encoding, User-Agent).

    The session's `skip_auto_headers` would do the same for named headers, but aiohttp then
    sorts them into a new multidict and copies the request's headers once more, per request.
    Bodies pass through as the upstream encoded them, and the client's own Accept-Encoding (or
    its absence) is what the upstream sees."""

    def update_auto_headers(self, skip_auto_headers: Iterable[str] | None) -> None:
        pass


class Upstream:
    """The service behind the gateway."""

    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout: float,
        total_timeout: float,
        max_connections: int,
    ) -> None:
        self._base = base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=total_timeout, sock_connect=connect_timeout)
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._max_connections),
            timeout=self._timeout,
            auto_decompress=False,
            request_class=_ForwardedRequest,
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def forward(
        self,
        method: str,
        raw_path: bytes,
        query: bytes,
        headers: list[tuple[str, str]],
        body: bytes,
    ) -> UpstreamResponse:
        """Send the request on and read the whole response; raise :class:`UpstreamUnavailable`
        (502) or :class:`UpstreamTimeout` (504) rather than hang."""
        assert self._session is not None, "Upstream.open() first"
        target = self._base + raw_path.decode("latin-1")
        if query:
            target += "?" + query.decode("latin-1")
        try:
            async with self._session.request(
                method,
                URL(target, encoded=True),
                headers=headers,
                data=body or None,
                allow_redirects=False,
            ) as response:
                payload = await response.read()
                response_headers, content_type = _response_headers(response.raw_headers)
                length = response.headers.get("content-length")
                return UpstreamResponse(
                    response.status,
                    response_headers,
                    payload,
                    content_type,
                    length.encode("latin-1") if length is not None else None,
                )
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            raise UpstreamUnavailable(
                "the upstream service cannot be reached: retry shortly"
            ) from exc
        except TimeoutError as exc:
            raise UpstreamTimeout() from exc
        except (aiohttp.ClientError, asyncio.IncompleteReadError) as exc:
            raise UpstreamUnavailable(
                "the upstream service closed the connection or answered badly: retry shortly"
            ) from exc
