"""`python -m worker`: auto-suspend sweeps and webhook delivery, until SIGTERM or SIGINT.

`--drain` processes what is due now and exits; `--check` exits 0 when a worker's heartbeat is fresh.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import sys

import uvloop
from loguru import logger
from pydantic import ValidationError

from shared.logging import configure_logging
from shared.settings import PlatformSettings
from worker import metrics
from worker.app import Worker, check
from worker.metrics import WorkerMetricsSettings
from worker.settings import WorkerSettings


async def _run(worker: Worker, metrics_settings: WorkerMetricsSettings, *, drain: bool) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, _on_signal, stop, signum)
    async with metrics.serve(worker.platform, metrics_settings):
        return await worker.run(stop, drain=drain)


def _on_signal(stop: asyncio.Event, signum: int) -> None:
    if stop.is_set():
        logger.warning("second {}: exiting at once", signal.Signals(signum).name)
        sys.exit(130)
    logger.info("{}: stopping gracefully", signal.Signals(signum).name)
    stop.set()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--drain", action="store_true", help="process what is due, then exit")
    mode.add_argument("--check", action="store_true", help="exit 0 if a worker heartbeat is fresh")
    args = parser.parse_args(argv)

    try:
        platform = PlatformSettings()
        settings = WorkerSettings()
        metrics_settings = WorkerMetricsSettings()
    except ValidationError as exc:
        parser.error(f"invalid settings (environment variables): {exc}")
    configure_logging(level=settings.log_level, log_format=platform.log_format, process="worker")
    # The pool would log each failed reconnection; the worker says once that the database is away
    # and once that it is back (worker.outage).
    logging.getLogger("psycopg.pool").setLevel(logging.CRITICAL)
    if not platform.database_url:
        parser.error("DATABASE_URL is not set")
    # The garbage collector: what start-up built (modules, settings, pools) lives as long as the
    # process, so it is frozen out of every collection; and a collection waits for 10,000 new
    # objects, not 700. A delivery's objects are freed by reference counting; the collector only
    # finds cycles (a delivery leaves almost none behind), and it ran every few deliveries: 5
    # to 7% of the worker's CPU.
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)
    # uvloop: the dispatcher spends most of its time in socket I/O, where it is markedly faster.
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        if args.check:
            return runner.run(check(platform, settings))
        return runner.run(_run(Worker(platform, settings), metrics_settings, drain=args.drain))


if __name__ == "__main__":
    sys.exit(main())
