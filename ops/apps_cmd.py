"""`parity apps diff APP FROM TO [--json]`: the parity report of two environments of an app, on
DATABASE_URL as the service role. APP is the app's id, or its name when only one app has it."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from shared import apps, parity
from shared.db import Database
from shared.environment import Environment
from shared.errors import InvalidInput, NotFound, ParityError
from shared.settings import PlatformSettings

_MARKS = {"drift": "!", "policy": " ", "environment-specific": "~"}


def register(commands: Any) -> None:
    """Add the `apps` command and its subcommands to `parity`'s subparsers."""
    group = commands.add_parser("apps", help="apps: the parity report of two environments")
    actions = group.add_subparsers(dest="apps_command", required=True)
    diff = actions.add_parser("diff", help="every difference between two environments of an app")
    diff.add_argument("app", help="the app's id, or its name")
    choices = [env.value for env in Environment]
    diff.add_argument("source", metavar="FROM", choices=choices, help="dev, staging or prod")
    diff.add_argument("target", metavar="TO", choices=choices, help="dev, staging or prod")
    diff.add_argument("--json", action="store_true", help='{"differences": [...]}, for scripts')


def render(app: apps.App, source: str, target: str, found: list[parity.Difference]) -> str:
    """The report as text: one line per difference, drift marked `!`, environment-specific `~`."""
    lines = [f"{app.name} ({app.id}): {source} -> {target}, {len(found)} differences"]
    width = max((len(d.field) for d in found), default=0)
    for d in found:
        promotable = "  (promotable)" if d.promotable else ""
        lines.append(
            f"{_MARKS[d.klass]} {d.klass:<20} {d.field:<{width}}  "
            f"{json.dumps(d.source)} -> {json.dumps(d.target)}{promotable}"
        )
    return "\n".join(lines)


async def _diff(db: Database, args: argparse.Namespace) -> str:
    source, target = Environment(args.source), Environment(args.target)
    async with db.as_service() as conn:
        found = await apps.find_apps(conn, args.app)
        if not found:
            raise NotFound(f"no app has the id or name {args.app!r}")
        if len(found) > 1:
            raise InvalidInput(
                f"{len(found)} apps are named {args.app!r}",
                hint="Name the app by its id: " + ", ".join(str(a.id) for a in found),
            )
        differences = await parity.report(conn, found[0].id, source, target)
    if args.json:
        return json.dumps(
            {
                "app": str(found[0].id),
                "from": source.value,
                "to": target.value,
                "differences": [d.as_json() for d in differences],
            },
            indent=2,
        )
    return render(found[0], source.value, target.value, differences)


async def _main(args: argparse.Namespace, url: str) -> str:
    async with Database(url, min_size=1, max_size=1, name="parity-apps") as db:
        return await _diff(db, args)


def run(args: argparse.Namespace) -> int:
    """Run the parsed `apps` command; 0 on success, 1 with a message on a refusal."""
    settings = PlatformSettings()
    if not settings.database_url:
        print("error: DATABASE_URL is not set", file=sys.stderr)
        return 2
    try:
        print(asyncio.run(_main(args, settings.database_url)))
    except ParityError as exc:
        hint = f" ({exc.hint})" if exc.hint else ""
        print(f"error: {exc.message}{hint}", file=sys.stderr)
        return 1
    return 0
