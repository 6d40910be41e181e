"""`parity keys create|list|revoke|rotate`: operator commands for API keys, on DATABASE_URL as the
service role. A new token is printed once, on its own line, and never again."""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from shared import apikeys
from shared.apikeys import ApiKey
from shared.db import Database
from shared.errors import ParityError
from shared.settings import PlatformSettings


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, not {text}")
    return value


def _not_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, not {text}")
    return value


def register(commands: Any) -> None:
    """Add the `keys` command and its subcommands to `parity`'s subparsers."""
    keys = commands.add_parser("keys", help="create, list, revoke and rotate API keys")
    actions = keys.add_subparsers(dest="keys_command", required=True)

    create = actions.add_parser("create", help="issue a key; its token is printed once")
    create.add_argument("--project", type=UUID, required=True, help="project id")
    create.add_argument("--kind", choices=["pk", "sk"], default="sk")
    create.add_argument("--name", default="")
    create.add_argument(
        "--expires-in-days", type=_positive, default=None, help="expire after this many days"
    )

    listing = actions.add_parser("list", help="a project's keys (display form only)")
    listing.add_argument("--project", type=UUID, required=True, help="project id")

    revoke = actions.add_parser("revoke", help="revoke a key at once")
    revoke.add_argument("key_id", type=UUID)

    rotate = actions.add_parser(
        "rotate", help="issue a replacement; the old key works for the grace period, then expires"
    )
    rotate.add_argument("key_id", type=UUID)
    rotate.add_argument(
        "--grace-seconds",
        type=_not_negative,
        default=0.0,
        help="how long the old key keeps working (0: revoked at once)",
    )


def _describe(key: ApiKey) -> str:
    expires = key.expires_at.isoformat() if key.expires_at else "never"
    used = key.last_used_at.isoformat() if key.last_used_at else "never"
    return (
        f"{key.id}  {key.display}  {key.kind.value}  {key.environment.value}  {key.status}"
        f"  expires={expires}  last_used={used}  {key.name}"
    )


async def _run(args: argparse.Namespace, db: Database) -> None:
    async with db.as_service() as conn:
        match args.keys_command:
            case "create":
                expires_at = (
                    None
                    if args.expires_in_days is None
                    else datetime.now(UTC) + timedelta(days=args.expires_in_days)
                )
                issued = await apikeys.create_key(
                    conn, args.project, args.kind, name=args.name, expires_at=expires_at
                )
                print(_describe(issued.key))
                print("Token (shown once, store it now):")
                print(issued.token)
            case "list":
                for key in await apikeys.list_keys(conn, args.project):
                    print(_describe(key))
            case "revoke":
                print(_describe(await apikeys.revoke_key(conn, args.key_id)))
            case "rotate":
                issued = await apikeys.rotate_key(
                    conn, args.key_id, grace=timedelta(seconds=args.grace_seconds)
                )
                print(_describe(await apikeys.get_key(conn, args.key_id)))
                print(_describe(issued.key))
                print("Token (shown once, store it now):")
                print(issued.token)


async def _main(args: argparse.Namespace, url: str) -> None:
    async with Database(url, min_size=1, max_size=1, name="parity-keys", actor="operator") as db:
        await _run(args, db)


def run(args: argparse.Namespace) -> int:
    """Run the parsed `keys` command; 0 on success, 1 with a message on a refusal."""
    settings = PlatformSettings()
    if not settings.database_url:
        print("error: DATABASE_URL is not set", file=sys.stderr)
        return 2
    try:
        asyncio.run(_main(args, settings.database_url))
    except ParityError as exc:
        hint = f" ({exc.hint})" if exc.hint else ""
        print(f"error: {exc.message}{hint}", file=sys.stderr)
        return 1
    return 0
