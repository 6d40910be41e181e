"""Logging with loguru for every process: readable lines, or JSON lines when configured; and the
redaction helpers that keep secrets out of every record."""

from __future__ import annotations

import atexit
import contextlib
import io
import json
import re
import sys
import threading
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, BinaryIO, Final, Literal
from urllib.parse import parse_qsl, urlencode

from loguru import logger

from shared.keys import SECRET_TOKEN_PATTERN

if TYPE_CHECKING:
    from loguru import Message, Record

REDACTED: Final = "[REDACTED]"

SENSITIVE_HEADERS: Final = frozenset(
    {"authorization", "proxy-authorization", "apikey", "x-api-key", "cookie", "set-cookie"}
)
"""Headers whose whole value is a credential."""

_SECRET_FIELD: Final = re.compile(
    r"pass(word|wd|phrase)?|secret|token|api[-_]?key|apikey|authorization|credential"
    r"|private[-_]?key|signature|session|cookie",
    re.IGNORECASE,
)
"""JSON field names whose values are secrets, wherever they appear in a document."""


def redact_text(text: str) -> str:
    """`text` with every secret API key token (`nm_..._sk_...`) replaced."""
    if "_sk_" not in text:  # the common case costs one substring scan, not a regex
        return text
    return SECRET_TOKEN_PATTERN.sub(REDACTED, text)


def redact_headers(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Headers for a log record: credentials replaced, secret tokens removed from the rest."""
    redacted: dict[str, str] = {}
    for name, value in headers:
        lower = name.lower()
        shown = REDACTED if lower in SENSITIVE_HEADERS else redact_text(value)
        redacted[lower] = f"{redacted[lower]}, {shown}" if lower in redacted else shown
    return redacted


def redact_json(value: Any) -> Any:
    """A JSON document with secret-looking fields replaced and secret tokens removed."""
    if isinstance(value, Mapping):
        return {
            key: REDACTED
            if isinstance(key, str) and _SECRET_FIELD.search(key) and value[key] is not None
            else redact_json(value[key])
            for key in value
        }
    if isinstance(value, list):
        return [redact_json(item) for item in value]
    if isinstance(value, str):
        stripped = value.strip()
        if stripped[:1] in ("{", "[") and stripped[-1:] in ("}", "]"):
            # JSON carried inside a string (an echoed or wrapped payload) hides fields too.
            try:
                inner = json.loads(stripped)
            except ValueError:
                return redact_text(value)
            return json.dumps(redact_json(inner), ensure_ascii=False)
        return redact_text(value)
    return value


def redact_form(text: str) -> str:
    """An `application/x-www-form-urlencoded` body with secret-looking fields replaced."""
    pairs = parse_qsl(text, keep_blank_values=True)
    return urlencode(
        [(key, REDACTED if _SECRET_FIELD.search(key) else value) for key, value in pairs],
        safe="[]",
    )


def _looks_like_text(content_type: str) -> bool:
    kind = content_type.split(";", 1)[0].strip().lower()
    return (
        not kind
        or kind.startswith("text/")
        or kind.endswith(("json", "xml", "javascript"))
        or kind == "application/x-www-form-urlencoded"
    )


def describe_body(body: bytes, content_type: str, *, cap: int) -> str:
    """A body as a log record shows it: redacted text capped at `cap` bytes with a truncation
    marker, or a one-line summary of a binary body."""
    if not body:
        return ""
    if not _looks_like_text(content_type):
        return f"<binary body: {len(body)} bytes, {content_type or 'no content type'}>"
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return f"<binary body: {len(body)} bytes, {content_type or 'no content type'}>"
    kind = content_type.lower()
    if "json" in kind:
        # Not valid JSON after all: shown as text, still redacted below.
        with contextlib.suppress(ValueError):
            text = json.dumps(redact_json(json.loads(text)), ensure_ascii=False)
    elif "x-www-form-urlencoded" in kind:
        text = redact_form(text)
    # Redact before capping, so that a cut cannot leave a token fragment the pattern misses.
    text = redact_text(text)
    encoded = text.encode("utf-8")
    if len(encoded) <= cap:
        return text
    kept = encoded[:cap].decode("utf-8", errors="ignore")
    return f"{kept}…[truncated: {len(encoded)} bytes in all, {cap} shown]"


def _scrub(record: Record) -> None:
    # The last line of defence: whatever a caller passed, no secret token leaves in a message.
    record["message"] = redact_text(record["message"])


_WARNING_NO: Final = logger.level("WARNING").no


class BufferedSink:
    """A sink that writes formatted records to a byte stream without a system call per record.

    loguru flushes a stream after every record, which costs a `write(2)` per request line in the
    gateway. This sink leaves lines in the stream's buffer (as nginx's `access_log ...
    buffer=... flush=...`): it is written when it fills, by a background thread every
    `flush_seconds`, right away for a warning or worse (which carries everything before it
    out), at exit, and by :func:`flush_logs`. The stream's own lock makes the thread's flush
    safe beside writes. A process killed outright loses at most `flush_seconds` of lines.

    It deliberately has no `flush` method: loguru would call it after every record.
    """

    def __init__(self, stream: BinaryIO, *, flush_seconds: float) -> None:
        self._stream = stream
        self._flush_seconds = flush_seconds
        self._stopped = threading.Event()
        threading.Thread(target=self._flush_periodically, name="log-flush", daemon=True).start()

    def write(self, message: Message) -> None:
        self._stream.write(message.encode("utf-8", "backslashreplace"))
        if message.record["level"].no >= _WARNING_NO:
            self.flush_now()

    def isatty(self) -> bool:
        """Lets loguru colour the lines when they go to a terminal, as it does for stderr."""
        return self._stream.isatty()

    def flush_now(self) -> None:
        with contextlib.suppress(ValueError, OSError):  # closed at interpreter exit
            self._stream.flush()

    def stop(self) -> None:
        """Called by loguru when the sink is removed."""
        self._stopped.set()
        self.flush_now()

    def _flush_periodically(self) -> None:
        while not self._stopped.wait(self._flush_seconds):
            self.flush_now()


_buffered: list[BufferedSink] = []
_json_lines = False


def logs_json() -> bool:
    """Whether records leave as JSON lines, which carry a record's `extra` fields: a caller
    with fields worth querying passes them only then, as text lines never show them."""
    return _json_lines


def flush_logs() -> None:
    """Write out what buffered sinks hold (a process about to be killed, a line others wait for)."""
    for sink in _buffered:
        sink.flush_now()


atexit.register(flush_logs)


def configure_logging(
    *,
    level: str = "INFO",
    log_format: Literal["text", "json"] = "text",
    process: str = "",
    buffered: bool = False,
) -> None:
    """Send records at `level` and above to stderr, as text or one JSON object per line.

    `buffered` (a server writing a line per request) writes through a :class:`BufferedSink`
    flushed at least every quarter of a second instead of once per record."""
    global _json_lines
    logger.remove()
    _buffered.clear()
    _json_lines = log_format == "json"
    logger.configure(extra={"process": process}, patcher=_scrub)
    sink: Any = sys.stderr
    if buffered:
        # stderr's own binary layer is unbuffered (a system call per write): give the sink a
        # buffer of its own on the same file descriptor. Lines other code writes straight to
        # stderr may then land up to a flush interval out of order with these.
        stream = io.BufferedWriter(
            io.FileIO(sys.stderr.fileno(), "wb", closefd=False), buffer_size=1 << 16
        )
        sink = BufferedSink(stream, flush_seconds=0.25)
        _buffered.append(sink)
    if log_format == "json":
        logger.add(sink, level=level, serialize=True, backtrace=False, diagnose=False)
    else:
        logger.add(
            sink,
            level=level,
            backtrace=False,
            diagnose=False,
            format="<green>{time:HH:mm:ss.SSS}</green> <level>{level: <7}</level> "
            "<cyan>{extra[process]}</cyan> {message}",
        )
