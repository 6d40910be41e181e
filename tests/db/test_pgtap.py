"""Runs the pgTAP suites in supabase/tests with pg_prove against a freshly migrated database."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from ops import database


def test_pgtap_suites(database_url: str) -> None:
    if shutil.which("pg_prove") is None:
        pytest.skip("pg_prove not installed (Debian: libtap-parser-sourcehandler-pgtap-perl)")
    suites = sorted(str(p) for p in (database.SUPABASE_DIR / "tests").glob("*.sql"))
    assert suites, "no pgTAP suites found"
    result = subprocess.run(
        ["pg_prove", "--dbname", database_url, "--verbose", *suites],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "All tests successful" in output, output
