"""Rate-limit windows on a real Redis Cluster: a decision's keys share one slot (as `CLUSTER
KEYSLOT` computes it) while projects spread over the masters, a slot moved to another master
mid-window (ASK while it migrates, MOVED after) keeps counting exactly, a master that hangs
refuses its own slots' decisions within the bound and no others, and the console's sign-in
throttle counts on a cluster too."""

from __future__ import annotations

import asyncio
import secrets
import signal
from collections.abc import AsyncIterator
from uuid import uuid4

import pytest
from limits import parse

from console.settings import ConsoleSettings
from console.signin import SignInThrottle, SignInUnavailable, TooManySignIns
from gateway.errors import RateLimiterUnavailable
from gateway.ratelimit import ProjectRateLimiter, RedisWindows
from ops.rediscluster import Cluster
from shared.settings import PlatformSettings

WINDOW = 60


@pytest.fixture
async def windows(cluster: Cluster) -> AsyncIterator[RedisWindows]:
    windows = RedisWindows(cluster.url, key_prefix=f"parity-test-{secrets.token_hex(4)}")
    try:
        yield windows
    finally:
        await windows.close()


def stored_keys(cluster: Cluster, windows: RedisWindows) -> dict[str, int]:
    """Every window key in the cluster and the port of the master holding it."""
    found: dict[str, int] = {}
    for node in cluster.nodes[:3]:
        listed = cluster.cli(node, "--scan", "--pattern", windows.storage_key("*"))
        found.update({key: node.port for key in listed.split()})
    return found


async def test_a_decisions_keys_share_a_slot_and_projects_spread_over_the_masters(
    cluster: Cluster, windows: RedisWindows
) -> None:
    limiter = ProjectRateLimiter(windows, window_seconds=WINDOW)
    projects = [uuid4() for _ in range(24)]
    for project in projects:
        # Two limits (a changed base limit starts a new window) and a look without counting.
        assert (await limiter.hit(project, 5)).remaining == 4
        assert (await limiter.hit(project, 7)).remaining == 6
        assert (await limiter.peek(project, 5)).remaining == 4

    keys = stored_keys(cluster, windows)
    assert len(keys) == 2 * len(projects)
    for project in projects:
        own = {key: port for key, port in keys.items() if str(project) in key}
        assert len(own) == 2
        slots = {cluster.keyslot(key) for key in own}
        # Every key of the project has the slot of the project id alone (the hash tag) ...
        assert slots == {cluster.keyslot(str(project))}
        # ... and lives on the master serving that slot.
        assert set(own.values()) == {cluster.owner(slots.pop()).port}
    # The tag is the project, not the shared prefix: the windows use all three masters.
    assert set(keys.values()) == {node.port for node in cluster.nodes[:3]}


async def test_a_slot_moved_mid_window_keeps_counting_exactly_through_ask_and_moved(
    cluster: Cluster, windows: RedisWindows
) -> None:
    limiter = ProjectRateLimiter(windows, window_seconds=WINDOW)
    project, limit = uuid4(), 6
    for n in range(1, 3):
        assert (await limiter.hit(project, limit)).remaining == limit - n
    (key,) = stored_keys(cluster, windows)
    slot = cluster.keyslot(key)
    source = cluster.owner(slot)
    target = next(node for node in cluster.nodes[:3] if node is not source)
    source_id, target_id = cluster.node_id(source), cluster.node_id(target)

    # Resharding as `redis-cli --cluster reshard` does it, one step at a time.
    cluster.cli(target, "cluster", "setslot", str(slot), "importing", source_id)
    cluster.cli(source, "cluster", "setslot", str(slot), "migrating", target_id)
    assert cluster.cli(source, "migrate", "127.0.0.1", str(target.port), "", "0", "5000",
                       "keys", key) == "OK"  # fmt: skip
    # The source no longer has the key and answers ASK: the count continues on the target
    # (whose script cache is empty: NOSCRIPT is answered by loading it).
    assert (await limiter.hit(project, limit)).remaining == limit - 3
    assert (await limiter.peek(project, limit)).remaining == limit - 3
    assert cluster.cli(target, "cluster", "countkeysinslot", str(slot)) == "1"

    for node in cluster.nodes[:3]:
        cluster.cli(node, "cluster", "setslot", str(slot), "node", target_id)
    # The client's map still names the source, which now answers MOVED.
    decisions = [await limiter.hit(project, limit) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions] == [2, 1, 0, 0]
    assert cluster.cli(target, "get", key) == "7"
    assert cluster.cli(source, "cluster", "countkeysinslot", str(slot)) == "0"


async def test_the_sign_in_throttle_counts_on_a_cluster(cluster: Cluster) -> None:
    settings = ConsoleSettings(
        _env_file=None, signin_limit_per_account="3/minute", signin_limit_per_address="100/minute"
    )
    platform = PlatformSettings(_env_file=None, redis_url=cluster.url)
    email = f"{uuid4().hex}@example.com"
    first, second = SignInThrottle(settings, platform), SignInThrottle(settings, platform)
    for n in range(3):  # two console replicas, one count
        await (first, second)[n % 2].attempt(email, f"10.0.0.{n}")
    with pytest.raises(TooManySignIns):
        await second.attempt(email, "10.0.0.9")


async def test_a_hanging_master_refuses_only_its_own_slots_and_within_the_bound(
    cluster: Cluster, windows: RedisWindows
) -> None:
    limiter = ProjectRateLimiter(windows, window_seconds=WINDOW)
    hung = cluster.nodes[0]
    projects = [uuid4() for _ in range(12)]
    on_hung = [p for p in projects if cluster.owner(cluster.keyslot(str(p))) is hung]
    elsewhere = [p for p in projects if p not in on_hung]
    assert on_hung and elsewhere
    for project in projects:
        await limiter.hit(project, 5)

    hung.process.send_signal(signal.SIGSTOP)  # accepts connections, answers nothing
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(RateLimiterUnavailable):
            await limiter.hit(on_hung[0], 5)
        waited = loop.time() - started
        # Refused at once while the node is fresh from failing; others count on.
        with pytest.raises(RateLimiterUnavailable):
            await limiter.hit(on_hung[-1], 5)
        assert [(await limiter.hit(p, 5)).remaining for p in elsewhere] == [3] * len(elsewhere)
        await windows.ping()  # still ready: other masters answer
    finally:
        hung.process.send_signal(signal.SIGCONT)
    # (1 + retries) x timeout = 0.9 s, and some slack for a busy machine: not a speed test,
    # a bound against waiting on a dead node for the OS's TCP timeouts.
    assert waited < 2.0


async def test_a_single_server_url_naming_a_cluster_node_is_refused_clearly(
    cluster: Cluster,
) -> None:
    node = cluster.nodes[0]
    windows = RedisWindows(f"redis://{node.address}/0", key_prefix="parity-test")
    limiter = ProjectRateLimiter(windows, window_seconds=WINDOW)
    try:
        elsewhere = next(
            p
            for p in (uuid4() for _ in range(100))
            if cluster.owner(cluster.keyslot(str(p))) is not node
        )
        with pytest.raises(RateLimiterUnavailable) as refused:
            await limiter.hit(elsewhere, 5)
        assert "redis+cluster://" in str(refused.value.__cause__)
    finally:
        await windows.close()


async def test_the_sign_in_throttle_refuses_with_503_when_its_master_is_down(
    cluster: Cluster,
) -> None:
    settings = ConsoleSettings(
        _env_file=None, signin_limit_per_account="3/minute", signin_limit_per_address="100/minute"
    )
    throttle = SignInThrottle(settings, PlatformSettings(_env_file=None, redis_url=cluster.url))
    address = "10.0.0.1"
    await throttle.attempt(f"{uuid4().hex}@example.com", address)  # learns the slot map
    # The address is counted first: its key's master goes away.
    key = f"LIMITS:{parse(settings.signin_limit_per_address).key_for('signin-address', address)}"
    cluster.kill(cluster.owner(cluster.keyslot(key)))
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(SignInUnavailable):
        await throttle.attempt(f"{uuid4().hex}@example.com", address)
    # Bounded, not a speed test: the OS's TCP timeouts would be minutes.
    assert loop.time() - started < 5.0
