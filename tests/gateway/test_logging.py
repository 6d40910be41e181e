"""US-006: one info line per request everywhere; in dev and staging a debug record with the full
bodies (capped, binary summarised); secrets redacted in every record. The last test scans every
log line the suite captured for every token it issued."""

from __future__ import annotations

import base64
import io
import json
import time
from typing import Any

import aiohttp
from loguru import logger

from shared.logging import (
    ELIDED,
    REDACTED,
    BufferedSink,
    describe_body,
    redact_headers,
    redact_json,
    redact_text,
)
from tests.gateway.conftest import (
    IssueKey,
    StartGateway,
    bearer,
)

MARKER = "request-marker-7f3a"


def records_of(captured: list[dict[str, Any]], project_id: object) -> list[dict[str, Any]]:
    """Records about one project's requests (the info line names it; the debug record carries it
    in the identity headers the upstream echoed)."""
    return [r for r in captured if str(project_id) in r["message"]]


async def test_dev_debug_record_holds_full_bodies_and_prod_records_hold_none(
    start_gateway: StartGateway,
    http: aiohttp.ClientSession,
    issue_key: IssueKey,
    captured: list[dict[str, Any]],
) -> None:
    gateway = await start_gateway()
    dev = await issue_key("dev")
    prod = await issue_key("prod")
    payload = {"note": MARKER * 20, "items": list(range(50))}
    for seeded in (dev, prod):
        async with http.post(
            f"{gateway.url}/orders", headers=bearer(seeded.token), json=payload
        ) as response:
            assert response.status == 200
            echoed = await response.json()

    dev_records = records_of(captured, dev.project.id)
    prod_records = records_of(captured, prod.project.id)
    assert [r["level"] for r in dev_records] == ["INFO", "DEBUG"]
    assert [r["level"] for r in prod_records] == ["INFO"]
    debug = dev_records[1]["message"]
    request_part, response_part = debug.split(" response headers=")
    assert f"request body={json.dumps(payload)}" in request_part  # the full request body
    assert '"method": "POST"' in response_part and '"path": "/orders"' in response_part
    assert f'"x-parity-key-id": "{dev.key_id}"' in response_part  # the full response body
    assert echoed["identity"]["x-parity-key-id"] == str(prod.key_id)
    assert "'authorization': '[REDACTED]'" in request_part
    for record in prod_records:
        assert MARKER not in json.dumps(record, default=str)
        assert "body" not in record["message"]


async def test_bodies_are_capped_with_a_marker_and_binary_is_summarised(
    start_gateway: StartGateway,
    http: aiohttp.ClientSession,
    issue_key: IssueKey,
    captured: list[dict[str, Any]],
) -> None:
    gateway = await start_gateway(gateway={"log_body_max_bytes": 64})
    staging = await issue_key("staging")
    async with http.post(
        f"{gateway.url}/upload",
        headers={**bearer(staging.token), "Content-Type": "text/plain"},
        data="x" * 1000,
    ) as response:
        assert response.status == 200
    async with http.get(f"{gateway.url}/binary", headers=bearer(staging.token)) as response:
        assert response.status == 200
    debug = [r["message"] for r in captured if r["level"] == "DEBUG"]
    assert len(debug) == 2
    assert "request body=" + "x" * 64 + "…[truncated: 1000 bytes in all, 64 shown]" in debug[0]
    assert "x" * 65 not in debug[0]
    assert "response body=<binary body: 1024 bytes, application/octet-stream>" in debug[1]


async def test_secrets_are_redacted_from_headers_bodies_paths_and_cookies(
    start_gateway: StartGateway,
    http: aiohttp.ClientSession,
    issue_key: IssueKey,
    captured: list[dict[str, Any]],
) -> None:
    gateway = await start_gateway()
    dev = await issue_key("dev")
    other = await issue_key("prod")  # a secret sent as data, in every place it could appear
    body = {
        "password": "hunter2-password",
        "nested": {"client_secret": "s3cr3t-value", "ok": "visible"},
        "free_text": f"here is my key {other.token} oops",
    }
    headers = {
        **bearer(dev.token),
        "Cookie": "session=cookie-value-123",
        "X-Forwarded-Note": other.token,
    }
    async with http.post(
        f"{gateway.url}/login?key={other.token}", headers=headers, json=body
    ) as response:
        assert response.status == 200
    text = "\n".join(r["message"] + json.dumps(r, default=str) for r in captured)
    assert "visible" in text  # the record is there...
    for secret in (dev.token, other.token, "hunter2-password", "s3cr3t-value", "cookie-value-123"):
        assert secret not in text  # ...without any secret in it


def test_redaction_helpers() -> None:
    token = "nm_live_sk_" + "a" * 38
    assert redact_text(f"a {token} b") == f"a {REDACTED} b"
    assert redact_text("nm_live_pk_" + "a" * 38) == "nm_live_pk_" + "a" * 38  # pk is public
    assert redact_headers([("Authorization", "Bearer x"), ("APIKEY", "y"), ("X-A", token)]) == {
        "authorization": REDACTED,
        "apikey": REDACTED,
        "x-a": REDACTED,
    }
    assert redact_json({"api_key": "v", "list": [{"token": 1}], "n": None, "k": "v"}) == {
        "api_key": REDACTED,
        "list": [{"token": REDACTED}],
        "n": None,
        "k": "v",
    }
    assert redact_json({"wrapped": '{"password": "p", "a": 1}'}) == {
        "wrapped": '{"password": "[REDACTED]", "a": 1}'
    }
    assert (
        describe_body(
            b"user=ann&password=p&api_key=k", "application/x-www-form-urlencoded", cap=100
        )
        == "user=ann&password=[REDACTED]&api_key=[REDACTED]"
    )
    assert describe_body(b"", "text/plain", cap=10) == ""
    assert describe_body(b"\xff\xfe", "text/plain", cap=10).startswith("<binary body: 2 bytes")
    # A token cut by the cap is redacted first, so no fragment of it survives the cut.
    assert "nm_live_sk_" not in describe_body(f"{'a' * 5}{token}".encode(), "text/plain", cap=20)


def test_buffered_sink_writes_lines_out_on_flush_on_a_warning_and_periodically() -> None:
    """The gateway's sink holds request lines in a buffer instead of a system call each, and
    still writes every one out: on a warning (with everything before it), on `flush_logs`
    (shutdown), and within its flush interval when nothing else happens."""
    raw = io.BytesIO()
    sink = BufferedSink(io.BufferedWriter(raw, buffer_size=1 << 16), flush_seconds=60)
    sink_id = logger.add(sink, level="INFO", format="{message}")
    try:
        logger.info("line one")
        assert raw.getvalue() == b""  # buffered, not written yet
        logger.warning("a warning")
        assert raw.getvalue() == b"line one\na warning\n"
        logger.info("line two")
        sink.flush_now()
        assert raw.getvalue().endswith(b"line two\n")
    finally:
        logger.remove(sink_id)

    raw = io.BytesIO()
    sink = BufferedSink(io.BufferedWriter(raw, buffer_size=1 << 16), flush_seconds=0.05)
    sink_id = logger.add(sink, level="INFO", format="{message}")
    try:
        logger.info("idle afterwards")
        deadline = time.monotonic() + 5
        while raw.getvalue() == b"" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert raw.getvalue() == b"idle afterwards\n"
    finally:
        logger.remove(sink_id)


def test_describe_body_caps_before_parsing_and_redacts_what_it_keeps() -> None:
    token = "nm_live_sk_" + "b" * 38
    # A cut-off JSON body: secret-looking fields found by pattern, also one cut mid-value.
    body = json.dumps({"ok": "visible", "password": "p" * 50, "pad": "x" * 100}).encode()
    shown = describe_body(body, "application/json", cap=60)
    assert "visible" in shown and "ppp" not in shown
    assert shown.endswith(f"…[truncated: {len(body)} bytes in all, 60 shown]")
    cut = describe_body(b'{"a": 1, "api_key": "' + b"k" * 100 + b'"}', "application/json", cap=40)
    assert "kkk" not in cut and REDACTED in cut
    # A form cut off, a multi-byte character split by the cut, a token cut by the cap.
    assert "s3cret" not in describe_body(
        b"a=1&token=s3cret&" + b"b" * 99, "application/x-www-form-urlencoded", cap=20
    )
    assert describe_body("é".encode() * 10, "text/plain", cap=5).startswith("éé…[truncated")
    assert "bbbb" not in describe_body(
        f"{'a' * 20}{token.replace('_', '%5F')}".encode(), "text/plain", cap=40
    )
    # Deep nesting within the cap is elided; past the parser's own limit it is shown as text.
    # Never an error.
    assert ELIDED in describe_body(b"[" * 300 + b"]" * 300, "application/json", cap=4096)
    deepest = describe_body(b"[" * 5000 + b"]" * 5000, "application/json", cap=20_000)
    assert deepest == "[" * 5000 + "]" * 5000


def test_redact_text_finds_tokens_in_every_encoding() -> None:
    token = "nm_staging_sk_" + "c" * 38
    for encoded in (
        token.replace("_", "%5f"),
        "".join(f"%{ord(char):02X}" for char in token),
        token.replace("_", "%255F"),
        token.replace("_", "\\u005F"),
        token.replace("_", "\\\\u005f"),
        token.replace("_", "%5Cu005f"),
        "Basic " + base64.b64encode(f"user:{token}".encode()).decode(),
        "basic%20" + base64.b64encode(f"{token}:".encode()).decode().replace("=", "%3D"),
    ):
        assert "ccccc" not in redact_text(f"x {encoded} y"), encoded
    plain = "Basic " + base64.b64encode(b"user:an-ordinary-password").decode()
    assert redact_text(plain) == plain  # only secret tokens are this function's business
