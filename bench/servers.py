"""The reference servers the gateway benchmark runs beside the gateway, on the same stack (uvicorn
with uvloop and httptools, raw ASGI):

- `python -m bench.servers upstream --port N`: a trivial upstream returning a small JSON body;
- `python -m bench.servers hop --port N --upstream URL`: the bare proxy hop, forwarding each
  request with one shared `aiohttp.ClientSession` and nothing else (no auth, limits or logs);
- `python -m bench.servers forwarding-hop --port N --upstream URL`: a hop that forwards as a
  proxy must (query, body, request headers minus hop-by-hop ones, the upstream's response
  headers) with the gateway's own forwarding code, and still no auth, limits, metering or logs.
  Against it, the gateway's ratio measures exactly what the gateway adds to proxying.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import aiohttp
import uvicorn

from gateway.proxy import Upstream, forward_headers

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

BODY = b'{"ok": true, "items": [1, 2, 3]}'


async def upstream(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": BODY})


class Hop:
    """The bare proxy hop: what the gateway would be without auth, limits, metering or logs."""

    def __init__(self, upstream_url: str) -> None:
        self.upstream_url = upstream_url.rstrip("/")
        self.session: aiohttp.ClientSession | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    self.session = aiohttp.ClientSession(
                        connector=aiohttp.TCPConnector(limit=512), auto_decompress=False
                    )
                    await send({"type": "lifespan.startup.complete"})
                else:
                    if self.session is not None:
                        await self.session.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        assert self.session is not None
        async with self.session.request(
            scope["method"], self.upstream_url + scope["path"]
        ) as response:
            body = await response.read()
            headers = [
                (b"content-type", response.headers.get("content-type", "").encode()),
                (b"content-length", b"%d" % len(body)),
            ]
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class ForwardingHop:
    """The gateway's forwarding (gateway.proxy) with nothing in front of it."""

    def __init__(self, upstream_url: str) -> None:
        self.upstream = Upstream(
            upstream_url, connect_timeout=2.0, total_timeout=30.0, max_connections=512
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await self.upstream.open()
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await self.upstream.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        response = await self.upstream.forward(
            scope["method"],
            scope["raw_path"],
            scope["query_string"],
            forward_headers(scope["headers"], drop=b"", identity={}),
            body,
        )
        headers = [*response.headers, (b"content-length", b"%d" % len(response.body))]
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": response.body})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.servers", description=__doc__)
    parser.add_argument("kind", choices=["upstream", "hop", "forwarding-hop"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", default="")
    args = parser.parse_args(argv)
    apps: dict[str, Any] = {
        "upstream": upstream,
        "hop": Hop(args.upstream),
        "forwarding-hop": ForwardingHop(args.upstream),
    }
    app = apps[args.kind]
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        lifespan="off" if args.kind == "upstream" else "on",
        access_log=False,
        log_level="warning",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
