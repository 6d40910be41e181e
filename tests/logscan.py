"""The suite's secret scan: every loguru record a test process logged (serialised with its extra
fields) and the log files of processes tests started, against every token the suite issued and for
any well-formed secret key (valid checksum) at all, however it got there.

A pytest plugin (loaded by tests/conftest.py). Each process that runs tests scans what it captured
once its tests are done: the only one in a plain run, or each xdist worker, which hands its
findings to the controller in its worker output. Findings fail the run with a failed report of
their own (`SCAN_NODEID`), as does a worker that went down without handing in a scan (what it
logged was not checked)."""

from __future__ import annotations

import threading
from collections.abc import Generator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from loguru import logger

from shared.errors import InvalidApiKey
from shared.keys import SECRET_TOKEN_PATTERN, parse_token
from tests.parallel import is_controller, is_worker

SCAN_NODEID = "tests/logscan.py::secret scan of every captured log line"
WORKER_OUTPUT_KEY = "secret_scan"
TOKEN_START = "nm_"


@dataclass
class SuiteRecords:
    tokens: set[str] = field(default_factory=set)
    lines: list[str] = field(default_factory=list)
    log_files: list[Path] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_line(self, line: str) -> None:
        with self.lock:
            self.lines.append(line)

    def all_lines(self) -> list[str]:
        """The captured records, then every line of the registered log files."""
        with self.lock:
            lines = list(self.lines)
        for path in self.log_files:
            lines.extend(path.read_text(errors="replace").splitlines())
        return lines


SUITE_RECORDS = SuiteRecords()


def well_formed_secrets(line: str) -> list[str]:
    found = []
    for match in SECRET_TOKEN_PATTERN.finditer(line):
        try:
            found.append(parse_token(match.group()).token)
        except InvalidApiKey:
            continue
    return found


def issued_tokens_in(line: str, tokens: set[str], lengths: Iterable[int]) -> list[str]:
    """The issued `tokens` (of the given lengths) found in `line`: every token starts with
    `TOKEN_START`, so only the slices starting there are looked up."""
    found: list[str] = []
    start = line.find(TOKEN_START)
    while start != -1:
        found.extend(line[start : start + n] for n in lengths if line[start : start + n] in tokens)
        start = line.find(TOKEN_START, start + 1)
    return found


def scan(lines: Iterable[str], tokens: set[str]) -> list[str]:
    """One finding per line holding a secret (an issued token or a well-formed secret key): the
    secrets' first characters beside the start of the line, the secrets in it cut short too."""
    lengths = sorted({len(token) for token in tokens})
    if any(not token.startswith(TOKEN_START) for token in tokens):
        raise ValueError(f"issued tokens must start with {TOKEN_START!r}")
    findings = []
    for line in lines:
        if TOKEN_START not in line:
            continue
        found = set(issued_tokens_in(line, tokens, lengths) + well_formed_secrets(line))
        if not found:
            continue
        shown = line
        for token in found:
            shown = shown.replace(token, f"{token[:14]}...")
        short = ", ".join(sorted(f"{token[:14]}..." for token in found))
        findings.append(f"{short} in: {shown[:200]}")
    return findings


@dataclass
class ScanResult:
    """What one test process's scan found (plain data: it travels from worker to controller)."""

    process: str
    lines: int
    tokens: int
    findings: list[str]

    def as_output(self) -> dict[str, Any]:
        return {
            "process": self.process,
            "lines": self.lines,
            "tokens": self.tokens,
            "findings": self.findings,
        }

    @classmethod
    def from_output(cls, output: dict[str, Any]) -> ScanResult:
        return cls(output["process"], output["lines"], output["tokens"], output["findings"])


def scan_this_process(process: str) -> ScanResult:
    lines = SUITE_RECORDS.all_lines()
    tokens = set(SUITE_RECORDS.tokens)
    return ScanResult(process, len(lines), len(tokens), scan(lines, tokens))


# The plugin --------------------------------------------------------------------------------------

_RESULTS = pytest.StashKey[list[ScanResult]]()
_UNSCANNED = pytest.StashKey[list[str]]()
_SINK = pytest.StashKey[int]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_RESULTS] = []
    config.stash[_UNSCANNED] = []
    if not is_controller(config):
        config.stash[_SINK] = logger.add(
            lambda message: SUITE_RECORDS.add_line(str(message)), level="DEBUG", serialize=True
        )


def _finish_scan(config: pytest.Config) -> ScanResult | None:
    """This process's scan, once (its sink is removed first: nothing logged later is missed
    silently, it is simply not captured)."""
    if _SINK not in config.stash:
        return None
    logger.remove(config.stash[_SINK])
    del config.stash[_SINK]
    worker = config.workerinput["workerid"] if is_worker(config) else "main"  # type: ignore[attr-defined]
    return scan_this_process(str(worker))


@pytest.hookimpl(wrapper=True)
def pytest_runtestloop(session: pytest.Session) -> Generator[None, object, object]:
    """After every test (and every worker) is done: report what the scans found."""
    try:
        return (yield)
    finally:
        config = session.config
        if not is_worker(config):
            own = _finish_scan(config)
            if own is not None:
                config.stash[_RESULTS].append(own)
            _report(config)


def pytest_sessionfinish(session: pytest.Session) -> None:
    # In an xdist worker this runs before the worker output is sent to the controller.
    config = session.config
    if is_worker(config):
        result = _finish_scan(config)
        if result is not None:
            config.workeroutput[WORKER_OUTPUT_KEY] = result.as_output()  # type: ignore[attr-defined]


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object | None) -> None:
    """Controller side: collect a worker's scan (a worker that crashed has none)."""
    output = getattr(node, "workeroutput", {}).get(WORKER_OUTPUT_KEY)
    config: pytest.Config = node.config
    if output is None:
        config.stash[_UNSCANNED].append(f"{node.gateway.id} ({error or 'no scan handed in'})")
    else:
        config.stash[_RESULTS].append(ScanResult.from_output(output))


def _report(config: pytest.Config) -> None:
    results = config.stash[_RESULTS]
    unscanned = config.stash[_UNSCANNED]
    findings = [finding for result in results for finding in result.findings]
    if not findings and not unscanned:
        return
    text = [f"{len(findings)} captured log line(s) hold a secret:", *findings]
    text += [f"test process {name} went down without scanning its logs" for name in unscanned]
    report = pytest.TestReport(
        nodeid=SCAN_NODEID,
        location=("tests/logscan.py", None, "secret scan of every captured log line"),
        keywords={},
        outcome="failed",
        longrepr="\n".join(text),
        when="call",
    )
    config.hook.pytest_runtest_logreport(report=report)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    results = config.stash.get(_RESULTS, [])
    if not results:
        return
    lines = sum(result.lines for result in results)
    tokens = sum(result.tokens for result in results)
    found = sum(len(result.findings) for result in results)
    terminalreporter.write_line(
        f"secret scan: {lines} captured log lines of {len(results)} test process(es), against"
        f" {tokens} issued tokens and every well-formed secret key: {found} finding(s)"
    )
