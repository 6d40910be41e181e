"""Database outages: down at start, gone while running, a configuration that cannot work, and
`--check` answering within its bound either way. The database is made unreachable by a TCP relay on
loopback in front of the test database (stopping the relay is an outage for the worker); the
shared Postgres itself is never touched."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit, urlunsplit
from uuid import UUID

from shared.db import Database
from tests.worker.conftest import (
    MakeProject,
    Receiver,
    delivery_status,
    emit_events,
    eventually,
    running_worker,
    serving,
    spawn,
    webhook_project,
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _via(database_url: str, port: int) -> str:
    parts = urlsplit(database_url)
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host))


class Relay:
    """A TCP relay on loopback to the database: while stopped, the database is unreachable."""

    def __init__(self, target: tuple[str, int], *, answer: bool = True) -> None:
        self.port = _free_port()
        self._target = target
        self._answer = answer
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        if not self._answer:  # accepts, then never says a word
            with contextlib.suppress(ConnectionError):
                await reader.read()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.add(up_writer)
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.transport.abort()


@contextlib.asynccontextmanager
async def relay_to(database_url: str, *, answer: bool = True) -> AsyncIterator[Relay]:
    parts = urlsplit(database_url)
    relay = Relay((parts.hostname or "127.0.0.1", parts.port or 5432), answer=answer)
    try:
        yield relay
    finally:
        await relay.stop()


async def _lines(stream: asyncio.StreamReader, into: list[str]) -> None:
    while line := await stream.readline():
        into.append(line.decode(errors="replace"))


async def test_database_down_at_start_and_while_running_is_waited_out_with_one_line_each(
    db: Database, database_url: str, make_project: MakeProject
) -> None:
    async with serving(Receiver()) as receiver, relay_to(database_url) as relay:
        project, _ = await webhook_project(db, make_project, receiver, "prod")
        worker = await spawn(
            _via(database_url, relay.port),
            "-m",
            "worker",
            settings={"listen_reconnect_max_seconds": 0.5},
            stderr=asyncio.subprocess.PIPE,
        )
        assert worker.stderr is not None
        log: list[str] = []
        reading = asyncio.create_task(_lines(worker.stderr, log))
        try:
            await asyncio.sleep(4)  # the database is unreachable: the worker waits, quietly
            assert worker.returncode is None, "".join(log)
            assert sum("database unavailable" in line for line in log) == 1, "".join(log)

            await relay.start()
            [first] = await emit_events(db, project)
            await eventually(lambda: _succeeded(db, first), what="delivery once the database is up")

            await relay.stop()  # an outage while running
            await asyncio.sleep(3)
            assert worker.returncode is None
            await relay.start()
            [second] = set(await emit_events(db, project)) - {first}
            await eventually(lambda: _succeeded(db, second), what="delivery after the outage")
            await eventually(lambda: _said(log, "database available again", 2), within=10)
        finally:
            if worker.returncode is None:
                worker.terminate()
            code = await asyncio.wait_for(worker.wait(), 30)
            await reading
    text = "".join(log)
    assert code == 0, text
    assert "Traceback" not in text
    assert sum("database unavailable" in line for line in log) == 2, text
    assert sum("database available again" in line for line in log) == 2, text


async def _succeeded(db: Database, delivery_id: UUID) -> bool:
    return await delivery_status(db, delivery_id) == "succeeded"


async def _said(log: list[str], what: str, times: int) -> bool:
    return sum(what in line for line in log) >= times


async def test_a_database_that_refuses_the_configuration_stops_the_worker_at_once(
    database_url: str,
) -> None:
    parts = urlsplit(database_url)
    wrong = urlunsplit(parts._replace(path="/no_such_database_here"))
    worker = await spawn(wrong, "-m", "worker", stderr=asyncio.subprocess.PIPE)
    _, stderr = await asyncio.wait_for(worker.communicate(), 30)
    text = stderr.decode()
    assert worker.returncode == 2, text
    assert "cannot use the database" in text and "does not exist" in text
    assert "Traceback" not in text


async def _timed_check(url: str) -> tuple[int, float, str, str]:
    started = time.monotonic()
    check = await spawn(
        url, "-m", "worker", "--check", stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    stdout, stderr = await asyncio.wait_for(check.communicate(), 30)
    assert check.returncode is not None
    return check.returncode, time.monotonic() - started, stdout.decode(), stderr.decode()


async def test_check_answers_within_5_seconds_when_the_database_is_away(
    database_url: str,
) -> None:
    # The reference: the same check against the reachable database (no worker: exit 1 at once).
    # Its time is the process start-up, which a loaded machine stretches; the bound is on the rest.
    code, reference, out, _ = await _timed_check(database_url)
    assert (code, "no worker heartbeat" in out) == (1, True)
    # Nothing listening: refused at once.
    code, refused, out, err = await _timed_check(_via(database_url, _free_port()))
    assert (code, "Traceback" in err) == (1, False), err
    assert "database unavailable" in out
    # Something listening that never answers: bounded by the check's own timeout (3 s).
    async with relay_to(database_url, answer=False) as silent:
        await silent.start()
        code, silence, out, err = await _timed_check(_via(database_url, silent.port))
    assert (code, "Traceback" in err) == (1, False), err
    assert "database unavailable" in out
    assert refused - reference < 1.5, (refused, reference)
    assert silence - reference < 4.0, (silence, reference)
    assert max(refused, silence) < 5 or reference > 1.0, (refused, silence, reference)


async def test_heartbeats_of_long_silent_workers_are_pruned(
    db: Database, database_url: str
) -> None:
    long_ago = datetime.now(UTC) - timedelta(hours=3)
    async with db.as_service() as conn:
        await conn.execute(
            "insert into public.worker_heartbeats (worker_id, hostname, pid, started_at, beat_at)"
            " values ('dead', 'gone', 1, %s, %s), ('recent', 'here', 2, %s, now())",
            (long_ago, long_ago, long_ago),
        )

    async def remaining() -> set[str]:
        async with db.as_service() as conn:
            cur = await conn.execute("select worker_id from public.worker_heartbeats")
            return {row["worker_id"] for row in await cur.fetchall()}

    async with running_worker(database_url, name="alive", heartbeat_retention_seconds=3_600):

        async def pruned() -> bool:
            return "dead" not in await remaining()

        await eventually(pruned, what="the dead worker's heartbeat pruned")
        assert await remaining() == {"recent", "alive"}
