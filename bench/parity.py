"""The parity report of an app with 100 webhook endpoints per environment, and what naming the
endpoints in the migration would have cost instead of naming them lazily.

`python -m bench.parity [--quick] [--check]`. On a fresh, migrated database (on
`BENCH_DATABASE_URL`, else the local server, else an embedded one):

1. Report. A user's app with dev and staging projects of ENDPOINTS endpoints each (a third differ
   in event types, a tenth exist on one side only), keys on both sides and limits on dev. Measured
   sequentially, interleaved round-robin so that every figure shares the same moment of a noisy
   machine, each in its own transaction as the user (RLS), in this process:
   - reference: the transaction alone (`role authenticated`, claims, `select 1`): the floor;
   - the report's reads alone (the projects with key counts, the endpoints of both sides);
   - `parity.report` (app lookup, lazy naming, both reads, the comparison in Python);
   - `parity.promote(..., dry_run=True)` (the same, plus the plan and its fingerprint).
   Target (the report): median <= 50 ms. `--check` exits 1 when missed.
2. Naming endpoints on a table of MIGRATION_ENDPOINTS endpoints (10 per project), in transactions
   rolled back, on the real table with its triggers: what the apps migration does under its
   ACCESS EXCLUSIVE lock (add a column, build the partial unique index over unnamed rows) beside
   what a backfill in the migration would have held the lock for (the same, plus one set-based
   UPDATE naming every row from its URL).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from uuid import UUID

import psycopg

from ops import database
from shared import apps, parity
from shared.db import Database
from shared.environment import Environment

ENDPOINTS = 100
TARGET_MS = 50.0
MIGRATION_ENDPOINTS = 100_000

_READS = parity._PROJECTS, parity._ENDPOINTS  # the report's two reads, measured alone


def seed(url: str) -> tuple[UUID, UUID]:
    """A user and their app: dev and staging with ENDPOINTS endpoints each (as the platform)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "update private.platform_limits set value = 1000"
            " where name = 'webhook_endpoints_per_project'"
        )
        row = conn.execute(
            "insert into auth.users (email) values ('bench@example.com') returning id"
        ).fetchone()
        assert row is not None
        user: UUID = row[0]
    return user, asyncio.run(_seed_app(url, user))


async def _seed_app(url: str, user: UUID) -> UUID:
    async with Database(url, min_size=1, max_size=1) as db, db.as_service() as conn:
        app = await apps.create_app(conn, "bench", create_projects=True, owner_id=user)
        dev, staging = app.environments[Environment.DEV], app.environments[Environment.STAGING]
        for n in range(ENDPOINTS + ENDPOINTS // 10):
            name = f"endpoint-{n}"
            events = ["order.created", "order.paid"]
            await conn.execute(
                "insert into public.webhook_endpoints"
                " (project_id, name, url, description, event_types, secret)"
                " values (%s, %s, %s, %s, %s, 'whsec_YQ==')",
                (dev, name, f"https://dev.example.com/{n}", f"endpoint {n}", events)
                if n < ENDPOINTS
                else (staging, name, f"https://staging.example.com/{n}", "", events),
            )
            if ENDPOINTS // 10 <= n < ENDPOINTS:  # a tenth only in dev, a tenth only in staging
                await conn.execute(
                    "insert into public.webhook_endpoints"
                    " (project_id, name, url, description, event_types, secret)"
                    " values (%s, %s, %s, %s, %s, 'whsec_YQ==')",
                    (
                        staging,
                        name,
                        f"https://staging.example.com/{n}",
                        f"endpoint {n}",
                        events[:1] if n % 3 == 0 else events,
                    ),
                )
        for project, kind in ((dev, "sk"), (dev, "pk"), (staging, "sk")):
            await conn.execute("select public.issue_api_key(%s, %s)", (project, kind))
        await conn.execute("update public.projects set rate_limit = 6000 where id = %s", (dev,))
    return app.id


Probe = Callable[[], Awaitable[None]]


async def measure_report(url: str, user: UUID, app_id: UUID, rounds: int) -> dict[str, list[float]]:
    dev, staging = Environment.DEV, Environment.STAGING
    async with Database(url, min_size=1, max_size=1) as db:
        async with db.as_user(user) as conn:
            found = await parity.report(conn, app_id, dev, staging)
            ids = [
                pid
                for pid in (await apps.get_app(conn, app_id)).environments.values()
                if pid is not None
            ]
        drift = [d for d in found if d.klass == "drift"]
        # A tenth missing on each side, a third of the shared ones differing, limits and keys.
        assert len(drift) >= ENDPOINTS // 5 + ENDPOINTS // 4, len(drift)

        async def floor() -> None:
            async with db.as_user(user) as conn:
                await conn.execute("select 1")

        async def reads() -> None:
            async with db.as_user(user) as conn:
                for query in _READS:
                    await (await conn.execute(query, (ids,))).fetchall()

        async def report() -> None:
            async with db.as_user(user) as conn:
                await parity.report(conn, app_id, dev, staging)

        async def dry_run() -> None:
            async with db.as_user(user) as conn:
                await parity.promote(conn, app_id, dev, staging, dry_run=True, include_limits=True)

        probes: dict[str, Probe] = {
            "transaction as the user (reference)": floor,
            "the report's reads alone": reads,
            "parity.report": report,
            "promotion dry run (plan + fingerprint)": dry_run,
        }
        samples: dict[str, list[float]] = {name: [] for name in probes}
        for n in range(rounds + rounds // 10):
            for name, probe in probes.items():
                started = time.perf_counter()
                await probe()
                if n >= rounds // 10:  # the first tenth warms up
                    samples[name].append((time.perf_counter() - started) * 1000)
    return samples


_LOCKED_LAZY = """
alter table public.webhook_endpoints add column bench_name text;
create unique index bench_name_key on public.webhook_endpoints (project_id, bench_name)
    where bench_name is not null;
"""
_BACKFILL = """
with derived as (
    select e.id, private.endpoint_name_from_url(e.url) as base,
           row_number() over (partition by e.project_id, private.endpoint_name_from_url(e.url)
                              order by e.created_at, e.id) as nth
      from public.webhook_endpoints as e)
update public.webhook_endpoints as e
   set bench_name = case when derived.nth = 1 then derived.base
                         else derived.base || '-' || left(replace(e.id::text, '-', ''), 8) end
  from derived where derived.id = e.id
"""


def measure_migration(url: str, endpoints: int) -> dict[str, float]:
    """Seconds under ACCESS EXCLUSIVE for the lazy naming and for a backfill, side by side."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "insert into public.projects (owner_id, name)"
            " select (select id from auth.users limit 1), 'm' || n"
            " from generate_series(1, %s) as n",
            (endpoints // 10,),
        )
        conn.execute(
            "insert into public.webhook_endpoints (project_id, url, secret)"
            " select p.id, 'https://hooks' || (n % 7) || '.example.com/orders/' || (n % 3),"
            " 'whsec_YQ==' from public.projects as p, generate_series(1, 10) as n"
            " where p.name like 'm%%'"
        )
        conn.execute("vacuum analyze public.webhook_endpoints")
        timings: dict[str, float] = {}
        for label, statements in (
            ("lazy (what the migration does)", [_LOCKED_LAZY]),
            ("backfill in the migration", [_LOCKED_LAZY, _BACKFILL]),
        ):
            with conn.transaction(force_rollback=True):
                started = time.perf_counter()
                for statement in statements:
                    conn.execute(statement)
                timings[label] = time.perf_counter() - started
    return timings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.parity", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run)")
    parser.add_argument("--check", action="store_true", help="exit 1 when the target is missed")
    args = parser.parse_args(argv)
    rounds = 30 if args.quick else 200
    migration_endpoints = MIGRATION_ENDPOINTS // 5 if args.quick else MIGRATION_ENDPOINTS

    admin = database.server_url(
        os.environ.get("BENCH_DATABASE_URL"), database.DATA_DIR / "bench-postgres"
    )
    with database.scratch_database(admin, "parity_bench_parity") as url:
        user, app_id = seed(url)
        samples = asyncio.run(measure_report(url, user, app_id, rounds))
        migration = measure_migration(url, migration_endpoints)

    medians = {name: statistics.median(values) for name, values in samples.items()}
    reference = next(iter(medians.values()))
    print(f"parity report, {ENDPOINTS} endpoints per environment, {rounds} rounds, interleaved")
    print(f"{'what':42} {'median ms':>10} {'p90 ms':>8} {'x reference':>12}")
    for name, values in samples.items():
        p90 = statistics.quantiles(values, n=10)[-1]
        print(f"{name:42} {medians[name]:10.2f} {p90:8.2f} {medians[name] / reference:12.1f}")
    print(f"\nnaming {migration_endpoints:,} existing endpoints: seconds under ACCESS EXCLUSIVE")
    lazy = migration["lazy (what the migration does)"]
    for name, seconds in migration.items():
        print(f"{name:42} {seconds:10.3f} s {seconds / lazy:8.1f}x")
    report_ms = medians["parity.report"]
    met = report_ms <= TARGET_MS
    print(f"target: report median {report_ms:.2f} <= {TARGET_MS} ms: {'met' if met else 'MISSED'}")
    return 1 if args.check and not met else 0


if __name__ == "__main__":
    sys.exit(main())
