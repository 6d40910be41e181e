"""The SSRF guard: every numeric and IPv6-wrapped form of a non-public address is refused with
WORKER_ALLOW_PRIVATE_TARGETS off, called directly and through a running worker, whatever the HTTP
client's own notion of an address. Receivers listen on loopback only; a socket audit hook makes any
connection this test process attempts to a non-loopback address fail loudly instead of leaving."""

from __future__ import annotations

import ipaddress
import socket
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

import pytest

from shared.db import Database
from shared.environment import Environment
from tests.worker.conftest import (
    MakeProject,
    Receiver,
    add_endpoint,
    attempt_rows,
    emit_events,
    eventually,
    running_worker,
    start_worker_process,
    stop_process,
    worker_settings,
)
from worker.queue import ClaimedDelivery
from worker.sender import GuardedResolver, Sender, TargetRefused, check_literal_target


def _loopback_only(event: str, args: tuple[Any, ...]) -> None:
    if event != "socket.connect":
        return
    sock, address = args
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    host = str(address[0]).split("%")[0]
    if not ipaddress.ip_address(host).is_loopback:
        raise PermissionError(f"tests only connect to loopback, not {host}")


_hook: list[Callable[[str, tuple[Any, ...]], None]] = []
if not _hook:  # audit hooks cannot be removed: install once per process
    _hook.append(_loopback_only)
    sys.addaudithook(_loopback_only)

# Every host below means 127.0.0.1 to the socket layer: unguarded, a request would reach the
# loopback receiver (the control test shows it does).
NUMERIC_LOOPBACK = [
    "2130706433",
    "0177.0.0.1",
    "127.1",
    "017700000001",
    "0x7f000001",
    "0x7f.0.0.1",
    "0x7f.1",
    "127.0.0.1.",
    "[::ffff:127.0.0.1]",
]
# Not loopback: refused before any connection (the audit hook would fail a connection attempt).
ELSEWHERE = {
    "2852039166": "169.254.169.254 is a link-local address",
    "0251.0376.0251.0376": "169.254.169.254 is a link-local address",
    "100.100.100.200": "carrier-grade NAT",
    "100.64.0.1": "carrier-grade NAT",
    "[fec0::1]": "site-local",
    "[2002:a9fe:a9fe::1]": "wraps 169.254.169.254 (6to4)",
    "[2002:7f00:1::1]": "wraps 127.0.0.1 (6to4)",
    "[2002:a00:1::1]": "wraps 10.0.0.1 (6to4)",
    "[64:ff9b::a9fe:a9fe]": "wraps 169.254.169.254 (NAT64)",
    "[64:ff9b::7f00:1]": "wraps 127.0.0.1 (NAT64)",
    "[2001:0:4136:e378:8000:63bf:80ff:fffe]": "wraps 127.0.0.1 (Teredo client)",
    "[::7f00:1]": "wraps 127.0.0.1 (IPv4-compatible)",
    "[::ffff:169.254.169.254]": "wraps 169.254.169.254 (IPv4-mapped)",
    "[fd00::1]": "private",
    "198.18.0.1": "private",
    "0.1.2.3": "private",
    "224.0.0.1": "multicast",
    "1.2.3.4.5": "numeric host that is not a valid address",
}


@pytest.mark.parametrize("host", NUMERIC_LOOPBACK)
def test_numeric_loopback_forms_are_refused(host: str) -> None:
    with pytest.raises(TargetRefused, match=r"127\.0\.0\.1.* a loopback address"):
        check_literal_target(f"http://{host}:8080/hook")


@pytest.mark.parametrize(("host", "why"), ELSEWHERE.items())
def test_non_public_and_wrapped_forms_are_refused(host: str, why: str) -> None:
    with pytest.raises(TargetRefused, match="refused") as refused:
        check_literal_target(f"https://{host}/hook")
    assert why in str(refused.value)


@pytest.mark.parametrize(
    "host", ["8.8.8.8", "134744072", "[2606:4700::1111]", "[2002:808:808::1]", "example.com"]
)
def test_public_addresses_and_names_pass_the_literal_check(host: str) -> None:
    check_literal_target(f"https://{host}/hook")


async def test_the_resolver_refuses_names_resolving_to_loopback() -> None:
    resolver = GuardedResolver()
    try:
        with pytest.raises(TargetRefused, match=r"localhost refused: .*loopback"):
            await resolver.resolve("localhost", 80)
    finally:
        await resolver.close()


def _delivery(url: str, secret: str = "whsec_" + "A" * 32) -> ClaimedDelivery:
    return ClaimedDelivery(
        id=uuid4(),
        endpoint_id=uuid4(),
        project_id=uuid4(),
        environment=Environment.PROD,
        attempts=0,
        retry_base=0,
        url=url,
        secret=secret,
        event_id=uuid4(),
        event_type="test.ping",
        payload={},
        event_created_at=datetime.now(UTC),
    )


def _port(receiver: Receiver) -> int:
    return int(receiver.url.rsplit(":", 1)[1].split("/")[0])


async def test_the_sender_refuses_each_form_and_says_why(receiver: Receiver) -> None:
    port = _port(receiver)
    async with Sender(worker_settings(allow_private_targets=False)) as sender:
        for host in [*NUMERIC_LOOPBACK, *ELSEWHERE]:
            response = await sender.send(
                _delivery(f"http://{host}:{port}/hook", receiver.secret), "{}"
            )
            assert response.status_code is None, host
            assert response.error is not None and "refused" in response.error, host
    assert receiver.arrived == receiver.bad_signatures == []


async def test_unguarded_the_numeric_forms_lead_to_the_receiver(receiver: Receiver) -> None:
    # The control: unguarded, these URLs reach the loopback receiver, unless the HTTP client
    # refuses the form itself (aiohttp 3.14 rejects non-canonical decimal forms; older releases
    # connected). The guard must not depend on which.
    port = _port(receiver)
    reached: list[str] = []
    async with Sender(worker_settings(allow_private_targets=True)) as sender:
        for host in NUMERIC_LOOPBACK:
            before = len(receiver.arrived)
            response = await sender.send(
                _delivery(f"http://{host}:{port}/hook", receiver.secret), "{}"
            )
            if len(receiver.arrived) > before:
                assert response.status_code == 200
                reached.append(host)
            else:
                assert response.error is not None and "refused" not in response.error, host
    assert {"0x7f000001", "0x7f.0.0.1", "0x7f.1"} <= set(reached)


async def test_a_running_worker_refuses_every_form_and_records_why(
    db: Database, database_url: str, make_project: MakeProject, receiver: Receiver
) -> None:
    port = _port(receiver)
    project = await make_project("prod")
    hosts = [*NUMERIC_LOOPBACK, *ELSEWHERE]
    for host in hosts:
        receiver.url = f"http://{host}:{port}/hook"
        await add_endpoint(db, project, receiver)
    deliveries = await emit_events(db, project)
    assert len(deliveries) == len(hosts)

    async def all_attempted() -> bool:
        return all([await attempt_rows(db, d) for d in deliveries])

    async with running_worker(
        database_url, allow_private_targets=False, retry_schedule_seconds=[600.0]
    ):
        await eventually(all_attempted, what="an attempt of every delivery")

    errors: dict[str, str] = {}
    async with db.as_service() as conn:
        cur = await conn.execute(
            "select w.url, a.error, a.status_code from public.webhook_attempts a"
            " join public.webhook_deliveries d on d.id = a.delivery_id"
            " join public.webhook_endpoints w on w.id = d.endpoint_id"
            " where d.project_id = %s",
            (project,),
        )
        for row in await cur.fetchall():
            assert row["status_code"] is None
            errors[row["url"]] = row["error"]
    assert receiver.arrived == []
    for host in NUMERIC_LOOPBACK:
        assert "127.0.0.1" in errors[f"http://{host}:{port}/hook"], host
        assert "loopback address" in errors[f"http://{host}:{port}/hook"], host
    for host, why in ELSEWHERE.items():
        assert why in errors[f"http://{host}:{port}/hook"], host


async def test_a_worker_process_refuses_the_numeric_forms(
    db: Database,
    database_url: str,
    make_project: MakeProject,
    receiver: Receiver,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    # `python -m worker` itself (every numeric form here means 127.0.0.1: nothing leaves loopback).
    port = _port(receiver)
    project = await make_project("prod")
    for host in NUMERIC_LOOPBACK:
        receiver.url = f"http://{host}:{port}/hook"
        await add_endpoint(db, project, receiver)
    deliveries = await emit_events(db, project)

    async def all_attempted() -> bool:
        return all([await attempt_rows(db, d) for d in deliveries])

    worker = start_worker_process(
        database_url, allow_private_targets=False, retry_schedule_seconds=[600.0]
    )
    processes.append(worker)
    await eventually(all_attempted, what="an attempt of every delivery")
    assert await stop_process(worker) == 0
    assert receiver.arrived == receiver.bad_signatures == []
    for delivery_id in deliveries:
        [attempt] = await attempt_rows(db, delivery_id)
        assert "refused" in attempt["error"] and "127.0.0.1" in attempt["error"]
        assert "a loopback address" in attempt["error"]
