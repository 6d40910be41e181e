"""The gateway's metrics port, on real `python -m gateway` processes with real traffic: counters
move by exactly the requests made, per environment and code; the key cache and 429s are counted;
labels stay bounded; `/healthz` answers; `/readyz` names the database (and Redis when configured)
and turns unready while Postgres is down (a throwaway cluster of this test's own), then ready
again once it is back, without a restart."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics import GATEWAY_BUCKETS, UPSTREAM_BUCKETS, GatewayMetrics
from shared.environment import Environment
from shared.keys import KeyKind, generate_token
from tests.gateway.conftest import (
    IssueKey,
    Upstream,
    bearer,
    start_gateway_process,
    wait_until_listening,
)
from tests.gateway.test_outage import issue, start_again
from tests.gateway.test_processes import REDIS_URL, redis_prefix
from tests.worker.test_restart import Cluster, throwaway_cluster

__all__ = ["redis_prefix", "throwaway_cluster"]  # fixtures, used by name below

UUID_PATTERN = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)
ENVIRONMENTS = {env.value for env in Environment} | {"none"}
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def parse(text: str) -> Samples:
    """Every sample of an exposition, by name and labels, read by prometheus_client's parser."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@asynccontextmanager
async def gateway_process(env: dict[str, str], log_file: Path) -> AsyncIterator[tuple[str, str]]:
    """A gateway process with its metrics port on: (gateway URL, metrics base URL)."""
    metrics_port = free_port()
    gateway = start_gateway_process(
        {**env, "GATEWAY_METRICS_PORT": str(metrics_port), "GATEWAY_METRICS_HOST": "127.0.0.1"},
        log_file,
    )
    try:
        url = await wait_until_listening(gateway)
        yield url, f"http://127.0.0.1:{metrics_port}"
    finally:
        gateway.process.send_signal(signal.SIGTERM)
        await asyncio.to_thread(gateway.process.wait, 20)


async def get(http: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with http.get(url) as response:
        if response.content_type == "application/json":
            return response.status, await response.json()
        return response.status, await response.text()


async def test_requests_cache_and_refusals_are_counted_exactly_with_bounded_labels(
    database_url: str,
    upstream: Upstream,
    issue_key: IssueKey,
    redis_prefix: str,
    tmp_path: Path,
    http: aiohttp.ClientSession,
) -> None:
    prod = await issue_key("prod")
    staging = await issue_key("staging", rate_limit=1)  # x5 in staging: 5 requests a window
    dev_pk = await issue_key("dev", "pk")
    unknown = generate_token(Environment.PROD, KeyKind.SECRET).token
    env = {
        "DATABASE_URL": database_url,
        "REDIS_URL": REDIS_URL,
        "GATEWAY_REDIS_KEY_PREFIX": redis_prefix,
        "GATEWAY_UPSTREAM_URL": upstream.url,
        "PARITY_RATE_LIMIT_WINDOW_SECONDS": "3600",  # no window ends during the test
    }
    async with gateway_process(env, tmp_path / "gateway.log") as (url, metrics):
        assert await get(http, f"{metrics}/healthz") == (200, {"status": "ok"})
        assert await get(http, f"{metrics}/readyz") == (
            200,
            {"status": "ready", "checks": {"database": "ok", "redis": "ok"}},
        )
        status, text = await get(http, f"{metrics}/metrics")
        assert status == 200
        before = parse(text)

        async def send(method: str, headers: dict[str, str], times: int) -> list[int]:
            statuses = []
            for _ in range(times):
                async with http.request(method, f"{url}/items", headers=headers) as response:
                    await response.read()
                    statuses.append(response.status)
            return statuses

        assert await send("GET", bearer(prod.token), 4) == [200] * 4
        assert await send("GET", bearer(staging.token), 8) == [200] * 5 + [429] * 3
        assert await send("GET", bearer(dev_pk.token), 1) == [200]
        assert await send("POST", bearer(dev_pk.token), 2) == [403] * 2
        assert await send("GET", bearer(unknown), 3) == [401] * 3
        assert await send("GET", {}, 1) == [401]

        status, text = await get(http, f"{metrics}/metrics")
        assert status == 200
        after = parse(text)

    def moved(name: str, **labels: str) -> float:
        key = (name, frozenset(labels.items()))
        return after.get(key, 0.0) - before.get(key, 0.0)

    requests = "parity_gateway_requests_total"
    expected = {
        ("prod", "ok"): 4,
        ("staging", "ok"): 5,
        ("staging", "RATE_LIMITED"): 3,
        ("dev", "ok"): 1,
        ("dev", "PUBLISHABLE_KEY_READ_ONLY"): 2,
        ("none", "INVALID_API_KEY"): 4,  # three unknown tokens, one request without a key
    }
    counted = {
        (dict(labels)["environment"], dict(labels)["code"]): moved(name, **dict(labels))
        for name, labels in after
        if name == requests
    }
    assert {key: count for key, count in counted.items() if count} == expected

    # Each valid key: one miss, then hits; the unknown token: one miss, then negative answers.
    assert moved("parity_gateway_key_cache_total", result="miss") == 4
    assert moved("parity_gateway_key_cache_total", result="hit") == 3 + 7 + 2
    assert moved("parity_gateway_key_cache_total", result="negative") == 2
    assert moved("parity_gateway_rate_limited_total", environment="staging") == 3
    assert moved("parity_gateway_rate_limited_total", environment="prod") == 0
    assert moved("parity_gateway_request_duration_seconds_count") == sum(expected.values())
    assert moved("parity_gateway_upstream_duration_seconds_count") == 4 + 5 + 1
    # The time in the gateway excludes the upstream's: the test upstream answers at once, so
    # both sums are small but the gateway's histogram fills its lowest buckets, not its +Inf.
    assert moved("parity_gateway_request_duration_seconds_sum") > 0
    assert moved("parity_gateway_upstream_duration_seconds_sum") > 0

    # Bounded labels: environments and codes only, never a project or key id.
    assert not UUID_PATTERN.search(text)
    for token in (prod.token, staging.token, dev_pk.token, unknown):
        assert token[-8:] not in text
    for name, labels in after:
        values = dict(labels)
        if name.startswith("parity_gateway_") and "environment" in values:
            assert values["environment"] in ENVIRONMENTS
        if "code" in values:
            assert re.fullmatch(r"ok|[A-Z_]+", values["code"])


async def poll(
    http: aiohttp.ClientSession, url: str, until: Callable[[int], bool], within: float
) -> tuple[int, Any, float]:
    """Ask `url` until its status satisfies `until`: (status, body, seconds the last ask took)."""
    deadline = time.monotonic() + within
    while True:
        started = time.monotonic()
        status, body = await get(http, url)
        took = time.monotonic() - started
        if until(status):
            return status, body, took
        assert time.monotonic() < deadline, f"{url} still answered {status}: {body}"
        await asyncio.sleep(0.2)


async def test_readyz_turns_unready_while_postgres_is_down_and_ready_once_it_is_back(
    throwaway_cluster: Cluster,
    upstream: Upstream,
    tmp_path: Path,
    http: aiohttp.ClientSession,
) -> None:
    (token,) = await issue(throwaway_cluster.url, 1)
    env = {
        "DATABASE_URL": throwaway_cluster.url,
        "REDIS_URL": "",
        "GATEWAY_UPSTREAM_URL": upstream.url,
        "GATEWAY_LISTENER_RETRY_SECONDS": "0.2",
    }
    async with gateway_process(env, tmp_path / "gateway.log") as (url, metrics):
        assert await get(http, f"{metrics}/readyz") == (
            200,
            {"status": "ready", "checks": {"database": "ok"}},
        )
        async with http.get(url, headers=bearer(token)) as response:
            assert response.status == 200

        await asyncio.to_thread(throwaway_cluster.pg_ctl, "-m", "immediate", "stop")
        status, body, took = await poll(http, f"{metrics}/readyz", lambda s: s != 200, 30)
        assert status == 503
        assert body["status"] == "unready"
        assert body["checks"]["database"] != "ok"
        assert took < 5  # each check is bounded to a second (generous for a busy machine)
        # The process itself is up, and says so.
        assert await get(http, f"{metrics}/healthz") == (200, {"status": "ok"})
        # Unready stays unready while Postgres is down.
        status, _ = await get(http, f"{metrics}/readyz")
        assert status == 503

        await asyncio.to_thread(start_again, throwaway_cluster)
        status, body, _ = await poll(http, f"{metrics}/readyz", lambda s: s == 200, 60)
        assert body == {"status": "ready", "checks": {"database": "ok"}}
        async with http.get(url, headers=bearer(token)) as response:
            assert response.status == 200


def test_histograms_and_counters_read_as_prometheus_clients_own_would() -> None:
    """The plain counts the request path keeps, read through the collector, give exactly what
    prometheus_client's own Counter and Histogram give for the same requests (bucket bounds
    inclusive, cumulative, +Inf, sum, count)."""
    ours = GatewayMetrics()  # not registered: a private instance
    registry = CollectorRegistry()
    theirs_requests = Counter(
        "parity_gateway_requests", "", ["environment", "code"], registry=registry
    )
    theirs_gateway = Histogram(
        "parity_gateway_request_duration_seconds", "", buckets=GATEWAY_BUCKETS, registry=registry
    )
    theirs_upstream = Histogram(
        "parity_gateway_upstream_duration_seconds", "", buckets=UPSTREAM_BUCKETS, registry=registry
    )
    prod = SimpleNamespace(key_environment=Environment.PROD)
    cases: list[tuple[Any, str | None, float, float | None]] = [
        (prod, None, 0.0001, 0.001),  # exactly on bounds: counted in that bucket
        (prod, None, 0.00011, 0.0011),
        (prod, "RATE_LIMITED", 3.0, None),  # past the last bound: +Inf only
        (None, "INVALID_API_KEY", 0.0, None),
        (prod, "UPSTREAM_TIMEOUT", 0.002, 45.0),
    ]
    for credential, code, gateway_seconds, upstream_seconds in cases:
        ours.request(credential, code, gateway_seconds, upstream_seconds)
        environment = credential.key_environment.value if credential else "none"
        theirs_requests.labels(environment, code or "ok").inc()
        theirs_gateway.observe(gateway_seconds)
        if upstream_seconds is not None:
            theirs_upstream.observe(upstream_seconds)
    mine_registry = CollectorRegistry()
    mine_registry.register(ours)
    mine = parse(generate_latest(mine_registry).decode())
    reference = {
        key: count
        for key, count in parse(generate_latest(registry).decode()).items()
        if not key[0].endswith("_created")
    }
    for key, count in reference.items():
        assert mine.get(key) == count, key
    compared = (
        "parity_gateway_requests_total",
        "parity_gateway_request_",
        "parity_gateway_upstream_",
    )
    for key, count in mine.items():
        if key[0].startswith(compared) and key not in reference:
            assert count == 0, key  # the series shown at 0 from the start
