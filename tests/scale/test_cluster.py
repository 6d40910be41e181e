"""Scaled out on loopback: three gateway processes on one Redis Cluster (three masters with a
replica each), two workers, one Postgres. One budget per key across the gateways, exact for
every environment; a master killed mid-run is replaced by its replica while requests keep being
answered, within the tolerance the README states; every webhook delivered once across the two
workers, and a hanging endpoint does not hold up another project's webhook."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

import aiohttp
import pytest

from ops.rediscluster import Cluster
from shared.db import Database
from shared.environment import get_environment_config
from tests.gateway.conftest import (
    GatewayProcess,
    IssueKey,
    Upstream,
    bearer,
    start_gateway_process,
    wait_until_listening,
)
from tests.worker.conftest import (
    BUSY_WITH_A_HANGING_ENDPOINT,
    HANGING_ENDPOINT_TIMEOUT,
    MakeProject,
    Receiver,
    emit_events,
    eventually,
    serving,
    start_worker_process,
    status_counts,
    stop_process,
    webhook_project,
)

BASE_LIMIT = 30
CLIENTS = 6
"""Concurrent clients in the failover run, each waiting for its answer before the next."""


@dataclass(frozen=True)
class Answer:
    started: float
    took: float
    status: int
    code: str | None


async def ask(http: aiohttp.ClientSession, url: str, token: str) -> Answer:
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with http.get(url, headers=bearer(token)) as response:
        body = await response.json()
        code = body["error"]["code"] if response.status >= 400 else None
        return Answer(started, loop.time() - started, response.status, code)


@pytest.mark.slow(30)
async def test_gateways_and_workers_scaled_out_on_a_redis_cluster(
    cluster: Cluster,
    database_url: str,
    db: Database,
    upstream: Upstream,
    issue_key: IssueKey,
    make_project: MakeProject,
    processes: list[subprocess.Popen[bytes]],
    tmp_path: Path,
    http: aiohttp.ClientSession,
) -> None:
    prefix = f"parity-test-{secrets.token_hex(4)}"
    env = {
        "DATABASE_URL": database_url,
        "REDIS_URL": cluster.url,
        "GATEWAY_REDIS_KEY_PREFIX": prefix,
        "GATEWAY_UPSTREAM_URL": upstream.url,
    }
    gateways: list[GatewayProcess] = [
        start_gateway_process(env, tmp_path / f"gateway-{n}.log") for n in range(3)
    ]
    timeout = HANGING_ENDPOINT_TIMEOUT
    async with (
        serving(Receiver()) as steady,
        serving(Receiver(delay=3_600), hang_up_with_client=True) as hanging,
        serving(Receiver()) as healthy,
    ):
        for _ in range(2):
            processes.append(start_worker_process(database_url, **BUSY_WITH_A_HANGING_ENDPOINT))
        urls = [await wait_until_listening(gateway) for gateway in gateways]

        # Webhooks: a backlog the two workers share while everything below runs.
        steady_project, _ = await webhook_project(db, make_project, steady, "prod")
        await emit_events(db, steady_project, 300)

        await _one_budget_per_key_across_gateways(http, urls, issue_key)
        await _a_master_killed_mid_run(cluster, http, urls, issue_key, prefix)
        await _a_hanging_endpoint_does_not_delay_another_project(
            db, make_project, hanging, healthy, timeout
        )

        await eventually(lambda: _succeeded(db, 300 + 3), what="every healthy delivery succeeding")
        for worker in processes:
            assert await stop_process(worker) == 0
    for gateway in gateways:
        gateway.process.terminate()
        gateway.process.wait(20)

    sent = Counter(steady.arrived + healthy.arrived)
    assert len(sent) == 300 + 3
    assert set(sent.values()) == {1}, "a webhook was sent more than once"
    assert steady.bad_signatures == healthy.bad_signatures == hanging.bad_signatures == []


async def _one_budget_per_key_across_gateways(
    http: aiohttp.ClientSession, urls: list[str], issue_key: IssueKey
) -> None:
    """N concurrent requests for one key, spread over the three gateways, admit exactly the
    key's limit: the base limit times its environment's multiplier."""
    for environment in ("prod", "staging", "dev"):
        seeded = await issue_key(environment, rate_limit=BASE_LIMIT)
        limit = BASE_LIMIT * get_environment_config(environment).rate_limit_multiplier
        sent = limit + 40
        gate = asyncio.Semaphore(12)

        async def one(n: int, token: str = seeded.token, gate: asyncio.Semaphore = gate) -> Answer:
            async with gate:
                return await ask(http, urls[n % 3], token)

        answers = await asyncio.gather(*(one(n) for n in range(sent)))
        statuses = Counter(answer.status for answer in answers)
        assert statuses == {200: limit, 429: sent - limit}, (environment, statuses)


async def _a_master_killed_mid_run(
    cluster: Cluster,
    http: aiohttp.ClientSession,
    urls: list[str],
    issue_key: IssueKey,
    prefix: str,
) -> None:
    """The master of a key's slot is killed while clients keep asking; its replica takes over
    and the gateways follow without a restart."""
    limit = 600
    seeded = await issue_key("prod", rate_limit=limit)
    project: UUID = seeded.project.id
    slot = cluster.keyslot(f"{prefix}:{{{project}}}/{limit}/60")
    master = cluster.owner(slot)
    replica = cluster.replica_of(master)
    # A project on another master, asked at the same time, is not held up at all.
    while True:
        bystander = await issue_key("prod", rate_limit=10_000)
        if cluster.owner(cluster.keyslot(str(bystander.project.id))) is not master:
            break

    loop = asyncio.get_running_loop()
    answers: list[Answer] = []
    bystanders: list[Answer] = []
    stop = asyncio.Event()
    killed_at: list[float] = []
    promoted_at: list[float] = []

    async def client(n: int) -> None:
        while not stop.is_set():
            answers.append(await ask(http, urls[n % 3], seeded.token))
            bystanders.append(await ask(http, urls[(n + 1) % 3], bystander.token))
            await asyncio.sleep(0.02)

    clients = [asyncio.create_task(client(n)) for n in range(CLIENTS)]
    try:
        await eventually(lambda: _admitted(answers, 100), within=30, what="100 requests admitted")
        killed_at.append(loop.time())
        await asyncio.to_thread(cluster.kill, master)
        await eventually(
            lambda: _is_master(cluster, replica), within=30, what="the replica's promotion"
        )
        promoted_at.append(loop.time())
        await eventually(
            lambda: _refused(answers, promoted_at[0], 20),
            within=30,
            what="the budget spent after the failover",
        )
    finally:
        stop.set()
        await asyncio.gather(*clients)

    statuses = Counter(answer.status for answer in answers)
    admitted = statuses[200]
    # The tolerance stated in the README: decisions in flight when the master died may have
    # been counted without an answer (fewer admitted), and increments it acknowledged but had
    # not yet sent its replica are lost (more admitted): at most one per concurrent client.
    assert limit - CLIENTS <= admitted <= limit + CLIENTS, statuses
    assert set(statuses) <= {200, 429, 503}, statuses
    refused = [answer for answer in answers if answer.status == 503]
    assert {answer.code for answer in refused} <= {"RATE_LIMITER_UNAVAILABLE"}
    # Refusals happen only between the crash and the promotion (plus the first requests that
    # make the gateways refresh their slot maps: a few seconds on a busy machine).
    late = [round(a.started - promoted_at[0], 2) for a in refused if a.started > promoted_at[0]]
    assert all(a.started >= killed_at[0] - 0.1 for a in refused)
    assert max(late, default=0) <= 3.0, (promoted_at[0] - killed_at[0], late)
    # Each answer came (a bound against hanging, not a speed test: the machine may be busy).
    assert max(answer.took for answer in answers + bystanders) < 5.0
    assert Counter(answer.status for answer in bystanders) == {200: len(bystanders)}


async def _a_hanging_endpoint_does_not_delay_another_project(
    db: Database,
    make_project: MakeProject,
    hanging: Receiver,
    healthy: Receiver,
    request_timeout: float,
) -> None:
    project_a, _ = await webhook_project(db, make_project, hanging, "prod")
    project_b, _ = await webhook_project(db, make_project, healthy, "prod")
    await emit_events(db, project_a, 300)
    await eventually(lambda: _arrived(hanging, 8), what="the hanging endpoint's first requests")
    loop = asyncio.get_running_loop()
    waits: list[float] = []
    for _ in range(3):
        # Each of B's events while A's backlog keeps both workers busy with timeouts.
        healthy.started.clear()
        emitted = loop.time()
        await emit_events(db, project_b)
        await asyncio.wait_for(healthy.started.wait(), 30)
        waits.append(loop.time() - emitted)
        await asyncio.sleep(request_timeout * 0.75)
    assert max(waits) < 1.0, f"B's webhooks waited {waits} s behind A's hanging endpoint"


async def _admitted(answers: list[Answer], count: int) -> bool:
    return sum(answer.status == 200 for answer in answers) >= count


async def _refused(answers: list[Answer], after: float, count: int) -> bool:
    return sum(a.status == 429 and a.started > after for a in answers) >= count


async def _is_master(cluster: Cluster, node: object) -> bool:
    return "role:master" in await asyncio.to_thread(cluster.cli, node, "info", "replication")  # type: ignore[arg-type]


async def _arrived(receiver: Receiver, count: int) -> bool:
    return len(receiver.arrived) >= count


async def _succeeded(db: Database, total: int) -> bool:
    return (await status_counts(db)).get("succeeded", 0) >= total
