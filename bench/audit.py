"""What the audit trail's triggers cost: issuing and revoking API keys with them, against the same
without them, side by side in one run.

`python -m bench.audit [--quick] [--rounds N] [--keys N] [--check]`. One freshly migrated database
(on `BENCH_DATABASE_URL`, else the local server, else an embedded one) and a copy of it whose
audit triggers on `api_keys` are disabled (`alter table ... disable trigger`): the reference. On
each, a user and a project. Rounds alternate between the two (ABAB...); in each round the console's
own calls run as that user, one transaction each, one after another: `create_key` N times (the
issue_api_key path: the `api_key.issued` entry), then `revoke_key` on those N keys (the
`api_key.revoked` entry). Reported: the median over rounds of keys issued and revoked per second,
for each database, and their ratio (with triggers / without). Goal: both ratios >= 0.9.
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


@dataclass
class Target:
    name: str
    url: str
    user_id: UUID | None = None
    project_id: UUID | None = None
    issued: list[float] = field(default_factory=list)
    revoked: list[float] = field(default_factory=list)
    entries: int = 0


async def prepare(target: Target) -> None:
    with psycopg.connect(target.url, autocommit=True) as conn:
        row = conn.execute(
            "insert into auth.users (email) values ('bench@example.com') returning id"
        ).fetchone()
        assert row is not None
        target.user_id = row[0]
    async with (
        Database(target.url, min_size=1, max_size=1) as db,
        db.as_user(row[0], headers={"x-forwarded-for": "192.0.2.1", "user-agent": "bench"}) as conn,
    ):
        project = await projects.create_project(conn, name="bench", environment="dev")
        target.project_id = project.id


async def round_of(db: Database, target: Target, keys: int) -> None:
    """N keys issued, then revoked, each in its own transaction as the console runs them."""
    assert target.user_id is not None and target.project_id is not None
    headers = {"x-forwarded-for": "192.0.2.1", "user-agent": "bench"}
    ids = []
    started = time.perf_counter()
    for _ in range(keys):
        async with db.as_user(target.user_id, headers=headers) as conn:
            issued = await apikeys.create_key(conn, target.project_id, KeyKind.SECRET)
        ids.append(issued.key.id)
    target.issued.append(keys / (time.perf_counter() - started))
    started = time.perf_counter()
    for key_id in ids:
        async with db.as_user(target.user_id, headers=headers) as conn:
            await apikeys.revoke_key(conn, key_id)
    target.revoked.append(keys / (time.perf_counter() - started))


async def measure(targets: list[Target], rounds: int, keys: int) -> None:
    dbs = [Database(t.url, min_size=1, max_size=1) for t in targets]
    for db in dbs:
        await db.open()
    try:
        # A warm-up round each (connections, plans, caches), not counted.
        for db, target in zip(dbs, targets, strict=True):
            await round_of(db, target, keys)
            target.issued.clear()
            target.revoked.clear()
        for n in range(rounds):
            order = list(zip(dbs, targets, strict=True))
            for db, target in order if n % 2 == 0 else reversed(order):
                await round_of(db, target, keys)
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
    parser.add_argument("--keys", type=int, default=None, help="keys per round (300)")
    parser.add_argument("--check", action="store_true", help="exit 1 if the goal is missed")
    args = parser.parse_args()
    rounds = args.rounds or (3 if args.quick else 7)
    keys = args.keys or (100 if args.quick else 300)
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
                asyncio.run(prepare(target))
            asyncio.run(measure(targets, rounds, keys))
    audited, reference = targets
    print(f"{rounds} rounds each, alternating, of {keys} keys issued then revoked")
    met = True
    for what in ("issued", "revoked"):
        mine = statistics.median(getattr(audited, what))
        theirs = statistics.median(getattr(reference, what))
        ratio = mine / theirs
        met = met and ratio >= GOAL
        print(
            f"keys {what}/s: {mine:,.0f} with the audit triggers, {theirs:,.0f} without:"
            f" ratio {ratio:.3f}"
        )
    print(
        f"audit entries written: {audited.entries:,} with the triggers,"
        f" {reference.entries:,} without"
    )
    assert audited.entries >= 2 * keys * rounds and reference.entries <= 1
    print(f"goal: both ratios >= {GOAL}: {'met' if met else 'NOT met'}")
    print(f"load: {os.getloadavg()[0]:.1f} (1 min)")
    return 1 if args.check and not met else 0


if __name__ == "__main__":
    raise SystemExit(main())
