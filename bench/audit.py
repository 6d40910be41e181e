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
  each (throughput when the two cores are busy, as under real traffic).

Reported: the median over rounds of keys issued and revoked per second, for each database, and
their ratio (with triggers / without). Goal: every ratio >= 0.9.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit
from uuid import UUID

import psycopg

from ops import database
from shared import apikeys, projects
from shared.db import Database
from shared.keys import KeyKind

GOAL = 0.9
AUDIT_TRIGGERS = ("api_keys_audit", "api_keys_audit_update")


HEADERS = {"x-forwarded-for": "192.0.2.1", "user-agent": "bench"}


@dataclass
class Target:
    name: str
    url: str
    users: list[tuple[UUID, UUID]] = field(default_factory=list)
    """(user id, project id), one per client."""
    issued: dict[int, list[float]] = field(default_factory=dict)
    revoked: dict[int, list[float]] = field(default_factory=dict)
    entries: int = 0


async def prepare(target: Target, clients: int) -> None:
    """`clients` users with a project each (the project's creation is audited on both: the
    reference's triggers on projects stay on)."""
    with psycopg.connect(target.url, autocommit=True) as conn:
        rows = conn.execute(
            "insert into auth.users (email) select 'bench' || n || '@example.com'"
            " from generate_series(1, %s) as n returning id",
            (clients,),
        ).fetchall()
    async with Database(target.url, min_size=1, max_size=1) as db:
        for (user_id,) in rows:
            async with db.as_user(user_id, headers=HEADERS) as conn:
                project = await projects.create_project(conn, name="bench", environment="dev")
            target.users.append((user_id, project.id))


async def client(
    db: Database, user_id: UUID, project_id: UUID, keys: int, issued: list[UUID]
) -> None:
    """N keys issued, each in its own transaction as the console runs it."""
    for _ in range(keys):
        async with db.as_user(user_id, headers=HEADERS) as conn:
            key = await apikeys.create_key(conn, project_id, KeyKind.SECRET)
        issued.append(key.key.id)


async def revoker(db: Database, user_id: UUID, key_ids: list[UUID]) -> None:
    for key_id in key_ids:
        async with db.as_user(user_id, headers=HEADERS) as conn:
            await apikeys.revoke_key(conn, key_id)


async def round_of(db: Database, target: Target, keys: int, clients: int) -> None:
    """`clients` users at once, each issuing N keys and then revoking them; keys per second of
    all clients together."""
    users = target.users[:clients]
    ids: list[list[UUID]] = [[] for _ in users]
    started = time.perf_counter()
    await asyncio.gather(
        *(client(db, u, p, keys, mine) for (u, p), mine in zip(users, ids, strict=True))
    )
    target.issued.setdefault(clients, []).append(clients * keys / (time.perf_counter() - started))
    started = time.perf_counter()
    await asyncio.gather(*(revoker(db, u, mine) for (u, _), mine in zip(users, ids, strict=True)))
    target.revoked.setdefault(clients, []).append(clients * keys / (time.perf_counter() - started))


async def measure(targets: list[Target], rounds: int, keys: int, loads: list[int]) -> None:
    dbs = [Database(t.url, min_size=max(loads), max_size=max(loads)) for t in targets]
    for db in dbs:
        await db.open()
    try:
        for clients in loads:
            # A warm-up round each (connections, plans, caches), not counted.
            for db, target in zip(dbs, targets, strict=True):
                await round_of(db, target, keys, clients)
                target.issued[clients].clear()
                target.revoked[clients].clear()
            for n in range(rounds):
                order = list(zip(dbs, targets, strict=True))
                for db, target in order if n % 2 == 0 else reversed(order):
                    await round_of(db, target, keys, clients)
    finally:
        for db in dbs:
            await db.close()
    for target in targets:
        with psycopg.connect(target.url) as conn:
            row = conn.execute("select count(*) from public.audit_log").fetchone()
            target.entries = row[0] if row else 0


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
            asyncio.run(measure(targets, rounds, keys, loads))
    audited, reference = targets
    print(f"{rounds} rounds each, alternating, of {keys} keys per client issued then revoked")
    met = True
    for clients in loads:
        for what in ("issued", "revoked"):
            mine = statistics.median(getattr(audited, what)[clients])
            theirs = statistics.median(getattr(reference, what)[clients])
            ratio = mine / theirs
            met = met and ratio >= GOAL
            print(
                f"{clients} client(s), keys {what}/s: {mine:,.0f} with the audit triggers,"
                f" {theirs:,.0f} without: ratio {ratio:.3f}"
            )
    print(
        f"audit entries written: {audited.entries:,} with the triggers,"
        f" {reference.entries:,} without"
    )
    # Exactly one entry per key issued and per key revoked (warm-up rounds included), beside
    # each project's creation; none for keys on the reference.
    written = sum(2 * keys * clients * (rounds + 1) for clients in loads)
    assert audited.entries == written + len(audited.users), (audited.entries, written)
    assert reference.entries == len(reference.users)
    print(f"goal: every ratio >= {GOAL}: {'met' if met else 'NOT met'}")
    print(f"load: {os.getloadavg()[0]:.1f} (1 min)")
    return 1 if args.check and not met else 0


if __name__ == "__main__":
    raise SystemExit(main())
