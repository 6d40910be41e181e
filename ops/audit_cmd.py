"""`parity audit`: the audit trail of every project, for operators (as the service role, so
entries of every owner and of deleted projects alike), newest first."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from shared import audit
from shared.audit import AuditEntry
from shared.db import Database
from shared.errors import ParityError
from shared.settings import PlatformSettings

_RELATIVE = re.compile(r"^(\d+)([mhd])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days"}


def parse_since(text: str, *, now: datetime | None = None) -> datetime:
    """`30m`, `24h`, `7d` (that long ago), or an ISO 8601 time (UTC unless it says otherwise)."""
    relative = _RELATIVE.match(text.strip())
    if relative:
        amount, unit = relative.groups()
        return (now or datetime.now(UTC)) - timedelta(**{_UNITS[unit]: int(amount)})
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a time (2026-12-01T09:00:00Z) nor an age (30m, 24h, 7d)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _action(text: str) -> str:
    if text not in audit.ACTIONS:
        raise argparse.ArgumentTypeError(
            f"unknown action {text!r}; one of: {', '.join(sorted(audit.ACTIONS))}"
        )
    return text


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {text}")
    return value


def register(commands: Any) -> None:
    """Add `audit` to `parity`'s subparsers."""
    parser = commands.add_parser("audit", help="the audit trail: who changed what, and when")
    parser.add_argument("--project", type=UUID, help="one project's entries (deleted ones too)")
    parser.add_argument("--action", type=_action, help="one action, e.g. api_key.revoked")
    parser.add_argument(
        "--since", type=parse_since, help="entries from then on: 24h, 7d, or 2026-12-01T09:00Z"
    )
    parser.add_argument("--limit", type=_positive_int, default=100, help="most entries shown (100)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")


def render(entry: AuditEntry) -> str:
    """One line: time (UTC), project, actor, action, target, changes."""
    actor = entry.actor_type + (f":{entry.actor_id}" if entry.actor_id else "")
    target = "" if entry.target_type == "project" else f" {entry.target_type}:{entry.target_id}"
    changes = json.dumps(entry.changes, sort_keys=True) if entry.changes else ""
    return (
        f"{entry.at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC  {entry.project_id} {entry.project_name}"
        f" [{entry.project_environment.value}]  {actor}  {entry.action}{target}  {changes}"
    ).rstrip()


async def _main(args: argparse.Namespace, url: str) -> list[AuditEntry]:
    async with (
        Database(url, min_size=1, max_size=1, name="parity-audit", actor="operator") as db,
        db.as_service() as conn,
    ):
        await conn.execute("set local statement_timeout = '30s'")
        return await audit.search(
            conn, project_id=args.project, action=args.action, since=args.since, limit=args.limit
        )


def run(args: argparse.Namespace) -> int:
    """Print the entries; 2 without a database, 1 when they cannot be read."""
    settings = PlatformSettings()
    if not settings.database_url:
        print("error: DATABASE_URL is not set (and no `make run` is up)", file=sys.stderr)
        return 2
    try:
        entries = asyncio.run(_main(args, settings.database_url))
    except ParityError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for entry in entries:
        print(entry.as_json_line() if args.json else render(entry))
    if not entries and not args.json:
        print("no entries", file=sys.stderr)
    return 0
