"""`python -m ops.demo_upstream --port N`: a tiny upstream for the gateway to stand in front of.

It echoes what reached it: method, path, query, the identity headers the gateway set, and the body.
"""

from __future__ import annotations

import argparse
import sys

from aiohttp import web

from shared.identity import IDENTITY_HEADERS


async def echo(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response(
        {
            "method": request.method,
            "path": request.path,
            "query": request.query_string,
            "identity": {name: request.headers.get(name) for name in IDENTITY_HEADERS},
            "body": body.decode("utf-8", errors="replace"),
        }
    )


def make_app() -> web.Application:
    """The echo application; every method and path answers."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.demo_upstream", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    args = parser.parse_args(argv)
    web.run_app(make_app(), host=args.host, port=args.port, access_log=None, print=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
