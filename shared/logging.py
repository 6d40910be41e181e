"""Logging with loguru for every process: readable lines, or JSON lines when configured."""

from __future__ import annotations

import sys
from typing import Literal

from loguru import logger


def configure_logging(
    *, level: str = "INFO", log_format: Literal["text", "json"] = "text", process: str = ""
) -> None:
    """Send records at `level` and above to stderr, as text or one JSON object per line."""
    logger.remove()
    logger.configure(extra={"process": process})
    if log_format == "json":
        logger.add(sys.stderr, level=level, serialize=True, backtrace=False, diagnose=False)
    else:
        logger.add(
            sys.stderr,
            level=level,
            backtrace=False,
            diagnose=False,
            format="<green>{time:HH:mm:ss.SSS}</green> <level>{level: <7}</level> "
            "<cyan>{extra[process]}</cyan> {message}",
        )
