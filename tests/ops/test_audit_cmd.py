"""`parity audit` as an operator runs it: every owner's entries, deleted projects' included,
filtered by project, action and time, as lines or JSON lines; and `parity` commands' own changes
are recorded as an operator's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest

from ops.audit_cmd import parse_since
from ops.database import REPO_ROOT
from shared import projects
from shared.db import Database
from tests.conftest import MakeUser


def parity(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PARITY_", "RUN_"))}
    return subprocess.run(
        [sys.executable, "-m", "ops", *args],
        cwd=REPO_ROOT,
        env={**env, "DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_operators_read_every_trail_and_their_commands_are_recorded(
    db: Database, database_url: str, make_user: MakeUser
) -> None:
    alice = await make_user("alice@example.com")
    bob = await make_user("bob@example.com")
    async with db.as_user(alice.id) as conn:
        shop = await projects.create_project(conn, name="shop", environment="prod")
    async with db.as_user(bob.id) as conn:
        lab = await projects.create_project(conn, name="lab", environment="dev")
        await projects.delete_project(conn, lab.id)

    created = parity(database_url, "keys", "create", "--project", str(shop.id), "--name", "ci")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip().splitlines()[-1]

    listed = parity(database_url, "audit", "--json")
    assert listed.returncode == 0, listed.stderr
    entries = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(e["project_name"], e["action"], e["actor_type"]) for e in entries] == [
        ("shop", "api_key.issued", "operator"),
        ("lab", "project.deleted", "user"),
        ("lab", "project.created", "user"),
        ("shop", "project.created", "user"),
    ]
    assert token not in listed.stdout

    one = parity(database_url, "audit", "--project", str(lab.id), "--action", "project.deleted")
    assert one.returncode == 0, one.stderr
    (line,) = one.stdout.splitlines()
    assert "UTC" in line and "lab [dev]" in line and f"user:{bob.id}" in line

    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert parity(database_url, "audit", "--since", later, "--json").stdout == ""
    recent = parity(database_url, "audit", "--since", "1h", "--limit", "1", "--json")
    assert [json.loads(x)["action"] for x in recent.stdout.splitlines()] == ["api_key.issued"]

    refused = parity(database_url, "audit", "--action", "key.stolen")
    assert refused.returncode == 2 and "unknown action 'key.stolen'" in refused.stderr


def test_since_reads_ages_and_times() -> None:
    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    assert parse_since("30m", now=now) == datetime(2026, 12, 1, 11, 30, tzinfo=UTC)
    assert parse_since("7d", now=now) == datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
    assert parse_since("2026-12-01T09:00:00") == datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
    assert parse_since("2026-12-01T09:00:00+01:00").utcoffset() == timedelta(hours=1)
    with pytest.raises(Exception, match="neither a time"):
        parse_since("yesterday")
