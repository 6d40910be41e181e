"""What the final log scan reads: every secret token the suite issued and every log line it
captured (loguru records in the test process, and the log files of processes tests started)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

SCAN_TEST = "test_no_captured_log_line_holds_a_secret"


@dataclass
class SuiteRecords:
    tokens: set[str] = field(default_factory=set)
    lines: list[str] = field(default_factory=list)
    log_files: list[Path] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_line(self, line: str) -> None:
        with self.lock:
            self.lines.append(line)


SUITE_RECORDS = SuiteRecords()
