"""A Postgres restart mid-run, on a throwaway cluster of this test's own (the shared server is not
ours to restart): the worker reconnects by itself and finishes the work."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from ops import database
from shared.db import Database
from tests.worker.conftest import (
    Receiver,
    add_endpoint,
    emit_events,
    eventually,
    serving,
    start_worker_process,
    status_counts,
    stop_process,
)

PG_BIN = Path("/usr/lib/postgresql/15/bin")


@dataclass(frozen=True)
class Cluster:
    root: Path
    url: str

    def pg_ctl(self, *args: str) -> None:
        # The server logs to a file: pg_ctl's own pipes would otherwise stay open in the server.
        data, log = str(self.root / "data"), str(self.root / "log")
        _as_postgres(str(PG_BIN / "pg_ctl"), "-D", data, "-l", log, "-w", *args)


def _as_postgres(*command: str) -> None:
    subprocess.run(["runuser", "-u", "postgres", "--", *command], check=True, capture_output=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def throwaway_cluster() -> Iterator[Cluster]:
    """initdb + pg_ctl under a temporary directory, run as the `postgres` system user."""
    if not (PG_BIN / "initdb").exists() or os.geteuid() != 0 or not shutil.which("runuser"):
        pytest.skip("needs Debian's PostgreSQL 15 binaries and root (to run them as postgres)")
    root = Path(tempfile.mkdtemp(prefix="parity-restart-"))
    shutil.chown(root, "postgres")
    port = _free_port()
    initdb = str(PG_BIN / "initdb")
    _as_postgres(initdb, "-D", str(root / "data"), "-A", "trust", "-U", "postgres", "-N")
    cluster = Cluster(root, f"postgresql://postgres@127.0.0.1:{port}/postgres")
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    cluster.pg_ctl("-o", options, "start")
    try:
        with psycopg.connect(cluster.url, autocommit=True) as conn:
            conn.execute("create database parity")
        url = database.with_database(cluster.url, "parity")
        database.prepare(url)
        yield Cluster(root, url)
    finally:
        cluster.pg_ctl("-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


async def test_a_postgres_restart_mid_run_is_survived(
    throwaway_cluster: Cluster, processes: list[subprocess.Popen[bytes]]
) -> None:
    url = throwaway_cluster.url
    async with Database(url) as db, serving(Receiver(delay=0.01)) as receiver:
        async with db.as_service() as conn:
            cur = await conn.execute(
                "insert into auth.users (email) values ('r@example.com') returning id"
            )
            owner = (await cur.fetchone() or {})["id"]
            cur = await conn.execute(
                "insert into public.projects (name, environment, owner_id)"
                " values ('restart', 'dev', %s) returning id",
                (owner,),
            )
            project = (await cur.fetchone() or {})["id"]
        await add_endpoint(db, project, receiver)
        await emit_events(db, project, 300)
        worker = start_worker_process(url, concurrency=5)
        processes.append(worker)

        async def received(count: int) -> bool:
            return len(receiver.received) >= count

        await eventually(lambda: received(60), what="60 deliveries before the restart")
        # In a thread: the receiver, in this event loop, keeps answering meanwhile.
        await asyncio.to_thread(throwaway_cluster.pg_ctl, "-m", "fast", "restart")

        async def finished(total: int) -> bool:
            return (await status_counts(db)).get("succeeded", 0) == total

        await eventually(lambda: finished(300), within=60, what="every delivery after a restart")
        await emit_events(db, project, 10)  # notifications reach the reconnected listener
        await eventually(lambda: finished(310), within=30, what="new events after the restart")
        assert await stop_process(worker) == 0
    assert worker.returncode == 0
    assert receiver.bad_signatures == []
    assert len({r.webhook_id for r in receiver.received}) == 310
