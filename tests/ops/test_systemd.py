"""The systemd units in ops/systemd pass `systemd-analyze verify` without a warning, pointed at
this checkout's interpreter (verify checks that the command exists) and the example settings."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
UNITS = REPO_ROOT / "ops" / "systemd"


def test_units_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian: systemd)")
    env_file = tmp_path / "parity.env"
    shutil.copy(UNITS / "parity.env.example", env_file)
    for unit in UNITS.glob("*.service"):
        text = (
            unit.read_text()
            .replace("/opt/parity/.venv/bin/python", sys.executable)
            .replace("/opt/parity", str(REPO_ROOT))
            .replace("/etc/parity/parity.env", str(env_file))
        )
        assert str(env_file) in text and sys.executable in text, unit.name
        (tmp_path / unit.name).write_text(text)
    names = ["parity-gateway.service", "parity-console.service", "parity-worker@1.service"]
    assert {path.name for path in UNITS.glob("*.service")} == {
        "parity-gateway.service",
        "parity-console.service",
        "parity-worker@.service",
    }
    result = subprocess.run(
        [analyze, "verify", *names],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr
