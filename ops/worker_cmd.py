"""Operator commands for the worker's records: lift a suspension, redeliver a webhook."""

from __future__ import annotations

import argparse
import asyncio
from uuid import UUID

from shared import deliveries, suspensions
from shared.db import Database
from shared.errors import ParityError
from shared.settings import PlatformSettings


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `suspensions lift` and `deliveries redeliver` on the `parity` parser."""
    susp = commands.add_parser("suspensions", help="project suspensions")
    susp_cmds = susp.add_subparsers(dest="action", required=True)
    lift = susp_cmds.add_parser("lift", help="lift a project's suspension: it serves again")
    lift.add_argument("project_id", type=UUID)
    lift.add_argument("--by", required=True, help="who lifts it (recorded on the suspension)")
    lift.add_argument("--reason", default="", help="why (recorded on the suspension)")
    lift.set_defaults(handler=_lift)

    deliv = commands.add_parser("deliveries", help="webhook deliveries")
    deliv_cmds = deliv.add_subparsers(dest="action", required=True)
    redeliver = deliv_cmds.add_parser(
        "redeliver", help="make a finished delivery due again (same webhook-id)"
    )
    redeliver.add_argument("delivery_id", type=UUID)
    redeliver.set_defaults(handler=_redeliver)


def run(args: argparse.Namespace) -> int:
    """Run the command `args` names; print the outcome or the error, return an exit code."""
    settings = PlatformSettings()
    if not settings.database_url:
        print("error: DATABASE_URL is not set")
        return 2
    try:
        message: str = asyncio.run(args.handler(settings.database_url, args))
    except ParityError as exc:
        print(f"error: {exc}")
        return 1
    print(message)
    return 0


def _database(url: str) -> Database:
    """The audit trail names an operator for what these commands change."""
    return Database(url, min_size=1, max_size=1, actor="operator")


async def _lift(url: str, args: argparse.Namespace) -> str:
    async with _database(url) as db, db.as_service() as conn:
        lifted = await suspensions.lift(
            conn, args.project_id, lifted_by=args.by.strip() or "operator", reason=args.reason
        )
    return f"lifted suspension {lifted.id} of project {lifted.project_id}: it serves again"


async def _redeliver(url: str, args: argparse.Namespace) -> str:
    async with _database(url) as db, db.as_service() as conn:
        delivery = await deliveries.redeliver(conn, args.delivery_id)
    return (
        f"delivery {delivery.id} is due again (after {delivery.attempts} attempts;"
        " the receiver sees the same webhook-id)"
    )
