"""No captured log line of the whole suite holds a secret: not one of the tokens the suite issued,
nor any well-formed secret key (valid checksum) at all, however it got there."""

from __future__ import annotations

import pytest

from shared.environment import Environment
from shared.errors import InvalidApiKey
from shared.keys import SECRET_TOKEN_PATTERN, KeyKind, generate_token, parse_token
from tests.logscan import SuiteRecords


def well_formed_secrets(line: str) -> list[str]:
    found = []
    for match in SECRET_TOKEN_PATTERN.finditer(line):
        try:
            found.append(parse_token(match.group()).token)
        except InvalidApiKey:
            continue
    return found


def test_no_captured_log_line_holds_a_secret(suite_records: SuiteRecords) -> None:
    """Runs last (see tests/conftest.py): every loguru record of this session, and the log files
    of the gateway processes tests started, against every token the session issued."""
    lines = list(suite_records.lines)
    for path in suite_records.log_files:
        lines.extend(path.read_text().splitlines())
    if not lines:
        pytest.skip("nothing was logged: this scan checks what the rest of the suite logs")
    issued = [
        (token[:14], line[:200])
        for line in lines
        for token in suite_records.tokens
        if token in line
    ]
    assert issued == []
    assert [
        (secret[:14], line[:200]) for line in lines for secret in well_formed_secrets(line)
    ] == []


def test_the_scan_recognises_a_secret() -> None:
    token = generate_token(Environment.DEV, KeyKind.SECRET).token
    assert well_formed_secrets(f"authorization: Bearer {token}") == [token]
    mistyped = token[:-1] + ("a" if token[-1] != "a" else "b")
    assert well_formed_secrets(mistyped) == []
