"""`parity`: operator commands. `parity up` is what `make run` runs."""

from __future__ import annotations

import argparse
import sys

from ops import database, keys_cmd, up, worker_cmd


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
    keys_cmd.register(commands)
    worker_cmd.register(commands)
    args = parser.parse_args(argv)

    if args.command == "up":
        return up.main()
    if args.command == "keys":
        return keys_cmd.run(args)
    if args.command == "migrate":
        if args.bootstrap:
            database.bootstrap(args.url)
        print(database.push_migrations(args.url))
        print(database.list_migrations(args.url))
        return 0
    if args.command in {"suspensions", "deliveries"}:
        return worker_cmd.run(args)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
