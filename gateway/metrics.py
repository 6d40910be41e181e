"""The gateway's Prometheus metrics, served with `/healthz` and `/readyz` on
`GATEWAY_METRICS_PORT` (unset: off, and the request path counts nothing).

Every request passes through here, so the request path touches only handles bound once: a label
child per (environment, code), looked up in a dict, and the bound `inc`/`observe` methods. No
`.labels(...)` call (which formats and validates its label values) per request.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from prometheus_client import Counter, Histogram

from shared.apikeys import Credential
from shared.environment import Environment

OK: Final = "ok"
"""The code label of a forwarded request (whatever the upstream answered)."""
NO_ENVIRONMENT: Final = "none"
"""The environment label of a request refused before its key was identified."""

REQUESTS = Counter(
    "parity_gateway_requests",
    "Requests answered by the gateway, by the key's environment and error code (ok: forwarded).",
    ["environment", "code"],
)
REQUEST_DURATION = Histogram(
    "parity_gateway_request_duration_seconds",
    "Time a request spent in the gateway itself, the upstream exchange excluded.",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 2.5),
)
UPSTREAM_DURATION = Histogram(
    "parity_gateway_upstream_duration_seconds",
    "Time the upstream exchange of a forwarded request took (failed exchanges included).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
KEY_CACHE = Counter(
    "parity_gateway_key_cache",
    "Key lookups: hit (cached credential), negative (token recently found unknown), miss"
    " (the database is asked, or a lookup in flight joined).",
    ["result"],
)
RATE_LIMITED = Counter(
    "parity_gateway_rate_limited",
    "Requests refused 429: a project's budget spent, or (environment none) a client address"
    " causing too many key lookups.",
    ["environment"],
)

_Key = tuple[Environment | None, str]


class GatewayMetrics:
    """The handles the request path uses, bound once per process."""

    def __init__(self) -> None:
        self._requests: dict[_Key, Callable[[], None]] = {}
        self._rate_limited: dict[Environment | None, Callable[[], None]] = {}
        for environment in (*Environment, None):
            self._bind(environment, OK)  # shown as 0 from the first scrape
            self._rate_limited[environment] = RATE_LIMITED.labels(_label(environment)).inc
        self.cache_hit = KEY_CACHE.labels("hit").inc
        self.cache_miss = KEY_CACHE.labels("miss").inc
        self.cache_negative = KEY_CACHE.labels("negative").inc
        self._observe_gateway = REQUEST_DURATION.observe
        self._observe_upstream = UPSTREAM_DURATION.observe

    def _bind(self, environment: Environment | None, code: str) -> Callable[[], None]:
        # Codes are the error classes' constants: a few dozen children at most.
        inc = self._requests[environment, code] = REQUESTS.labels(_label(environment), code).inc
        return inc

    def request(
        self,
        credential: Credential | None,
        error_code: str | None,
        gateway_seconds: float,
        upstream_seconds: float | None,
    ) -> None:
        """One answered request: counted by environment and code, its times observed."""
        key = (credential.key_environment if credential is not None else None, error_code or OK)
        (self._requests.get(key) or self._bind(*key))()
        self._observe_gateway(gateway_seconds)
        if upstream_seconds is not None:
            self._observe_upstream(upstream_seconds)

    def rate_limited(self, credential: Credential | None) -> None:
        self._rate_limited[credential.key_environment if credential is not None else None]()


def _label(environment: Environment | None) -> str:
    return environment.value if environment is not None else NO_ENVIRONMENT
