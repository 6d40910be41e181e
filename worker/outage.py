"""Database outages as the worker lives them: one log line when the database goes away, one when
it is back, whatever the number of tasks and retries in between (no traceback: an outage is an
expected state, not a bug)."""

from __future__ import annotations

import time

from loguru import logger


class Outage:
    """The database's state as the worker's tasks last saw it, shared by all of them."""

    def __init__(self) -> None:
        self._since: float | None = None
        self.outages = 0

    @property
    def ongoing(self) -> bool:
        return self._since is not None

    def failed(self, doing: str, exc: BaseException) -> None:
        """A task could not reach the database while `doing` something; it will try again."""
        if self._since is None:
            self._since = time.monotonic()
            self.outages += 1
            logger.warning(
                "database unavailable ({} failed: {}); waiting, work resumes when it is back",
                doing,
                str(exc).strip() or type(exc).__name__,
            )

    def ok(self) -> None:
        """A task just used the database successfully."""
        if self._since is not None:
            logger.info("database available again after {:.1f} s", time.monotonic() - self._since)
            self._since = None
