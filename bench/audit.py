"""What the audit trail's triggers cost: issuing and revoking API keys with them, against the same
without them, side by side in one run.

`python -m bench.audit [--quick] [--rounds N] [--keys N] [--clients N] [--check]`. One freshly
migrated database (on `BENCH_DATABASE_URL`, else the local server, else an embedded one) and a
copy of it whose audit triggers on `api_keys` are disabled (`alter table ... disable trigger`): the
reference. On each, users with a project each. Rounds alternate between the two (ABAB...); in each
round the console's own calls run as those users, one transaction each: `create_key` N times (the
issue_api_key path: the `api_key.issued` entry), then `revoke_key` on those N keys (the
`api_key.revoked` entry). Two loads, each side by side with its reference:

- one client: one user's calls one after another on one connection (each call's own cost);
- several clients (`--clients`, 4): as many users at once, each on its own connection, N keys
  each (throughput when the two cores are busy, as under real traffic);
- the same clients through the console's API, as a customer issues and revokes keys
  (`POST /api/v1/projects/{id}/keys`, `POST /api/v1/keys/{id}/revoke` with a bearer token, one
  keep-alive aiohttp session each): a `python -m console` process per database, its log written to
  a file.

Reported: the median over rounds of keys issued and revoked per second, for each database, and
their ratio (with triggers / without). Goal: every ratio >= 0.9.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit
from uuid import UUID

import aiohttp
import psycopg

from bench.console import SECRET, free_port, start_console
from console.auth import Authenticator
from console.settings import ConsoleSettings
from ops import database
from shared import apikeys, projects
from shared.db import Database
from shared.keys import KeyKind
from shared.users import User

GOAL = 0.9
AUDIT_TRIGGERS = ("api_keys_audit", "api_keys_audit_update")


HEADERS = {"x-forwarded-for": "192.0.2.1", "user-agent": "bench"}


@dataclass
class Target:
    name: str
    url: str
    users: list[tuple[User, UUID]] = field(default_factory=list)
    """(user, project id), one per client."""
    issued: dict[str, list[float]] = field(default_factory=dict)
    revoked: dict[str, list[float]] = field(default_factory=dict)
    entries: int = 0


@dataclass(frozen=True)
class Client:
    """How one client issues and revokes its user's keys: in a transaction as the console runs
    it, or through the console's API."""

    issue: Callable[[], Awaitable[UUID]]
    revoke: Callable[[UUID], Awaitable[None]]


async def prepare(target: Target, clients: int) -> None:
    """`clients` users with a project each (the project's creation is audited on both: the
    reference's triggers on projects stay on)."""
    with psycopg.connect(target.url, autocommit=True) as conn:
        rows = conn.execute(
            "insert into auth.users (email) select 'bench' || n || '@example.com'"
            " from generate_series(1, %s) as n returning id, email",
            (clients,),
        ).fetchall()
    async with Database(target.url, min_size=1, max_size=1) as db:
        for user_id, email in rows:
            async with db.as_user(user_id, headers=HEADERS) as conn:
                project = await projects.create_project(conn, name="bench", environment="dev")
            target.users.append((User(id=user_id, email=email), project.id))


def in_transactions(db: Database, user: User, project_id: UUID) -> Client:
    """Each call its own transaction as the signed-in user, as the console runs it."""

    async def issue() -> UUID:
        async with db.as_user(user.id, headers=HEADERS) as conn:
            key = await apikeys.create_key(conn, project_id, KeyKind.SECRET)
        return key.key.id

    async def revoke(key_id: UUID) -> None:
        async with db.as_user(user.id, headers=HEADERS) as conn:
            await apikeys.revoke_key(conn, key_id)

    return Client(issue, revoke)


def over_api(http: aiohttp.ClientSession, base: str, user: User, project_id: UUID) -> Client:
    """Each call a request to the console's API with the user's bearer token."""
    token = Authenticator(ConsoleSettings(_env_file=None, jwt_secret=SECRET)).issue(user)
    headers = {"Authorization": f"Bearer {token}", **HEADERS}

    async def issue() -> UUID:
        async with http.post(
            f"{base}/api/v1/projects/{project_id}/keys", json={"kind": "sk"}, headers=headers
        ) as response:
            assert response.status == 201, await response.text()
            return UUID((await response.json())["key"]["id"])

    async def revoke(key_id: UUID) -> None:
        async with http.post(f"{base}/api/v1/keys/{key_id}/revoke", headers=headers) as response:
            assert response.status == 200, await response.text()

    return Client(issue, revoke)


async def round_of(clients: list[Client], target: Target, keys: int, load: str) -> None:
    """The clients at once, each issuing N keys and then revoking them; keys per second of all
    clients together."""
    ids: list[list[UUID]] = [[] for _ in clients]

    async def issuing(client: Client, mine: list[UUID]) -> None:
        for _ in range(keys):
            mine.append(await client.issue())

    async def revoking(client: Client, mine: list[UUID]) -> None:
        for key_id in mine:
            await client.revoke(key_id)

    started = time.perf_counter()
    await asyncio.gather(*(issuing(c, mine) for c, mine in zip(clients, ids, strict=True)))
    rate = len(clients) * keys / (time.perf_counter() - started)
    target.issued.setdefault(load, []).append(rate)
    started = time.perf_counter()
    await asyncio.gather(*(revoking(c, mine) for c, mine in zip(clients, ids, strict=True)))
    rate = len(clients) * keys / (time.perf_counter() - started)
    target.revoked.setdefault(load, []).append(rate)


async def alternate(
    sides: list[tuple[Target, list[Client]]], rounds: int, keys: int, load: str
) -> None:
    """A warm-up round on each side (connections, plans, caches; not counted), then `rounds`
    rounds on each, alternating ABBA... so both share the machine's moments."""
    for target, clients in sides:
        await round_of(clients, target, keys, load)
        target.issued[load].clear()
        target.revoked[load].clear()
    for n in range(rounds):
        for target, clients in sides if n % 2 == 0 else reversed(sides):
            await round_of(clients, target, keys, load)


async def measure(
    targets: list[Target], bases: list[str], rounds: int, keys: int, loads: list[int]
) -> list[str]:
    """Every load, in transactions and then over the API (the most clients): the loads' names."""
    names: list[str] = []
    dbs = [Database(t.url, min_size=max(loads), max_size=max(loads)) for t in targets]
    for db in dbs:
        await db.open()
    try:
        for clients in loads:
            name = f"{clients} client(s)"
            sides = [
                (t, [in_transactions(db, u, p) for u, p in t.users[:clients]])
                for db, t in zip(dbs, targets, strict=True)
            ]
            await alternate(sides, rounds, keys, name)
            names.append(name)
    finally:
        for db in dbs:
            await db.close()
    clients = max(loads)
    name = f"{clients} client(s), API"
    async with aiohttp.ClientSession() as http:
        sides = [
            (t, [over_api(http, base, u, p) for u, p in t.users[:clients]])
            for base, t in zip(bases, targets, strict=True)
        ]
        await alternate(sides, rounds, keys, name)
    names.append(name)
    for target in targets:
        with psycopg.connect(target.url) as conn:
            row = conn.execute("select count(*) from public.audit_log").fetchone()
            target.entries = row[0] if row else 0
    return names


def console_process(url: str, log: Path) -> tuple[str, subprocess.Popen[bytes]]:
    """`python -m console` on `url`, on a free loopback port, logging to `log`: its base URL."""
    port = free_port()
    return f"http://127.0.0.1:{port}", start_console(url, port, log=log)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="3 rounds of 100 keys")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per database (7)")
    parser.add_argument("--keys", type=int, default=None, help="keys per round and client (300)")
    parser.add_argument("--clients", type=int, default=4, help="clients of the concurrent load (4)")
    parser.add_argument("--check", action="store_true", help="exit 1 if the goal is missed")
    args = parser.parse_args()
    rounds = args.rounds or (3 if args.quick else 7)
    keys = args.keys or (100 if args.quick else 300)
    loads = sorted({1, args.clients})
    admin_url = database.server_url(
        os.environ.get("BENCH_DATABASE_URL"), database.DATA_DIR / "bench-postgres"
    )
    print(f"load: {os.getloadavg()[0]:.1f} (1 min)", flush=True)
    with database.scratch_database(admin_url, "bench_audit") as audited_url:
        template = urlsplit(audited_url).path.lstrip("/")
        with database.scratch_database(admin_url, "bench_audit_ref", template=template) as ref:
            with psycopg.connect(ref, autocommit=True) as conn:
                for trigger in AUDIT_TRIGGERS:
                    conn.execute(
                        psycopg.sql.SQL("alter table public.api_keys disable trigger {}").format(
                            psycopg.sql.Identifier(trigger)
                        )
                    )
            targets = [Target("with audit triggers", audited_url), Target("without", ref)]
            for target in targets:
                asyncio.run(prepare(target, max(loads)))
            with tempfile.TemporaryDirectory(prefix="bench-audit-") as logs:
                consoles = [
                    console_process(t.url, Path(logs) / f"console-{n}.log")
                    for n, t in enumerate(targets)
                ]
                try:
                    bases = [base for base, _ in consoles]
                    names = asyncio.run(measure(targets, bases, rounds, keys, loads))
                finally:
                    for _, process in consoles:
                        process.terminate()
                        process.wait(timeout=15)
    audited, reference = targets
    print(f"{rounds} rounds each, alternating, of {keys} keys per client issued then revoked")
    met = True
    for name in names:
        for what in ("issued", "revoked"):
            mine = statistics.median(getattr(audited, what)[name])
            theirs = statistics.median(getattr(reference, what)[name])
            ratio = mine / theirs
            met = met and ratio >= GOAL
            print(
                f"{name}, keys {what}/s: {mine:,.0f} with the audit triggers,"
                f" {theirs:,.0f} without: ratio {ratio:.3f}"
            )
    print(
        f"audit entries written: {audited.entries:,} with the triggers,"
        f" {reference.entries:,} without"
    )
    # Exactly one entry per key issued and per key revoked (warm-up rounds included), beside
    # each project's creation; none for keys on the reference.
    written = sum(2 * keys * clients * (rounds + 1) for clients in [*loads, max(loads)])
    assert audited.entries == written + len(audited.users), (audited.entries, written)
    assert reference.entries == len(reference.users)
    print(f"goal: every ratio >= {GOAL}: {'met' if met else 'NOT met'}")
    print(f"load: {os.getloadavg()[0]:.1f} (1 min)")
    return 1 if args.check and not met else 0


if __name__ == "__main__":
    raise SystemExit(main())
