"""`python -m bench.gateway [--quick]`: the gateway against its references, side by side in one run.

1. Decisions in process (one core): token verification, cache hit, environment check and the
   rate-limit decision with memory storage, against the `limits` library's own `hit` alone.
2. Throughput with `wrk -t2 -c50` on loopback: the raw upstream, an independent minimal aiohttp
   reverse proxy (bench/proxy.py: forwards method, path, query, headers and body; none of the
   gateway's code), and the full gateway with memory, with Redis and with Redis Cluster rate
   limits (a cluster of three masters with a replica each, started on loopback for the run),
   logging its info line per request to a file as in production; and the memory gateway once
   more with its Prometheus metrics on (`GATEWAY_METRICS_PORT`), for the metrics' overhead.
   Three repetitions, each in a rotated order, so that noise from other work on the machine hits
   all alike; medians reported, with the CPU the server process spent per request beside each
   figure.
3. Added latency at a fixed 500 requests a second (an open-loop aiohttp client, latency counted
   from each request's scheduled time): p99 through the gateway minus p99 straight to upstream.

Needs Postgres (`BENCH_DATABASE_URL`, else the local server on 127.0.0.1:5432, else the embedded
one) for a scratch database that is dropped at the end; Redis on `BENCH_REDIS_URL` (default
redis://127.0.0.1:6379/0) for the Redis row; Debian's `redis-server` and `redis-cli` for the
Redis Cluster row. Writes JSON to bench/results/ and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import redis
from limits import RateLimitItemPerSecond
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import FixedWindowRateLimiter
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import Gateway
from gateway.metrics import GatewayMetrics
from gateway.settings import GatewaySettings
from ops import database, rediscluster
from ops.demo import DemoKey, seed_demo
from shared.db import Database
from shared.environment import Environment
from shared.keys import hash_token
from shared.settings import PlatformSettings

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
GATEWAYS = ("memory", "metrics", "redis", "cluster")
HUGE_LIMIT = 1_000_000_000  # the throughput runs measure the gateway, not its 429s


@dataclass(frozen=True)
class Load:
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_request: float
    """CPU (user + system) the server process spent per request: steadier than throughput on a
    shared machine, since other work changes how much CPU a process gets, not what it needs."""


# Infrastructure --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def scratch_database() -> Iterator[str]:
    """A freshly migrated database, dropped afterwards."""
    admin = database.server_url(
        os.environ.get("BENCH_DATABASE_URL"), database.DATA_DIR / "bench-postgres"
    )
    with database.scratch_database(admin, "parity_bench_gateway") as url:
        yield url


@contextmanager
def process(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        child = subprocess.Popen(
            [sys.executable, *args], cwd=ROOT, env={**os.environ, **env}, stdout=out, stderr=out
        )
    try:
        yield child
    finally:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(timeout=20)
        except subprocess.TimeoutExpired:
            child.kill()


def wait_for_http(url: str, log: Path, deadline_seconds: float = 30) -> None:
    """Until `url` answers anything at all."""
    deadline = time.monotonic() + deadline_seconds
    while time.monotonic() < deadline:
        with suppress(OSError), socket.create_connection(_host_port(url), timeout=0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not start:\n{log.read_text()[-2000:]}")


def _host_port(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split("/", 1)[0].split(":")
    return host, int(port)


def _milliseconds(value: str) -> float:
    found = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value)
    if found is None:
        raise RuntimeError(f"unexpected wrk latency {value!r}")
    return float(found[1]) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[found[2]]


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(url: str, *, token: str | None, seconds: int, pid: int, connections: int = 50) -> Load:
    """`wrk -t2 -c50 --latency` against `url`, with the CPU the server process `pid` used."""
    args = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", url]
    if token:
        args[1:1] = ["-H", f"Authorization: Bearer {token}"]
    cpu_before = cpu_seconds(pid)
    output = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    cpu_used = cpu_seconds(pid) - cpu_before
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.MULTILINE).group(1)  # type: ignore[union-attr]
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.MULTILINE).group(1)  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non_2xx:
        raise RuntimeError(f"{url}: {non_2xx.group(1)} failed responses:\n{output}")
    return Load(rps, _milliseconds(p50), _milliseconds(p99), cpu_used / (rps * seconds) * 1e6)


# 1. Decisions in process -------------------------------------------------------------------------


async def decisions(database_url: str, token: str, iterations: int) -> dict[str, float]:
    """Decisions a second: the gateway's own steps on a cache hit, and `limits` alone."""
    values: dict[str, Any] = {
        "DATABASE_URL": database_url,
        "REDIS_URL": None,
        "default_rate_limit": HUGE_LIMIT,
    }
    gateway = Gateway(
        PlatformSettings(_env_file=None, **values),
        GatewaySettings(_env_file=None, key_cache_ttl_seconds=3600),
    )
    await gateway.db.open()
    try:
        await gateway.decide(token, "GET")  # fills the cache: every timed call is a hit
        start = time.perf_counter()
        for _ in range(iterations):
            await gateway.decide(token, "GET")
        ours = iterations / (time.perf_counter() - start)
    finally:
        await gateway.db.close()

    # What metrics on add per forwarded request (a cache hit counted, the request counted and
    # its two times observed), on a private set, against the same loop doing nothing.
    metrics = GatewayMetrics()
    credential = gateway.cache.cached(hash_token(token))
    start = time.perf_counter()
    for _ in range(iterations):
        metrics.cache_hits += 1
        metrics.request(credential, None, 0.0002, 0.001)
    counted = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(iterations):
        pass
    empty = time.perf_counter() - start
    metrics_us = (counted - empty) / iterations * 1e6

    limiter = FixedWindowRateLimiter(MemoryStorage())
    item = RateLimitItemPerSecond(HUGE_LIMIT, 60)
    start = time.perf_counter()
    for _ in range(iterations):
        await limiter.hit(item, "project")
    alone = iterations / (time.perf_counter() - start)
    return {
        "gateway_decisions_per_s": ours,
        "limits_alone_per_s": alone,
        "ratio": ours / alone,
        "metrics_us_per_request": metrics_us,
    }


# 3. Added latency at a fixed rate ----------------------------------------------------------------


async def paced(url: str, token: str | None, *, rate: int, seconds: float) -> list[float]:
    """Latencies (ms) of requests sent on a fixed schedule, counted from when each was due, so
    a slow answer delays nothing and hides nothing (no coordinated omission)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    latencies: list[float] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200)) as session:
        for _ in range(20):  # warm the connection pool
            async with session.get(url, headers=headers) as response:
                await response.read()
        loop = asyncio.get_running_loop()
        start = loop.time() + 0.05

        async def one(due: float) -> None:
            async with session.get(url, headers=headers) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"{url} answered {response.status}")
            latencies.append((loop.time() - due) * 1000)

        # Each request is started when it is due, not all created up front: creating thousands of
        # tasks at once stalls the client itself at the start, and a server with less headroom
        # then shows that stall as its own latency.
        tasks = []
        for n in range(int(rate * seconds)):
            due = start + n / rate
            if (delay := due - loop.time()) > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(due)))
        await asyncio.gather(*tasks)
    return latencies


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98]


# The run ---------------------------------------------------------------------------------------


def run(quick: bool) -> dict[str, Any]:
    seconds = 3 if quick else 8
    rounds = 1 if quick else 3
    paced_seconds = 4.0 if quick else 10.0
    RESULTS.mkdir(parents=True, exist_ok=True)
    redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
    redis_prefix = f"parity-bench-{secrets.token_hex(4)}"
    try:
        redis.Redis.from_url(redis_url).ping()
    except redis.RedisError:
        redis_url = ""

    with ExitStack() as stack:
        database_url = stack.enter_context(scratch_database())
        cluster_url = ""
        if rediscluster.available():
            scratch = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            cluster_url = stack.enter_context(rediscluster.redis_cluster(scratch)).url
        keys: list[DemoKey] = asyncio.run(_seed(database_url))
        prod = next(key for key in keys if key.environment is Environment.PROD)
        result: dict[str, Any] = {
            "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores,"
            f" Python {platform.python_version()}",
            "mode": "quick" if quick else "full",
            "decisions": asyncio.run(decisions(database_url, prod.token, 50_000 * rounds)),
        }

        ports = {name: free_port() for name in ("upstream", "proxy", *GATEWAYS)}
        metrics_port = free_port()
        urls = {name: f"http://127.0.0.1:{port}/items" for name, port in ports.items()}
        upstream_base = f"http://127.0.0.1:{ports['upstream']}"
        gateway_env = {
            "DATABASE_URL": database_url,
            "GATEWAY_UPSTREAM_URL": upstream_base,
            "PARITY_DEFAULT_RATE_LIMIT": str(HUGE_LIMIT),
            "GATEWAY_REDIS_KEY_PREFIX": redis_prefix,
        }
        servers = ["-m", "bench.servers"]
        specs = {
            "upstream": ([*servers, "upstream", "--port", str(ports["upstream"])], {}),
            "proxy": (
                ["-m", "bench.proxy", "--port", str(ports["proxy"]), "--upstream", upstream_base],
                {},
            ),
            "memory": (
                ["-m", "gateway", "--port", str(ports["memory"])],
                {**gateway_env, "REDIS_URL": ""},
            ),
            # The same gateway with its metrics on: the difference is what they cost.
            "metrics": (
                ["-m", "gateway", "--port", str(ports["metrics"])],
                {**gateway_env, "REDIS_URL": "", "GATEWAY_METRICS_PORT": str(metrics_port)},
            ),
        }
        if redis_url:
            specs["redis"] = (
                ["-m", "gateway", "--port", str(ports["redis"])],
                {**gateway_env, "REDIS_URL": redis_url},
            )
        if cluster_url:
            specs["cluster"] = (
                ["-m", "gateway", "--port", str(ports["cluster"])],
                {**gateway_env, "REDIS_URL": cluster_url},
            )
        with _all(specs) as running:
            for name in running:
                wait_for_http(urls[name], RESULTS / f"{name}.log")
            # The proxy gets the same request as the gateways (it forwards the key on).
            token_for = {name: prod.token if name != "upstream" else None for name in specs}
            for name, child in running.items():  # warm up every server and the gateways' caches
                wrk(urls[name], token=token_for[name], seconds=1, pid=child.pid)
            loads: dict[str, list[Load]] = {name: [] for name in running}
            names = list(running)
            for turn in range(rounds):
                for name in names[turn:] + names[:turn]:  # each repetition in a rotated order
                    loads[name].append(
                        wrk(
                            urls[name],
                            token=token_for[name],
                            seconds=seconds,
                            pid=running[name].pid,
                        )
                    )
            result["throughput"] = {
                name: asdict(
                    Load(
                        statistics.median(load.requests_per_second for load in runs),
                        statistics.median(load.p50_ms for load in runs),
                        statistics.median(load.p99_ms for load in runs),
                        statistics.median(load.cpu_us_per_request for load in runs),
                    )
                )
                for name, runs in loads.items()
            }
            result["metrics_requests_counted"] = _counted(metrics_port)
            proxy = result["throughput"]["proxy"]
            for name in GATEWAYS:
                if name in result["throughput"]:
                    figures = result["throughput"][name]
                    figures["ratio_to_proxy"] = (
                        figures["requests_per_second"] / proxy["requests_per_second"]
                    )
                    figures["cpu_ratio_to_proxy"] = (
                        proxy["cpu_us_per_request"] / figures["cpu_us_per_request"]
                    )
            if {"redis", "cluster"} <= set(result["throughput"]):
                single, cluster = result["throughput"]["redis"], result["throughput"]["cluster"]
                cluster["ratio_to_redis"] = (
                    cluster["requests_per_second"] / single["requests_per_second"]
                )
                cluster["cpu_ratio_to_redis"] = (
                    single["cpu_us_per_request"] / cluster["cpu_us_per_request"]
                )
            memory, metrics = result["throughput"]["memory"], result["throughput"]["metrics"]
            result["metrics_overhead"] = {
                "throughput_ratio": metrics["requests_per_second"] / memory["requests_per_second"],
                "cpu_ratio": memory["cpu_us_per_request"] / metrics["cpu_us_per_request"],
                # The in-process cost of the updates as a share of the CPU a request takes:
                # steadier than two processes' throughputs, which differ by a few percent
                # between identical configurations on a shared machine.
                "cost_share": result["decisions"]["metrics_us_per_request"]
                / memory["cpu_us_per_request"],
            }

            direct: list[float] = []
            through: list[float] = []
            proxied: list[float] = []  # the independent proxy's hop, for scale
            for _ in range(rounds):
                direct.append(
                    p99(asyncio.run(paced(urls["upstream"], None, rate=500, seconds=paced_seconds)))
                )
                proxied.append(
                    p99(
                        asyncio.run(
                            paced(urls["proxy"], prod.token, rate=500, seconds=paced_seconds)
                        )
                    )
                )
                through.append(
                    p99(
                        asyncio.run(
                            paced(urls["memory"], prod.token, rate=500, seconds=paced_seconds)
                        )
                    )
                )
            result["latency_at_500_rps"] = {
                "upstream_p99_ms": statistics.median(direct),
                "gateway_p99_ms": statistics.median(through),
                "added_p99_ms": statistics.median(through) - statistics.median(direct),
                "proxy_added_p99_ms": statistics.median(proxied) - statistics.median(direct),
            }
    if redis_url:
        client = redis.Redis.from_url(redis_url)
        stale = list(client.scan_iter(match=f"{redis_prefix}*"))
        if stale:
            client.delete(*stale)
    return result


def _counted(metrics_port: int) -> float:
    """Forwarded requests the metrics gateway counted (proof that its metrics were on)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    counted = sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "parity_gateway_requests_total" and sample.labels["code"] == "ok"
    )
    if not counted:
        raise RuntimeError("the gateway with metrics on counted no request")
    return counted


@contextmanager
def _all(
    specs: dict[str, tuple[list[str], dict[str, str]]],
) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    with ExitStack() as stack:
        yield {
            name: stack.enter_context(process(args, env, RESULTS / f"{name}.log"))
            for name, (args, env) in specs.items()
        }


async def _seed(database_url: str) -> list[DemoKey]:
    async with Database(database_url, min_size=1, max_size=1) as db:
        return await seed_demo(db)


def table(result: dict[str, Any]) -> str:
    d = result["decisions"]
    t = result["throughput"]
    lat = result["latency_at_500_rps"]
    lines = [
        f"Machine: {result['machine']} ({result['mode']} run)",
        "",
        "| Measure | Figure | Reference | Ratio | Target |",
        "|---|---|---|---|---|",
        f"| Decisions in process, cache hit, memory storage | {d['gateway_decisions_per_s']:,.0f}/s"
        f" | `limits` alone {d['limits_alone_per_s']:,.0f}/s | {d['ratio']:.2f} | >= 100,000/s |",
    ]
    proxy = t["proxy"]
    lines.append(
        f"| Independent aiohttp proxy (reference) | {proxy['requests_per_second']:,.0f} req/s"
        f" (p99 {proxy['p99_ms']:.1f} ms), {proxy['cpu_us_per_request']:.0f} µs CPU/request"
        " | | | |"
    )
    for name, label, target in (
        ("memory", "memory limits", ">= 0.6"),
        ("metrics", "memory limits, metrics on", ""),
        ("redis", "Redis limits", ">= 0.45"),
        ("cluster", "Redis Cluster limits", ""),
    ):
        if name in t:
            row = t[name]
            lines.append(
                f"| Gateway, {label} | {row['requests_per_second']:,.0f} req/s"
                f" (p99 {row['p99_ms']:.1f} ms), {row['cpu_us_per_request']:.0f} µs CPU/request"
                f" | proxy {proxy['requests_per_second']:,.0f} req/s,"
                f" {proxy['cpu_us_per_request']:.0f} µs | {row['ratio_to_proxy']:.2f}"
                f" (CPU {row['cpu_ratio_to_proxy']:.2f}) | {target} |"
            )
    if "ratio_to_redis" in t.get("cluster", {}):
        row, single = t["cluster"], t["redis"]
        lines.append(
            f"| Gateway, Redis Cluster beside single Redis | {row['requests_per_second']:,.0f}"
            f" req/s, {row['cpu_us_per_request']:.0f} µs CPU/request"
            f" | single Redis {single['requests_per_second']:,.0f} req/s,"
            f" {single['cpu_us_per_request']:.0f} µs | {row['ratio_to_redis']:.2f}"
            f" (CPU {row['cpu_ratio_to_redis']:.2f}) | reported |"
        )
    overhead = result["metrics_overhead"]
    lines.append(
        f"| Metrics on (`GATEWAY_METRICS_PORT`) | {t['metrics']['requests_per_second']:,.0f} req/s,"
        f" {t['metrics']['cpu_us_per_request']:.0f} µs CPU/request"
        f" | metrics off {t['memory']['requests_per_second']:,.0f} req/s,"
        f" {t['memory']['cpu_us_per_request']:.0f} µs | {overhead['throughput_ratio']:.3f}"
        f" (CPU {overhead['cpu_ratio']:.3f}) | >= 0.97 |"
    )
    lines.append(
        f"| Metrics updates per request, in process | {d['metrics_us_per_request']:.2f} µs"
        f" | gateway {t['memory']['cpu_us_per_request']:.0f} µs CPU/request, metrics off"
        f" | {overhead['cost_share']:.1%} | <= 3% |"
    )
    lines.append(
        f"| p99 added at 500 req/s | {lat['added_p99_ms']:+.2f} ms"
        f" (gateway p99 {lat['gateway_p99_ms']:.2f} ms) | upstream p99 {lat['upstream_p99_ms']:.2f}"
        f" ms; the independent proxy adds {lat['proxy_added_p99_ms']:+.2f} ms | | <= 5 ms |"
    )
    lines.append(
        f"| Raw upstream (for scale) | {t['upstream']['requests_per_second']:,.0f} req/s | | | |"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gateway", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short runs, one round")
    args = parser.parse_args(argv)
    result = run(args.quick)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    (RESULTS / f"gateway-{stamp}.json").write_text(json.dumps(result, indent=2))
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
