"""`python -m console`: the management API and the dashboard on uvicorn."""

from __future__ import annotations

import argparse
import asyncio
import sys

import uvicorn

from console.app import create_app
from console.metrics import ConsoleProcessSettings, RequestMetrics
from console.settings import ConsoleSettings, UnsafeSettings, is_local_run
from shared.logging import configure_logging
from shared.metrics import serve_metrics
from shared.settings import PlatformSettings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m console", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to bind (8000)")
    args = parser.parse_args(argv)

    platform = PlatformSettings()
    settings = ConsoleSettings()
    process = ConsoleProcessSettings()
    if not platform.database_url:
        parser.error("DATABASE_URL is not set (`make run` sets it)")
    configure_logging(log_format=platform.log_format, process="console")
    local = is_local_run(settings, database_url=platform.database_url, host=args.host)
    try:
        app = create_app(settings, platform, local=local)
    except UnsafeSettings as exc:
        parser.error(str(exc))
    docs = " (API docs at /docs)" if app.state.console.settings.docs else ""
    print(f"Console: http://{args.host}:{args.port}/{docs}", flush=True)
    config = uvicorn.Config(
        RequestMetrics(app),
        host=args.host,
        port=args.port,
        log_level="info",
        # uvicorn's own records go through loguru (configure_logging intercepts the standard
        # logging module), in the process's format: JSON lines stay JSON.
        log_config=None,
        access_log=process.access_log,
    )
    with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
        runner.run(_serve(uvicorn.Server(config), process))
    return 0


async def _serve(server: uvicorn.Server, process: ConsoleProcessSettings) -> None:
    async with serve_metrics(process):
        await server.serve()


if __name__ == "__main__":
    sys.exit(main())
