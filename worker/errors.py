"""Which database errors the worker waits out rather than dying of."""

from __future__ import annotations

import psycopg

from shared.errors import DatabaseUnavailable, ParityError

# serialization_failure, deadlock_detected: the transaction can simply be tried again.
RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})


def is_transient(exc: ParityError) -> bool:
    """An outage or a conflict that trying again resolves; anything else is a bug to surface."""
    if isinstance(exc, DatabaseUnavailable):
        return True
    cause = exc.__cause__
    return isinstance(cause, psycopg.Error) and cause.sqlstate in RETRYABLE_SQLSTATES
