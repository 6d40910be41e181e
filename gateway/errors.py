"""The gateway's refusals and their HTTP statuses. Every one is answered as JSON
`{"error": {"code", "message"}}`."""

from __future__ import annotations

from typing import Final

from shared.errors import (
    DatabaseUnavailable,
    EnvironmentMismatch,
    InvalidApiKey,
    ParityError,
    ProjectSuspended,
    RateLimited,
)


class PublishableKeyReadOnly(ParityError):
    """Publishable (pk) keys make read requests only: use a secret (sk) key for writes."""

    code = "PUBLISHABLE_KEY_READ_ONLY"


class RequestTooLarge(ParityError):
    """The request body is larger than the gateway forwards."""

    code = "REQUEST_TOO_LARGE"


class RateLimiterUnavailable(ParityError):
    """The rate limiter's storage cannot be reached, so no request can be counted: retry
    shortly."""

    code = "RATE_LIMITER_UNAVAILABLE"


class UpstreamUnavailable(ParityError):
    """The upstream service could not be reached or answered badly: retry shortly."""

    code = "UPSTREAM_UNAVAILABLE"


class UpstreamTimeout(ParityError):
    """The upstream service did not answer in time: retry shortly, or lighten the request."""

    code = "UPSTREAM_TIMEOUT"


_STATUS: Final[dict[type[ParityError], int]] = {
    InvalidApiKey: 401,
    EnvironmentMismatch: 403,
    ProjectSuspended: 403,
    PublishableKeyReadOnly: 403,
    RequestTooLarge: 413,
    RateLimited: 429,
    UpstreamUnavailable: 502,
    DatabaseUnavailable: 503,
    RateLimiterUnavailable: 503,
    UpstreamTimeout: 504,
}


def status_for(error: ParityError) -> int:
    """The HTTP status that answers `error` (500 for anything the gateway does not expect)."""
    for cls in type(error).__mro__:
        status = _STATUS.get(cls)
        if status is not None:
            return status
    return 500
