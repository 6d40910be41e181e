"""What the upstream receives: the request as sent, minus the consumed credential, hop-by-hop and
client-supplied identity headers, plus the gateway's identity headers."""

from __future__ import annotations

import aiohttp

from tests.gateway.conftest import (
    IssueKey,
    StartGateway,
    Upstream,
    bearer,
    rate_limit_headers,
)


async def test_request_is_forwarded_with_identity_headers(
    start_gateway: StartGateway,
    http: aiohttp.ClientSession,
    issue_key: IssueKey,
    upstream: Upstream,
) -> None:
    gateway = await start_gateway()
    seeded = await issue_key("staging")
    headers = {
        **bearer(seeded.token),
        "X-Parity-Project-Id": "00000000-0000-0000-0000-000000000000",
        "X-Parity-Environment": "prod",
        "X-Custom": "kept",
        "X-Custom-Hop": "named by Connection, so dropped",
        "Connection": "keep-alive, X-Custom-Hop",
        "Content-Type": "application/json",
    }
    async with http.post(
        f"{gateway.url}/v1/orders/a%2Fb?limit=5&q=x%20y", headers=headers, data=b'{"n": 1}'
    ) as response:
        assert response.status == 200
        assert response.headers["x-upstream"] == "yes"  # upstream response headers come back
        limits = rate_limit_headers(response.headers)
        assert (limits.quota, limits.window) == (3000, 60)  # 600 x staging's 5
        echoed = await response.json()
    seen = upstream.requests[-1]
    assert (seen["method"], seen["body"]) == ("POST", '{"n": 1}')
    assert seen["raw_path"] == "/v1/orders/a%2Fb?limit=5&q=x%20y"  # not re-encoded or decoded
    assert echoed["identity"] == {
        "x-parity-project-id": str(seeded.project.id),
        "x-parity-environment": "staging",
        "x-parity-key-kind": "sk",
        "x-parity-key-id": str(seeded.key_id),
    }
    assert seen["headers"]["x-custom"] == "kept"
    assert "x-custom-hop" not in seen["headers"]
    assert "authorization" not in seen["headers"]  # the key stops at the gateway


async def test_apikey_header_is_consumed_and_a_user_authorization_passes_through(
    start_gateway: StartGateway,
    http: aiohttp.ClientSession,
    issue_key: IssueKey,
    upstream: Upstream,
) -> None:
    gateway = await start_gateway()
    seeded = await issue_key("dev", "pk")
    headers = {"apikey": seeded.token, "Authorization": "Bearer user-jwt"}
    async with http.get(f"{gateway.url}/rest/v1/todos", headers=headers) as response:
        assert response.status == 200
    seen = upstream.requests[-1]["headers"]
    assert "apikey" not in seen
    assert seen["authorization"] == "Bearer user-jwt"
    assert seen["x-parity-key-kind"] == "pk"


async def test_upstream_status_and_binary_body_pass_through(
    start_gateway: StartGateway, http: aiohttp.ClientSession, issue_key: IssueKey
) -> None:
    gateway = await start_gateway()
    seeded = await issue_key("prod")
    async with http.get(f"{gateway.url}/binary", headers=bearer(seeded.token)) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/octet-stream"
        assert await response.read() == bytes(range(256)) * 4


async def test_head_keeps_the_length_a_get_would_have(
    start_gateway: StartGateway, http: aiohttp.ClientSession, issue_key: IssueKey
) -> None:
    gateway = await start_gateway()
    seeded = await issue_key("prod", "pk")
    async with http.get(f"{gateway.url}/binary", headers=bearer(seeded.token)) as response:
        assert response.headers["Content-Length"] == "1024"
    async with http.head(f"{gateway.url}/binary", headers=bearer(seeded.token)) as response:
        assert response.status == 200
        assert response.headers["Content-Length"] == "1024"
        assert await response.read() == b""
