"""A real Redis Cluster on loopback for tests and benchmarks: six `redis-server` processes
(three masters with one replica each) on free ports, each in its own directory, joined by
`redis-cli --cluster create`; stopped on leaving. Nothing is shared between two clusters, so any
number can run at once."""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

NODE_TIMEOUT_MS = 1000
"""How long a master may be unreachable before its replica is promoted: short, so a failover
happens within a test (production keeps Redis's default of 15 s, or what its operator chose)."""


def available() -> bool:
    """Whether Debian's `redis-server` and `redis-cli` are installed."""
    return shutil.which("redis-server") is not None and shutil.which("redis-cli") is not None


def _program(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} is not installed (Debian: redis-server, redis-tools)")
    return path


@dataclass
class Node:
    port: int
    bus_port: int
    directory: Path
    process: subprocess.Popen[bytes]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@dataclass
class Cluster:
    nodes: list[Node] = field(default_factory=list)

    @property
    def url(self) -> str:
        """The `REDIS_URL` of this cluster, naming every master as a start-up node."""
        return "redis+cluster://" + ",".join(node.address for node in self.nodes[:3])

    def cli(self, node: Node, *args: str) -> str:
        """`redis-cli` against `node`; its output (fails the test on an error)."""
        done = subprocess.run(
            [_program("redis-cli"), "-h", "127.0.0.1", "-p", str(node.port), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        if done.returncode != 0 or done.stdout.startswith("ERR"):
            raise RuntimeError(f"redis-cli {' '.join(args)}: {done.stdout}{done.stderr}")
        return done.stdout.strip()

    def alive(self) -> list[Node]:
        return [node for node in self.nodes if node.process.poll() is None]

    def keyslot(self, key: str) -> int:
        return int(self.cli(self.alive()[0], "cluster", "keyslot", key))

    def owner(self, slot: int) -> Node:
        """The master serving `slot`, as the live nodes see it."""
        for line in self.cli(self.alive()[0], "cluster", "nodes").splitlines():
            fields = line.split()
            if "master" not in fields[2] or "fail" in fields[2]:
                continue
            for part in fields[8:]:
                low, _, high = part.partition("-")
                if not low.isdigit():
                    continue  # a slot being migrated: [slot->-node]
                if int(low) <= slot <= int(high or low):
                    return self.node_at(int(fields[1].split(":")[1].split("@")[0]))
        raise RuntimeError(f"no master serves slot {slot}")

    def node_at(self, port: int) -> Node:
        return next(node for node in self.nodes if node.port == port)

    def node_id(self, node: Node) -> str:
        return self.cli(node, "cluster", "myid")

    def replica_of(self, master: Node) -> Node:
        master_id = self.node_id(master)
        for line in self.cli(master, "cluster", "nodes").splitlines():
            fields = line.split()
            if fields[3] == master_id:
                return self.node_at(int(fields[1].split(":")[1].split("@")[0]))
        raise RuntimeError(f"{master.address} has no replica")

    def kill(self, node: Node) -> None:
        """A crash: SIGKILL, nothing saved or handed over."""
        node.process.send_signal(signal.SIGKILL)
        node.process.wait(10)

    def wait_ok(self, within: float = 30.0) -> None:
        """Until every live node says `cluster_state:ok` and every live replica is in sync."""
        deadline = time.monotonic() + within
        while True:
            states = [self.cli(node, "cluster", "info") for node in self.alive()]
            links = [self.cli(node, "info", "replication") for node in self.alive()]
            if all("cluster_state:ok" in state for state in states) and all(
                "role:master" in link or "master_link_status:up" in link for link in links
            ):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster not ok within {within:g} s: {states}")
            time.sleep(0.1)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _start_node(directory: Path, node_timeout_ms: int) -> Node:
    """One cluster-enabled server; tried again on other ports if its ports were taken between
    choosing and binding them (other tests run at the same time)."""
    for _ in range(5):
        port, bus_port = _free_port(), _free_port()
        directory.mkdir(parents=True, exist_ok=True)
        process = subprocess.Popen(
            [
                _program("redis-server"),
                "--bind",
                "127.0.0.1",
                "--port",
                str(port),
                "--cluster-port",
                str(bus_port),
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                str(directory / "nodes.conf"),
                "--cluster-node-timeout",
                str(node_timeout_ms),
                # A replica takes over however long ago it last heard from its master, and the
                # other masters keep serving their slots while one is being replaced.
                "--cluster-replica-validity-factor",
                "0",
                "--cluster-require-full-coverage",
                "no",
                "--dir",
                str(directory),
                "--save",
                "",
                "--appendonly",
                "no",
                "--logfile",
                str(directory / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while process.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                return Node(port, bus_port, directory, process)
            time.sleep(0.02)
        if process.poll() is None:
            process.kill()
        process.wait()
        (directory / "nodes.conf").unlink(missing_ok=True)
    raise RuntimeError(f"redis-server would not start: {(directory / 'redis.log').read_text()}")


@contextlib.contextmanager
def redis_cluster(directory: Path, *, node_timeout_ms: int = NODE_TIMEOUT_MS) -> Iterator[Cluster]:
    """Three masters and three replicas on free loopback ports under `directory`."""
    if not available():
        raise RuntimeError("redis-server and redis-cli are not installed")
    cluster = Cluster()
    try:
        for n in range(6):
            cluster.nodes.append(_start_node(directory / f"node-{n}", node_timeout_ms))
        created = subprocess.run(
            [_program("redis-cli"), "--cluster", "create"]
            + [node.address for node in cluster.nodes]
            + ["--cluster-replicas", "1", "--cluster-yes"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if created.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create: {created.stdout}{created.stderr}")
        cluster.wait_ok()
        # `--cluster create` makes the first three the masters; keep that order in `nodes`.
        for node in cluster.nodes[:3]:
            if "role:master" not in cluster.cli(node, "info", "replication"):
                raise RuntimeError(f"{node.address} should be a master")
        yield cluster
    finally:
        for node in cluster.nodes:
            if node.process.poll() is None:
                node.process.kill()
            node.process.wait()
