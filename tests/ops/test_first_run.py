"""A first run without surprises: migration output in order and without the CLI's prompt, one clear
message (no traceback) for a database without Supabase's roles, demo keys whose revocation is
said plainly, and `parity` commands that only adopt a `make run` that is still running."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from ops import database, up
from ops.demo import seed_demo_counting
from shared.db import Database
from tests.gateway.conftest import register_token

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def empty_database(admin_url: str) -> Iterator[str]:
    """A plain Postgres database: no Supabase roles' schema, no migrations."""
    name = database.unique_name("parity_plain")
    url = database.create_database(admin_url, name)
    try:
        yield url
    finally:
        database.drop_database(admin_url, name)


def test_migration_output_comes_in_order_without_the_prompt(empty_database: str) -> None:
    database.bootstrap(empty_database)
    output = database.push_migrations(empty_database)
    lines = output.splitlines()
    assert lines[0].startswith("Connecting to")
    assert lines[-1] == "Finished supabase db push."
    assert "Migrations to apply:" in lines
    applying = [line for line in lines if line.startswith("Applying migration")]
    assert len(applying) == len(list((database.SUPABASE_DIR / "migrations").glob("*.sql")))
    assert lines.index("Migrations to apply:") < lines.index(applying[0])
    assert "[Y/n]" not in output and "Do you want to push" not in output


def _ops(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PARITY_", "RUN_"))}
    return subprocess.run(
        [sys.executable, "-m", "ops", *args],
        cwd=REPO_ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_database_without_supabase_roles_gets_one_clear_message(
    empty_database: str, tmp_path: Path
) -> None:
    for result in (
        _ops("up", DATABASE_URL=empty_database, RUN_STATE_FILE=str(tmp_path / "run.json")),
        _ops("migrate", "--url", empty_database),
    ):
        assert result.returncode == 2, result.stdout + result.stderr
        assert "Traceback" not in result.stderr
        assert "schema auth" in result.stderr
        assert "parity migrate --bootstrap" in result.stderr
        assert "never on a Supabase project" in result.stderr
    # Nothing was applied.
    with psycopg.connect(empty_database) as conn:
        row = conn.execute("select to_regnamespace('supabase_migrations')").fetchone()
    assert row == (None,)


async def test_demo_keys_of_earlier_runs_are_revoked_and_it_is_said(
    db: Database, capsys: pytest.CaptureFixture[str]
) -> None:
    first, revoked_first = await seed_demo_counting(db)
    second, revoked_second = await seed_demo_counting(db)
    for key in [*first, *second]:
        register_token(key.token)
    assert (revoked_first, revoked_second) == (0, len(first))
    up.print_banner(up.RunSettings(), second, revoked=revoked_second, database_url="x")
    out = capsys.readouterr().out
    assert f"The {len(first)} demo keys printed by earlier runs were revoked" in out
    assert "401 INVALID_API_KEY" in out
    assert all(key.token not in out for key in first)


def test_parity_adopts_only_a_running_make_run(tmp_path: Path) -> None:
    state = tmp_path / "run.json"
    assert up.running_database_url(state) is None
    up.record_running_database(state, "postgresql://postgres@db.example/postgres")
    assert up.running_database_url(state) == "postgresql://postgres@db.example/postgres"
    assert state.stat().st_mode & 0o077 == 0  # the URL may carry a password
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    state.write_text(
        json.dumps({"pid": int(finished.stdout), "database_url": "postgresql://gone/postgres"})
    )
    assert up.running_database_url(state) is None
