"""The suite's secret scan (tests/logscan.py) can fail: it finds issued tokens and well-formed
secret keys in captured records and in registered log files, in a plain run and in every xdist
worker, and a finding fails the run."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from shared.environment import Environment
from shared.keys import KeyKind, generate_token
from tests.logscan import SCAN_NODEID, scan, well_formed_secrets

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_the_scan_recognises_a_secret() -> None:
    token = generate_token(Environment.DEV, KeyKind.SECRET).token
    assert well_formed_secrets(f"authorization: Bearer {token}") == [token]
    mistyped = token[:-1] + ("a" if token[-1] != "a" else "b")
    assert well_formed_secrets(mistyped) == []


def test_the_scan_finds_issued_tokens_anywhere_in_a_line() -> None:
    publishable = generate_token(Environment.PROD, KeyKind.PUBLISHABLE).token
    staging = generate_token(Environment.STAGING, KeyKind.PUBLISHABLE).token
    unissued = generate_token(Environment.PROD, KeyKind.PUBLISHABLE).token
    lines = [
        f'{{"text": "key={publishable}&x=1"}}',
        f"nm_nm_{staging}",
        f"{unissued} is well-formed but publishable and not issued",
        f"a fragment {publishable[:-1]}",
        "nothing here",
    ]
    findings = scan(lines, {publishable, staging})
    assert [f.split("...")[0] for f in findings] == [publishable[:14], staging[:14]]
    assert all(publishable not in f and staging not in f for f in findings)


INNER_TESTS = """
from loguru import logger

from shared.environment import Environment
from shared.keys import KeyKind, generate_token
from tests.logscan import SUITE_RECORDS


def test_logs_an_issued_publishable_key():
    token = generate_token(Environment.PROD, KeyKind.PUBLISHABLE).token
    SUITE_RECORDS.tokens.add(token)
    logger.info("forwarded", query=f"apikey={token}")


def test_logs_a_secret_key_nobody_issued():
    token = generate_token(Environment.DEV, KeyKind.SECRET).token
    logger.debug("request headers {}", "Bearer " + token)


def test_a_process_log_file_holds_a_secret(tmp_path):
    log_file = tmp_path / "gateway.log"
    token = generate_token(Environment.STAGING, KeyKind.SECRET).token
    log_file.write_text("Authorization: " + token)
    SUITE_RECORDS.log_files.append(log_file)


def test_logs_nothing_secret():
    logger.info("a clean line about nm_live_sk_")
"""


PLUGINS = ("-p", "xdist.plugin", "-p", "tests.parallel", "-p", "tests.logscan")


@pytest.fixture
def inner(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A separate pytest run (its own process) with the scan plugin and the project importable."""
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])
    )
    monkeypatch.delenv("PARITY_REQUIRE_SERVICES", raising=False)
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")  # only the plugins it needs
    pytester.makepyfile(test_inner=textwrap.dedent(INNER_TESTS))
    return pytester


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["one process", "two xdist workers"])
def test_a_secret_logged_in_any_test_process_fails_the_run(
    inner: pytest.Pytester, workers: list[str]
) -> None:
    result = inner.runpytest_subprocess(*PLUGINS, *workers)
    result.assert_outcomes(passed=4, failed=1)
    output = result.stdout.str()
    assert f"FAILED {SCAN_NODEID}" in output
    assert "3 captured log line(s) hold a secret" in output
    assert "3 finding(s)" in output
    for label in ("nm_live_pk_", "nm_dev_sk_", "nm_staging_sk_"):
        assert label in output


def test_a_clean_run_passes_and_says_what_was_scanned(inner: pytest.Pytester) -> None:
    result = inner.runpytest_subprocess(*PLUGINS, "-n", "2", "-k", "nothing_secret")
    result.assert_outcomes(passed=1)
    assert "secret scan:" in result.stdout.str()
    assert "0 finding(s)" in result.stdout.str()
