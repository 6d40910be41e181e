"""HTTP statuses of the project's errors, shared by the API and the dashboard."""

from __future__ import annotations

from typing import Final

from console.auth import CsrfFailed, Unauthenticated
from console.signin import SignInUnavailable, TooManySignIns
from shared.errors import (
    Conflict,
    DatabaseUnavailable,
    EnvironmentMismatch,
    InvalidInput,
    NotFound,
    ParityError,
    PermissionDenied,
)

# Most specific first: EnvironmentLocked is a Conflict, InvalidEnvironment an InvalidInput.
_STATUS: Final[tuple[tuple[type[ParityError], int], ...]] = (
    (Unauthenticated, 401),
    (TooManySignIns, 429),
    (CsrfFailed, 403),
    (NotFound, 404),
    (InvalidInput, 422),
    (Conflict, 409),
    (EnvironmentMismatch, 409),
    (PermissionDenied, 403),
    (DatabaseUnavailable, 503),
    (SignInUnavailable, 503),
)


def status_of(exc: ParityError) -> int:
    """404 for anything missing or not the caller's, 422 for bad input, 409 for conflicts..."""
    for kind, status in _STATUS:
        if isinstance(exc, kind):
            return status
    return 500
