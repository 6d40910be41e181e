"""`parity`: operator commands. `parity up` is what `make run` runs."""

from __future__ import annotations

import argparse
import os
import sys

import psycopg

from ops import apps_cmd, audit_cmd, database, keys_cmd, status_cmd, up, worker_cmd
from shared.settings import PlatformSettings


def adopt_running_database() -> None:
    """With DATABASE_URL unset, commands work on the database a running `make run` uses."""
    if PlatformSettings().database_url:
        return
    url = up.running_database_url(up.RunSettings().state_file)
    if url:
        os.environ["DATABASE_URL"] = url


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="parity", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("up", help="run the whole product locally (what `make run` does)")
    migrate = commands.add_parser(
        "migrate",
        help="push the migrations to the database at --url (optionally bootstrap it first)",
    )
    migrate.add_argument("--url", required=True, help="database URL")
    migrate.add_argument(
        "--bootstrap",
        action="store_true",
        help="first recreate Supabase's roles and auth schema (never on a real Supabase project)",
    )
    migrate.add_argument(
        "--lock-retries-total",
        metavar="INTERVAL",
        help="how long each migration keeps trying to take its locks before it gives up and names"
        " the sessions in its way (e.g. 30s, 20min; default 5min)",
    )
    keys_cmd.register(commands)
    apps_cmd.register(commands)
    worker_cmd.register(commands)
    status_cmd.register(commands)
    audit_cmd.register(commands)
    args = parser.parse_args(argv)

    if args.command == "up":
        return up.main()
    adopt_running_database()
    if args.command == "keys":
        return keys_cmd.run(args)
    if args.command == "apps":
        return apps_cmd.run(args)
    if args.command == "migrate":
        try:
            if args.bootstrap:
                database.bootstrap(args.url)
            else:
                database.require_supabase_parts(args.url)
            print(database.push_migrations(args.url, lock_retries_total=args.lock_retries_total))
            print(database.list_migrations(args.url))
        except (database.ProvisioningError, psycopg.Error) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0
    if args.command == "status":
        return status_cmd.run(args)
    if args.command == "audit":
        return audit_cmd.run(args)
    if args.command in {"suspensions", "deliveries"}:
        return worker_cmd.run(args)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
