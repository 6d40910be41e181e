"""The embedded Postgres that `make run` uses when nothing is configured: it starts, takes the
bootstrap and the migrations through the CLI, and serves the schema."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from ops import database


def test_embedded_server_is_migrated_by_the_cli(tmp_path: Path) -> None:
    data_dir = tmp_path / "postgres"
    url = database.start_embedded(data_dir)
    try:
        output = database.prepare(url)
        assert "Applying migration 20260201000000_environments.sql" in output
        assert (
            database.applied_migrations(url)[-1]
            == sorted(
                p.name.split("_", 1)[0]
                for p in (database.SUPABASE_DIR / "migrations").glob("*.sql")
            )[-1]
        )
        with psycopg.connect(url) as conn:
            row = conn.execute("select enum_range(null::public.environment)::text").fetchone()
        assert row == ("{prod,dev,staging}",)
        # Started again on the same folder, it finds the running server and nothing is pending.
        assert database.start_embedded(data_dir) == url
        assert "up to date" in database.push_migrations(url)
    finally:
        database.stop_embedded(data_dir)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=2)
