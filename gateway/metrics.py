"""The gateway's Prometheus metrics, served with `/healthz` and `/readyz` on
`GATEWAY_METRICS_PORT` (unset: off, and the request path counts nothing).

Every request of every customer passes through here, so the request path only adds to plain
integers and floats (a dict entry per environment and code, a bucket found by bisection) and
prometheus_client reads them when scraped, through its collector interface. Its own metric objects
take a lock and validate per call (about 1 µs a counter, 2 µs a histogram observation, measured),
which a single-threaded event loop does not need: the scrape runs in the same loop, between
requests, so it always sees whole requests.

Labels stay bounded: environments (`none` before a key is identified), error codes (the error
classes' constants) and the cache results; never a project or key id.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from typing import Final

from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from shared.apikeys import Credential
from shared.environment import Environment

OK: Final = "ok"
"""The code label of a forwarded request (whatever the upstream answered)."""
NO_ENVIRONMENT: Final = "none"
"""The environment label of a request refused before its key was identified."""

GATEWAY_BUCKETS: Final = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 2.5)
UPSTREAM_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip


class _Histogram:
    """Counts per bucket (not cumulative; the last is +Inf) and the sum of observations."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def family(self, name: str, documentation: str) -> HistogramMetricFamily:
        cumulative, buckets = 0, []
        for bound, count in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            cumulative += count
            buckets.append((bound, float(cumulative)))
        return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=self.total)


class GatewayMetrics(Collector):
    """What the request path counts, exposed to prometheus_client when scraped."""

    def __init__(self) -> None:
        # Every environment's `ok` and 429 series exist from the first scrape, at 0.
        self.requests: dict[tuple[Environment | None, str], int] = {
            (environment, OK): 0 for environment in (*Environment, None)
        }
        self.rate_limits: dict[Environment | None, int] = dict.fromkeys((*Environment, None), 0)
        self.cache_hits = 0
        self.cache_misses = 0
        self.cache_negatives = 0
        self._gateway = _Histogram(GATEWAY_BUCKETS)
        self._upstream = _Histogram(UPSTREAM_BUCKETS)

    def request(
        self,
        credential: Credential | None,
        error_code: str | None,
        gateway_seconds: float,
        upstream_seconds: float | None,
    ) -> None:
        """One answered request: counted by environment and code, its times observed."""
        key = (credential.key_environment if credential is not None else None, error_code or OK)
        requests = self.requests
        requests[key] = requests.get(key, 0) + 1
        gateway = self._gateway
        gateway.counts[bisect_left(GATEWAY_BUCKETS, gateway_seconds)] += 1
        gateway.total += gateway_seconds
        if upstream_seconds is not None:
            upstream = self._upstream
            upstream.counts[bisect_left(UPSTREAM_BUCKETS, upstream_seconds)] += 1
            upstream.total += upstream_seconds

    def rate_limited(self, credential: Credential | None) -> None:
        self.rate_limits[credential.key_environment if credential is not None else None] += 1

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "parity_gateway_requests",
            "Requests answered by the gateway, by the key's environment and error code"
            " (ok: forwarded).",
            labels=["environment", "code"],
        )
        for (environment, code), count in sorted(
            self.requests.items(), key=lambda item: (_label(item[0][0]), item[0][1])
        ):
            requests.add_metric([_label(environment), code], count)
        yield requests
        yield self._gateway.family(
            "parity_gateway_request_duration_seconds",
            "Time a request spent in the gateway itself, the upstream exchange excluded.",
        )
        yield self._upstream.family(
            "parity_gateway_upstream_duration_seconds",
            "Time the upstream exchange of a forwarded request took (failed exchanges included).",
        )
        cache = CounterMetricFamily(
            "parity_gateway_key_cache",
            "Key lookups: hit (cached credential), negative (token recently found unknown), miss"
            " (the database is asked, or a lookup in flight joined).",
            labels=["result"],
        )
        cache.add_metric(["hit"], self.cache_hits)
        cache.add_metric(["miss"], self.cache_misses)
        cache.add_metric(["negative"], self.cache_negatives)
        yield cache
        limited = CounterMetricFamily(
            "parity_gateway_rate_limited",
            "Requests refused 429: a project's budget spent, or (environment none) a client"
            " address causing too many key lookups.",
            labels=["environment"],
        )
        for environment, count in self.rate_limits.items():
            limited.add_metric([_label(environment)], count)
        yield limited


def _label(environment: Environment | None) -> str:
    return environment.value if environment is not None else NO_ENVIRONMENT


METRICS: Final = GatewayMetrics()
"""The process's one set, registered with prometheus_client's default registry (which
`shared.metrics` serves); a gateway uses it only when its metrics port is set."""
REGISTRY.register(METRICS)
