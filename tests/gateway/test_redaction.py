"""Secret tokens are redacted in every encoding they can travel in: percent-encoded (either case
of hex, every character or only some), form-encoded, JSON-escaped, and inside base64 `Basic`
credentials. Real issued tokens are sent in each encoding, in the query, headers and bodies, to a
gateway process; its log file is then scanned for every encoding sent."""

from __future__ import annotations

import base64
import signal
from pathlib import Path
from urllib.parse import quote, unquote, urlencode

import aiohttp

from tests.gateway.conftest import (
    IssueKey,
    Upstream,
    start_gateway_process,
    wait_until_listening,
)


def percent_all(text: str, *, upper: bool) -> str:
    encoded = "".join(f"%{ord(char):02X}" for char in text)
    return encoded if upper else encoded.lower()


def json_escaped_all(text: str, *, upper: bool) -> str:
    escaped = "".join(f"\\u{ord(char):04x}" for char in text)
    return escaped.upper().replace("\\U", "\\u") if upper else escaped


def basic(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def encodings(token: str) -> dict[str, str]:
    """The token as it may appear in a query, a form, a JSON text or a Basic credential."""
    return {
        "percent, upper": percent_all(token, upper=True),
        "percent, lower": percent_all(token, upper=False),
        "percent, underscores": token.replace("_", "%5F", 2).replace("_", "%5f"),
        "percent, quote()": quote(token, safe=""),
        "form": urlencode({"auth": f"Bearer {token}"}).split("=", 1)[1],
        "json, all": json_escaped_all(token, upper=False),
        "json, all upper hex": json_escaped_all(token, upper=True),
        "json, underscores": token.replace("_", "\\u005f"),
        "basic": basic("user", token),
        "basic, token as user": basic(token, ""),
        "basic, url-safe": base64.urlsafe_b64encode(f"u:{token}".encode()).decode(),
    }


async def test_every_encoding_of_real_tokens_is_redacted_from_the_logs(
    database_url: str,
    upstream: Upstream,
    issue_key: IssueKey,
    tmp_path: Path,
    http: aiohttp.ClientSession,
) -> None:
    env = {"DATABASE_URL": database_url, "GATEWAY_UPSTREAM_URL": upstream.url}
    gateway = start_gateway_process(env, tmp_path / "gateway.log")
    sent: dict[str, str] = {}
    try:
        url = await wait_until_listening(gateway)
        dev = await issue_key("dev")  # debug records: headers and bodies, both ways
        prod = await issue_key("prod")  # info lines only
        secrets = [dev.token, prod.token, (await issue_key("staging")).token]
        for secret in secrets:
            for name, encoded in encodings(secret).items():
                sent[f"{name} of {secret[:11]}"] = encoded
                basic_like = name.startswith("basic")
                in_query = f"Basic%20{quote(encoded, safe='')}" if basic_like else encoded
                for seeded in (dev, prod):
                    headers = {
                        "apikey": seeded.token,
                        "X-Note": f"Basic {encoded}" if basic_like else encoded,
                        "Authorization": f"Basic {encoded}",
                    }
                    json_text = f'"Basic {encoded}"' if basic_like else f'"{encoded}"'
                    for content_type, body in (
                        ("application/json", f'{{"note": {json_text}}}'),
                        ("application/json", f'{{"note": {json_text}, "pad": "{"x" * 9000}"}}'),
                        ("application/x-www-form-urlencoded", f"note={in_query}"),
                        ("text/plain", f"note {json_text}"),
                    ):
                        async with http.post(
                            f"{url}/echo?q={in_query}",
                            headers={**headers, "Content-Type": content_type},
                            data=body.encode(),
                        ) as response:
                            assert response.status == 200
    finally:
        gateway.process.send_signal(signal.SIGTERM)
        gateway.process.wait(timeout=20)
    log = gateway.log_file.read_text()
    assert log.count("POST /echo") >= 2 * len(sent) * 4  # every request was logged
    assert "request body=" in log  # with debug records
    for secret in secrets:
        random_part = secret[-38:]
        assert random_part not in log, "a token in clear"
        assert random_part not in unquote(log), "a percent-encoded token"
        assert random_part not in log.replace("\\u005f", "_"), "a JSON-escaped token"
    leaked = [name for name, encoded in sent.items() if encoded in log]
    assert not leaked, f"encodings found in the log: {leaked}"
