"""`python -m bench.proxy --port N --upstream URL`: the simplest aiohttp reverse proxy, the
gateway benchmark's reference. Independent of the gateway's code: an `aiohttp.web` server (on
uvloop, as the gateway) that forwards method, path, query, headers (minus hop-by-hop ones) and
body to the upstream with one shared `aiohttp.ClientSession`, and passes the answer back. No
authentication, limits, metering or logs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import AsyncIterator
from typing import Final

import aiohttp
import uvloop
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "date",
        "server",
    }
)
SESSION: web.AppKey[aiohttp.ClientSession] = web.AppKey("session", aiohttp.ClientSession)
UPSTREAM: web.AppKey[str] = web.AppKey("upstream", str)


def _pass_on(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    return CIMultiDict(
        (name, value) for name, value in headers.items() if name.lower() not in HOP_BY_HOP
    )


async def forward(request: web.Request) -> web.Response:
    body = await request.read()
    async with request.app[SESSION].request(
        request.method,
        request.app[UPSTREAM] + request.raw_path,
        headers=_pass_on(request.headers),
        data=body or None,
        allow_redirects=False,
    ) as response:
        payload = await response.read()
        return web.Response(
            status=response.status, headers=_pass_on(response.headers), body=payload
        )


async def _session(app: web.Application) -> AsyncIterator[None]:
    app[SESSION] = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=512), auto_decompress=False
    )
    yield
    await app[SESSION].close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.proxy", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args(argv)
    app = web.Application()
    app[UPSTREAM] = args.upstream.rstrip("/")
    app.cleanup_ctx.append(_session)
    app.router.add_route("*", "/{tail:.*}", forward)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
