"""Logging with loguru for every process: readable lines, or JSON lines when configured; and the
redaction helpers that keep secrets out of every record."""

from __future__ import annotations

import atexit
import base64
import binascii
import contextlib
import inspect
import io
import json
import logging
import re
import sys
import threading
from collections.abc import Iterable, Mapping
from types import FrameType
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


_PERCENT: Final = "(?:%|%25)"  # percent-encoded once, or twice
_ESCAPE: Final = r"(?:\\+|%5[cC])u00"  # a JSON escape (also escaped again, or in a URL)


def _unit(char: str) -> str:
    """A pattern for `char` as it may travel: itself, percent-encoded (either case of hex, also
    twice), or as a JSON `\\u` escape (also percent-encoded)."""
    code = "".join(f"[{d.lower()}{d.upper()}]" if d.isalpha() else d for d in f"{ord(char):02x}")
    return f"(?:{re.escape(char)}|{_PERCENT}{code}|{_ESCAPE}{code})"


def _word(word: str) -> str:
    return "".join(_unit(char) for char in word)


_ENCODED_SECRET: Final = re.compile(
    _word("nm_")
    + "(?:"
    + "|".join(_word(label) for label in ("live", "dev", "staging"))
    + ")"
    + _word("_sk_")
    + f"(?:[0-9A-Za-z]|{_PERCENT}[0-9A-Fa-f]{{2}}|{_ESCAPE}[0-9A-Fa-f]{{2}}){{20,}}"
)
"""A secret token (or a long enough fragment) with any of its characters percent-encoded (a
query, a form) or JSON-escaped, mixed freely."""

_BASIC: Final = re.compile(
    r"(?i:basic)(?:\s|%20|\+)+(?P<b64>[A-Za-z0-9+/_-]{16,}(?:=|%3[dD]){0,2})"
)
"""`Basic` credentials (base64 of `user:password`) written out anywhere in a text."""


def _redact_basic(match: re.Match[str]) -> str:
    raw = match["b64"].replace("%3D", "=").replace("%3d", "=")
    padded = raw + "=" * (-len(raw) % 4)
    try:
        urlsafe = "-" in raw or "_" in raw
        decoded = (
            base64.urlsafe_b64decode(padded) if urlsafe else base64.b64decode(padded)
        ).decode("latin-1")
    except (binascii.Error, ValueError):
        return match[0]
    if "_sk_" not in decoded and "%" not in decoded:
        return match[0]
    if _ENCODED_SECRET.search(decoded) is None and SECRET_TOKEN_PATTERN.search(decoded) is None:
        return match[0]
    return match[0][: match.start("b64") - match.start()] + REDACTED


def redact_text(text: str) -> str:
    """`text` with every secret API key token (`nm_..._sk_...`) replaced: written out as is,
    percent-encoded in any case (also in forms, where `+` is a space), JSON-escaped, or in
    base64 `Basic` credentials."""
    # The common case costs a few substring scans, not a regex.
    if "_sk_" in text:
        text = SECRET_TOKEN_PATTERN.sub(REDACTED, text)
    if "%" in text or "\\u" in text:
        text = _ENCODED_SECRET.sub(REDACTED, text)
    if "asic" in text or "ASIC" in text:
        text = _BASIC.sub(_redact_basic, text)
    return text


def redact_headers(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Headers for a log record: credentials replaced, secret tokens removed from the rest."""
    redacted: dict[str, str] = {}
    for name, value in headers:
        lower = name.lower()
        shown = REDACTED if lower in SENSITIVE_HEADERS else redact_text(value)
        redacted[lower] = f"{redacted[lower]}, {shown}" if lower in redacted else shown
    return redacted


MAX_JSON_DEPTH: Final = 32
"""Nesting a log record shows of a JSON document; deeper parts are elided."""

ELIDED: Final = "[nested too deep]"


def redact_json(value: Any, depth: int = 0) -> Any:
    """A JSON document with secret-looking fields replaced and secret tokens removed; parts
    nested deeper than MAX_JSON_DEPTH are elided (a record need not show them, and recursion
    must stay bounded whatever the document)."""
    if depth >= MAX_JSON_DEPTH and isinstance(value, Mapping | list):
        return ELIDED
    if isinstance(value, Mapping):
        return {
            key: REDACTED
            if isinstance(key, str) and _SECRET_FIELD.search(key) and value[key] is not None
            else redact_json(value[key], depth + 1)
            for key in value
        }
    if isinstance(value, list):
        return [redact_json(item, depth + 1) for item in value]
    if isinstance(value, str):
        stripped = value.strip()
        if stripped[:1] in ("{", "[") and stripped[-1:] in ("}", "]"):
            # JSON carried inside a string (an echoed or wrapped payload) hides fields too.
            try:
                inner = json.loads(stripped)
            except (ValueError, RecursionError):
                return redact_text(value)
            return json.dumps(redact_json(inner, depth + 1), ensure_ascii=False)
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


_FIELD_IN_TEXT: Final = re.compile(
    r'"(?P<json_key>(?:[^"\\]|\\.)*)"\s*:\s*(?P<json_value>"(?:[^"\\]|\\.)*(?:"|$)|[^,}\]\s]+)'
    r"|(?:^|(?<=&))(?P<form_key>[^=&]*)=(?P<form_value>[^&]*)"
)
"""A JSON member or form field in a text that cannot be parsed whole (a cut-off body)."""

_FRAGMENT_AT_END: Final = re.compile(r"(?:nm|%6[eE]%6[dD]|\\u006[eE]\\u006[dD])[\w%\\]*$")
"""What may be the start of a token where a body was cut off."""


def _redact_field_in_text(match: re.Match[str]) -> str:
    key = match["json_key"] if match["json_key"] is not None else match["form_key"]
    if not key or not _SECRET_FIELD.search(key):
        return match[0]
    if match["json_key"] is not None:
        return f'"{key}": "{REDACTED}"'
    return f"{key}={REDACTED}"


def _binary(body: bytes, content_type: str) -> str:
    return f"<binary body: {len(body)} bytes, {content_type or 'no content type'}>"


def describe_body(body: bytes, content_type: str, *, cap: int) -> str:
    """A body as a log record shows it: redacted text capped at `cap` bytes with a truncation
    marker, or a one-line summary of a binary body.

    The work is bounded by `cap`, whatever the body's size or shape: only the first `cap` bytes
    are ever decoded or searched. A body within the cap is parsed (JSON, forms) and its
    secret-looking fields replaced, nesting elided past MAX_JSON_DEPTH; a longer one is cut
    first, then its fields are found by pattern, and whatever may start a token at the cut is
    removed. Never raises for a body's content."""
    if not body:
        return ""
    if not _looks_like_text(content_type):
        return _binary(body, content_type)
    truncated = len(body) > cap
    kept = body[:cap] if truncated else body
    try:
        text = kept.decode("utf-8")
    except UnicodeDecodeError as exc:
        if not truncated or exc.start < len(kept) - 3:
            return _binary(body, content_type)
        text = kept[: exc.start].decode("utf-8")  # the cut split a character
    kind = content_type.lower()
    if truncated:
        if "json" in kind or "x-www-form-urlencoded" in kind:
            text = _FIELD_IN_TEXT.sub(_redact_field_in_text, text)
        text = _FRAGMENT_AT_END.sub(REDACTED, redact_text(text))
        return f"{text}…[truncated: {len(body)} bytes in all, {cap} shown]"
    if "json" in kind:
        # Not valid JSON after all (or nested past the parser's limit): shown as text, still
        # redacted below.
        with contextlib.suppress(ValueError, RecursionError):
            text = json.dumps(redact_json(json.loads(text)), ensure_ascii=False)
    elif "x-www-form-urlencoded" in kind:
        text = redact_form(text)
    return redact_text(text)


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


class InterceptHandler(logging.Handler):
    """Hands the standard library's records (uvicorn's, asyncio's, warnings) to loguru, so they
    leave in the same format as everything else: one JSON object per line in JSON mode."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        # Report the caller of the standard library's logging, not this handler.
        frame: FrameType | None = inspect.currentframe()
        depth = 0
        while frame is not None and (depth == 0 or frame.f_code.co_filename == logging.__file__):
            frame = frame.f_back
            depth += 1
        logger.opt(depth=depth, exception=record.exc_info).bind(logger=record.name).log(
            level, record.getMessage()
        )


def _intercept_standard_logging() -> None:
    """Route every standard-library logger through loguru (uvicorn must be started with
    `log_config=None`, or it installs handlers of its own), and with them warnings and
    exceptions nothing else caught."""
    logging.basicConfig(handlers=[InterceptHandler()], level=logging.INFO, force=True)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi", "asyncio"):
        named = logging.getLogger(name)
        named.handlers.clear()
        named.propagate = True
    logging.captureWarnings(True)

    def uncaught(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        logger.opt(exception=(kind, value, tb)).critical("uncaught exception")
        flush_logs()

    def uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
        if args.exc_value is not None:
            uncaught(args.exc_type, args.exc_value, args.exc_traceback)

    sys.excepthook = uncaught
    threading.excepthook = uncaught_in_thread


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
    flushed at least every quarter of a second instead of once per record.

    The standard library's loggers (uvicorn, asyncio, warnings) and uncaught exceptions are
    routed through loguru too, so every line of the process has one format."""
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
    _intercept_standard_logging()
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
