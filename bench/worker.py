"""Worker benchmarks, ratios measured side by side in one run (`python -m bench.worker`).

1. Deliveries per second of one `python -m worker` process to a fast local receiver (claims,
   signing, attempt rows and status updates included; logging at INFO, the prod level, to a file)
   against a plain aiohttp loop posting the same payloads, signed per Standard Webhooks as they
   are sent, to the same receiver at the same concurrency. The backlog is spread over as many
   endpoints as the concurrency (each endpoint may have only WORKER_ENDPOINT_CONCURRENCY requests
   in flight, so one endpoint alone cannot use all the senders, by design); a single-endpoint
   backlog (2,000 per round, a fifth) is measured beside it against the same plain loop, and
   against the plain loop capped at the same requests in flight (for scale).
   Targets: >= 0.5 of the plain loop over 50 endpoints, >= 0.45 for one endpoint. The worker runs on
   uvloop, so the reference that counts does too; the same loop on asyncio's own event loop is
   reported beside it.
2. Claim time beside a backlog: one tenant has 10,000 and then 1,000,000 deliveries queued to one
   endpoint, another tenant one delivery; a claim must cost about the same either way (the claim
   walks endpoints with work, not the backlog). Target: the 1M claim <= 1.5x the 10k claim.
3. Auto-suspend sweep time with 100,000 and 1,000,000 projects and 1,000 violators. Targets:
   <= 1 s each, and the 1M time <= 1.5x the 100k time.

Each part runs in a dedicated, freshly migrated benchmark database that is dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Coroutine, Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any
from uuid import UUID

import aiohttp
import psycopg
import uvloop
from standardwebhooks import Webhook

from ops import database
from shared.db import Database
from shared.environment import Environment
from shared.logging import configure_logging
from worker import queue
from worker.app import sweep
from worker.queue import ClaimedDelivery
from worker.sender import webhook_body
from worker.settings import WorkerSettings

REPO_ROOT = Path(__file__).resolve().parent.parent
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # a benchmark-only secret


@contextmanager
def bench_database(prefix: str) -> Iterator[str]:
    """A migrated database of its own, dropped afterwards."""
    admin = database.server_url(
        os.environ.get("BENCH_DATABASE_URL"), database.DATA_DIR / "bench-postgres"
    )
    with database.scratch_database(admin, prefix) as url:
        yield url


@contextmanager
def fast_receiver() -> Iterator[str]:
    receiver = subprocess.Popen(
        [sys.executable, "-m", "bench._receiver"], cwd=REPO_ROOT, stdout=subprocess.PIPE
    )
    try:
        assert receiver.stdout is not None
        port = int(receiver.stdout.readline())
        yield f"http://127.0.0.1:{port}/hook"
    finally:
        receiver.terminate()
        receiver.wait()


# Deliveries ---------------------------------------------------------------------------------------


def sample_bodies(count: int) -> list[bytes]:
    """The bodies the worker sends, built the same way (a benchmark event per delivery)."""
    now = datetime.now(UTC)
    return [
        webhook_body(
            ClaimedDelivery(
                id=UUID(int=i),
                endpoint_id=UUID(int=0),
                project_id=UUID(int=1),
                environment=Environment.PROD,
                attempts=0,
                retry_base=0,
                url="",
                secret=SECRET,
                event_id=UUID(int=i),
                event_type="bench.ping",
                payload={"n": i},
                event_created_at=now,
            )
        ).encode()
        for i in range(count)
    ]


async def plain_loop(
    url: str, bodies: list[bytes], concurrency: int, *, signed: bool = True
) -> float:
    """Posts per second of a bare aiohttp client: the reference. What a user would write to send
    the same webhooks: each body signed per Standard Webhooks as it is sent (the library's
    `Webhook.sign`, with the time of sending), the same headers on the wire as the worker's, no
    database, no bookkeeping, no logging. Unsigned (`signed=False`: a content type only, the
    reference until 2026-12-07) for comparison with earlier runs."""
    pending = iter(enumerate(bodies))
    signer = Webhook(SECRET)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def post_all() -> None:
            for n, body in pending:
                headers = {"content-type": "application/json"}
                if signed:
                    webhook_id = str(UUID(int=n))
                    now = datetime.now(UTC)
                    headers["webhook-id"] = webhook_id
                    headers["webhook-timestamp"] = str(int(now.timestamp()))
                    headers["webhook-signature"] = signer.sign(webhook_id, now, body)
                async with session.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    assert resp.status == 204

        started = time.perf_counter()
        await asyncio.gather(*(post_all() for _ in range(concurrency)))
        return len(bodies) / (time.perf_counter() - started)


def _on_uvloop(coro: Coroutine[Any, Any, float]) -> float:
    """The reference runs on the same event loop implementation as the worker."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def _scalar(conn: psycopg.Connection[Any], query: str, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def seed_endpoint(
    url: str, receiver_url: str, endpoints: int = 1, *, owner_email: str = "b@example.com"
) -> UUID:
    """A project with `endpoints` endpoints, all at `receiver_url`: each event fans out to all."""
    with psycopg.connect(url, autocommit=True) as conn:
        owner = _scalar(
            conn, "insert into auth.users (email) values (%s) returning id", (owner_email,)
        )
        project: UUID = _scalar(
            conn,
            "insert into public.projects (name, owner_id) values ('bench', %s) returning id",
            (owner,),
        )
        conn.execute(
            "insert into public.webhook_endpoints (project_id, url, secret)"
            " select %s, %s, %s from generate_series(1, %s)",
            (project, receiver_url, SECRET, endpoints),
        )
    return project


def worker_process(
    url: str, concurrency: int, log: IO[bytes] | None = None
) -> subprocess.Popen[bytes]:
    """`python -m worker` as in production (INFO, the prod level), its log written to `log`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKER_")}
    env.update(
        DATABASE_URL=url,
        WORKER_ALLOW_PRIVATE_TARGETS="1",
        WORKER_CONCURRENCY=str(concurrency),
        WORKER_BATCH_SIZE=str(concurrency * 20),
        WORKER_LOG_LEVEL="INFO",
        WORKER_POLL_INTERVAL_SECONDS="1",
        WORKER_HEARTBEAT_INTERVAL_SECONDS="0.2",
    )
    return subprocess.Popen([sys.executable, "-m", "worker"], cwd=REPO_ROOT, env=env, stderr=log)


def worker_round(url: str, project: UUID, count: int, endpoints: int = 1) -> float:
    """Deliveries per second: from the commit of events making `count` deliveries (each event
    fans out to the project's `endpoints`) to the last one recorded."""
    with psycopg.connect(url, autocommit=True) as conn:
        with conn.transaction():
            conn.execute(
                "insert into public.events (project_id, type, payload)"
                " select %s, 'bench.ping', jsonb_build_object('n', g)"
                " from generate_series(1, %s) g",
                (project, count // endpoints),
            )
            # Statistics as autovacuum would have them for a standing backlog (a fresh bulk
            # insert otherwise looks like an empty queue to the planner). ANALYZE counts this
            # transaction's own rows; the worker sees them, notified, when it commits.
            conn.execute("analyze public.webhook_deliveries")
        # The insert's own time (and the fan-out trigger's) is not the worker's: start after it.
        started = time.perf_counter()
        # Whether any is left, not how many: counting the backlog every 20 ms would take CPU
        # from the worker it measures (over a second of Postgres time per 10,000 deliveries).
        while _scalar(
            conn,
            "select exists (select from public.webhook_deliveries where status = 'pending')",
        ):
            time.sleep(0.02)
        return (count // endpoints * endpoints) / (time.perf_counter() - started)


def wait_for_heartbeat(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for _ in range(300):
            if _scalar(conn, "select count(*) from public.worker_heartbeats"):
                return
            time.sleep(0.05)
    raise RuntimeError("the worker did not start")


def bench_deliveries(count: int, rounds: int, concurrency: int) -> dict[str, float]:
    bodies = sample_bodies(count)
    endpoints = concurrency
    per_endpoint = WorkerSettings().endpoint_concurrency
    with (
        bench_database("parity_bench_worker") as url,
        bench_database("parity_bench_worker_one") as one_url,
        fast_receiver() as receiver_url,
        tempfile.TemporaryDirectory(prefix="parity-bench-worker-") as logs,
        open(Path(logs) / "worker.log", "wb") as log,
        open(Path(logs) / "worker-one.log", "wb") as one_log,
    ):
        project = seed_endpoint(url, receiver_url, endpoints)
        single = seed_endpoint(one_url, receiver_url)
        workers = [
            worker_process(url, concurrency, log),
            worker_process(one_url, concurrency, one_log),
        ]
        try:
            wait_for_heartbeat(url)
            wait_for_heartbeat(one_url)
            worker_round(url, project, min(count, 500), endpoints)  # warm up connections, caches
            worker_round(one_url, single, 100)
            _on_uvloop(plain_loop(receiver_url, bodies[:500], concurrency))
            plain: list[float] = []
            plain_asyncio: list[float] = []
            plain_capped: list[float] = []
            plain_unsigned: list[float] = []
            worker_rates: list[float] = []
            single_rates: list[float] = []
            for _ in range(rounds):  # alternate, so all of them see the same noise
                plain.append(_on_uvloop(plain_loop(receiver_url, bodies, concurrency)))
                plain_asyncio.append(asyncio.run(plain_loop(receiver_url, bodies, concurrency)))
                worker_rates.append(worker_round(url, project, count, endpoints))
                single_rates.append(worker_round(one_url, single, count // 5))
                # One endpoint's requests in flight are capped by design: the same loop, capped.
                capped = bodies[: count // 5]
                plain_capped.append(_on_uvloop(plain_loop(receiver_url, capped, per_endpoint)))
                unsigned = plain_loop(receiver_url, bodies, concurrency, signed=False)
                plain_unsigned.append(_on_uvloop(unsigned))
        finally:
            for worker in workers:
                worker.terminate()
                worker.wait(timeout=30)
    plain_rate = statistics.median(plain)
    worker_rate = statistics.median(worker_rates)
    single_rate = statistics.median(single_rates)
    capped_rate = statistics.median(plain_capped)
    return {
        "plain": plain_rate,
        "plain_asyncio": statistics.median(plain_asyncio),
        "worker": worker_rate,
        "ratio": worker_rate / plain_rate,
        "single": single_rate,
        "single_ratio": single_rate / plain_rate,
        "plain_capped": capped_rate,
        "plain_unsigned": statistics.median(plain_unsigned),
        "single_capped_ratio": single_rate / capped_rate,
        "per_endpoint": per_endpoint,
        "endpoints": endpoints,
    }


# Claims beside a backlog --------------------------------------------------------------------------


def grow_backlog(url: str, project: UUID, target: int) -> None:
    """Pending deliveries of `project` (one endpoint) up to `target`, written in bulk: events with
    the fan-out trigger off (a benchmark shortcut), then one delivery per event."""
    with psycopg.connect(url, autocommit=True) as conn:
        have = _scalar(conn, "select count(*) from public.events where project_id = %s", (project,))
        with conn.transaction():
            conn.execute("set local session_replication_role = replica")
            conn.execute(
                "insert into public.events (project_id, type, payload)"
                " select %s, 'bench.backlog', jsonb_build_object('n', g)"
                " from generate_series(%s::int, %s::int) g",
                (project, have + 1, target),
            )
        conn.execute(
            "insert into public.webhook_deliveries"
            " (event_id, endpoint_id, project_id, environment)"
            " select e.id, w.id, e.project_id, 'prod'"
            " from public.events e join public.webhook_endpoints w on w.project_id = e.project_id"
            " where e.project_id = %s and e.type = 'bench.backlog'"
            " on conflict do nothing",
            (project,),
        )
        conn.execute("vacuum analyze public.events, public.webhook_deliveries")


async def timed_claims(url: str, rounds: int) -> tuple[float, int]:
    """Median time of a claim (rolled back, so each sees the same queue), and what it took."""
    times: list[float] = []
    taken = 0
    async with Database(url, min_size=1, max_size=1) as db:
        for _ in range(rounds):
            # The worker's own claim transaction, rolled back (psycopg.Rollback ends it quietly).
            async with db.as_service(queue.CLAIM_SETTINGS) as conn:
                started = time.perf_counter()
                claimed = await queue.claim(
                    conn,
                    worker_id="bench",
                    limit=200,
                    lease_seconds=60,
                    per_endpoint=4,
                    held=[],
                    budgets=queue.Budgets.from_config(),
                )
                times.append(time.perf_counter() - started)
                taken = len(claimed)
                raise psycopg.Rollback()
    return statistics.median(times), taken


def bench_claims(sizes: list[int], rounds: int) -> dict[int, float]:
    """Median claim time per backlog size: the big tenant's endpoint gives its 4, the small
    tenant's delivery is taken beside them."""
    times: dict[int, float] = {}
    with bench_database("parity_bench_claims") as url:
        big = seed_endpoint(url, "http://127.0.0.1:9/big")
        small = seed_endpoint(url, "http://127.0.0.1:9/small", owner_email="s@example.com")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "insert into public.events (project_id, type, payload)"
                " values (%s, 'bench.ping', '{}')",
                (small,),
            )
        for size in sizes:
            grow_backlog(url, big, size)
            seconds, taken = asyncio.run(timed_claims(url, rounds))
            assert taken == 5, f"a claim took {taken} deliveries, expected 4 + 1"
            times[size] = seconds
    return times


# Sweep --------------------------------------------------------------------------------------------


def grow_projects(url: str, target: int) -> None:
    """Projects up to `target` (a third per environment), each with a usage row under its cap."""
    with psycopg.connect(url, autocommit=True) as conn:
        have = _scalar(conn, "select count(*) from public.projects")
        existing = conn.execute("select id from auth.users limit 1").fetchone()
        owner = (
            existing[0]
            if existing
            else _scalar(
                conn, "insert into auth.users (email) values ('s@example.com') returning id"
            )
        )
        conn.execute(
            "insert into public.projects (name, owner_id, environment)"
            " select 'p' || g, %s,"
            " (array['prod', 'dev', 'staging']::public.environment[])[g %% 3 + 1]"
            " from generate_series(%s, %s) g",
            (owner, have + 1, target),
        )
        conn.execute(
            "insert into public.usage_counters"
            " (project_id, window_start, requests, request_cap)"
            " select id, '2026-04-01', 10, 1000000 from public.projects"
            " on conflict do nothing"
        )
        conn.execute("vacuum analyze public.projects, public.usage_counters")


def reset_violators(url: str, violators: int) -> None:
    """Put `violators` projects over their cap, unhandled, with nothing suspended yet."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("delete from public.events")
        conn.execute("delete from public.suspensions")
        conn.execute("update public.projects set status = 'active' where status = 'suspended'")
        conn.execute(
            "update public.usage_counters set requests = 10, handled_at = null"
            " where handled_at is not null or requests >= request_cap"
        )
        conn.execute(
            "update public.usage_counters set requests = 2000000 where project_id in"
            " (select id from public.projects order by id limit %s)",
            (violators,),
        )
        conn.execute("vacuum analyze public.usage_counters, public.projects, public.suspensions")
        # Write out what the set-up dirtied (a million-row load dirties most of shared_buffers):
        # otherwise the sweep pays for evicting the benchmark's own writes.
        conn.execute("checkpoint")


async def timed_sweep(url: str, settings: WorkerSettings) -> tuple[float, int]:
    async with Database(url, min_size=1, max_size=2) as db:
        started = time.perf_counter()
        result = await sweep(db, settings)
        return time.perf_counter() - started, result.violators


def bench_sweep(sizes: list[int], violators: int, rounds: int) -> dict[int, float]:
    """Median sweep time per database size. The databases are built side by side and measured in
    alternation, so both see the same noise from whatever else the machine is doing."""
    settings = WorkerSettings(sweep_batch_size=500)
    samples: dict[int, list[float]] = {size: [] for size in sizes}
    with ExitStack() as stack:
        urls = {
            size: stack.enter_context(bench_database(f"parity_bench_sweep_{size}"))
            for size in sizes
        }
        for size, url in urls.items():
            grow_projects(url, size)
        for round_ in range(rounds + 1):
            for size, url in urls.items():
                reset_violators(url, violators)
                seconds, found = asyncio.run(timed_sweep(url, settings))
                assert found == violators, f"swept {found} violators, expected {violators}"
                if round_:  # the first round only warms the caches
                    samples[size].append(seconds)
    return {size: statistics.median(times) for size, times in samples.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.worker", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer deliveries and rounds")
    parser.add_argument("--only", choices=["deliveries", "claims", "sweep"])
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args(argv)
    configure_logging(level="WARNING", process="bench")
    count, rounds = (2_000, 1) if args.quick else (10_000, 3)

    if args.only in (None, "deliveries"):
        d = bench_deliveries(count, rounds, args.concurrency)
        print(
            f"deliveries ({count} per round, concurrency {args.concurrency}, median of {rounds}):"
            f" worker {d['worker']:,.0f}/s, plain aiohttp loop {d['plain']:,.0f}/s on uvloop"
            f" (ratio {d['ratio']:.2f}) and {d['plain_asyncio']:,.0f}/s on asyncio's own loop"
            f" (ratio {d['worker'] / d['plain_asyncio']:.2f}) (target: >= 0.50);"
            f" backlog over {d['endpoints']:.0f} endpoints. One endpoint alone (its requests in"
            f" flight capped by WORKER_ENDPOINT_CONCURRENCY): {d['single']:,.0f}/s"
            f" (ratio {d['single_ratio']:.2f} to the uvloop plain loop; target >= 0.45);"
            f" the plain loop capped at the same {d['per_endpoint']:.0f} in flight"
            f" {d['plain_capped']:,.0f}/s (ratio {d['single_capped_ratio']:.2f}). The earlier"
            f" reference, unsigned (a content type only): {d['plain_unsigned']:,.0f}/s (ratios"
            f" {d['worker'] / d['plain_unsigned']:.2f} and {d['single'] / d['plain_unsigned']:.2f})"
        )
    if args.only in (None, "claims"):
        sizes = [10_000, 100_000 if args.quick else 1_000_000]
        c = bench_claims(sizes, 20)
        print(
            f"claim beside one tenant's backlog (median of 20): {sizes[0]:,} queued"
            f" {c[sizes[0]] * 1000:.1f} ms, {sizes[1]:,} queued {c[sizes[1]] * 1000:.1f} ms,"
            f" ratio {c[sizes[1]] / c[sizes[0]]:.2f} (target: <= 1.5)"
        )
    if args.only in (None, "sweep"):
        sizes = [100_000, 1_000_000]
        sweep_rounds = 3 if args.quick else 7
        t = bench_sweep(sizes, 1_000, sweep_rounds)
        print(
            f"sweep of 1,000 violators (median of {sweep_rounds}):"
            f" 100k projects {t[sizes[0]] * 1000:.0f} ms, 1M projects {t[sizes[1]] * 1000:.0f} ms,"
            f" ratio {t[sizes[1]] / t[sizes[0]]:.2f} (targets: <= 1,000 ms and <= 1.5)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
