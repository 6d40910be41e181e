"""The project's exceptions: one root, a subclass for each thing a caller handles differently.

The docstring of each class is its default message.
"""

from __future__ import annotations

from typing import Any


class ParityError(Exception):
    """Something went wrong in Environment Parity."""

    code = "INTERNAL_ERROR"

    def __init__(self, message: str | None = None, *, hint: str | None = None) -> None:
        self.message = message or (self.__doc__ or self.code).strip()
        self.hint = hint
        super().__init__(self.message)


class InvalidInput(ParityError):
    """The request is not valid."""

    code = "INVALID_INPUT"


class InvalidEnvironment(InvalidInput, ValueError):
    """Not an environment: use prod, dev or staging."""

    code = "INVALID_ENVIRONMENT"

    def __init__(self, value: Any) -> None:
        super().__init__(f"invalid environment {value!r}: expected one of 'prod', 'dev', 'staging'")
        self.value = value


class NotFound(ParityError):
    """No such thing, or not yours."""

    code = "NOT_FOUND"


class Conflict(ParityError):
    """That conflicts with what already exists."""

    code = "CONFLICT"


class StaleFingerprint(Conflict):
    """Either environment changed since the dry run: review the plan again."""

    code = "STALE_FINGERPRINT"


class ConfirmationRequired(InvalidInput):
    """Type the project's name to confirm a change to production."""

    code = "CONFIRMATION_REQUIRED"


class LimitReached(Conflict):
    """A platform limit is reached: remove something first, or ask for a higher limit."""

    code = "LIMIT_REACHED"


class PermissionDenied(ParityError):
    """You are not allowed to do that."""

    code = "PERMISSION_DENIED"


class EnvironmentMismatch(ParityError):
    """The API key's environment does not match its project's."""

    code = "ENVIRONMENT_MISMATCH"


class EnvironmentLocked(Conflict):
    """The project's environment cannot change while it has active API keys."""

    code = "ENVIRONMENT_LOCKED"


class InvalidApiKey(ParityError):
    """The API key is missing, malformed, unknown, revoked or expired."""

    code = "INVALID_API_KEY"


class ProjectSuspended(ParityError):
    """The project is suspended."""

    code = "PROJECT_SUSPENDED"


class RateLimited(ParityError):
    """Too many requests."""

    code = "RATE_LIMITED"


class DatabaseUnavailable(ParityError):
    """The database cannot be reached."""

    code = "DATABASE_UNAVAILABLE"
