"""`python -m gateway`: the data plane on uvicorn (uvloop, httptools)."""

from __future__ import annotations

import argparse
import asyncio
import gc
import socket
import sys

import uvicorn
import uvloop
from loguru import logger

from gateway.app import Gateway
from gateway.settings import GatewaySettings
from shared.logging import configure_logging, flush_logs
from shared.settings import PlatformSettings


def build_server(gateway: Gateway) -> uvicorn.Server:
    """The uvicorn server the gateway runs on; also used by tests and benchmarks."""
    config = uvicorn.Config(
        gateway,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,  # the gateway writes its own line per request
        server_header=False,
        proxy_headers=False,  # the gateway does not use the client address
        log_level="warning",
        # uvicorn's own records go through the process's loguru configuration (see
        # shared.logging), not through handlers uvicorn would install: one format for all.
        log_config=None,
    )
    return uvicorn.Server(config)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket; port 0 picks a free one."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    return sock


async def serve(gateway: Gateway, sock: socket.socket) -> None:
    server = build_server(gateway)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    ready = asyncio.create_task(gateway.started.wait())
    await asyncio.wait([task, ready], return_when=asyncio.FIRST_COMPLETED)
    if gateway.started.is_set():
        # What start-up allocated lives as long as the process: keep it out of every collection,
        # which shortens the pauses that show up as tail latency.
        gc.freeze()
        # The socket was listening all along (connections queue): announce once start-up is done.
        # Tests and `make run` read the actual port from this line.
        host, port = sock.getsockname()[:2]
        logger.info("gateway listening on http://{}:{}", host, port)
        flush_logs()  # others wait for this line: not a quarter of a second later
    ready.cancel()
    await task


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    args = parser.parse_args(argv)

    platform = PlatformSettings()
    settings = GatewaySettings()
    # Debug records are emitted only for projects whose environment logs at debug, so the sink
    # accepts debug and each request decides. Buffered: a line per request must not cost a
    # system call per request (lines are flushed at least every quarter of a second).
    configure_logging(
        level="DEBUG", log_format=platform.log_format, process="gateway", buffered=True
    )
    if not platform.database_url:
        logger.error("DATABASE_URL is not set: the gateway needs Postgres to look keys up")
        return 2
    sock = bind(args.host, args.port)
    uvloop.run(serve(Gateway(platform, settings), sock))
    return 0


if __name__ == "__main__":
    sys.exit(main())
