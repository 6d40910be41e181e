"""Every refusal of the gateway, over real HTTP: its status, its code and a message to act on."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
from multidict import CIMultiDictProxy

from shared.environment import Environment
from shared.keys import KeyKind, generate_token
from tests.gateway.conftest import (
    IssueKey,
    StartGateway,
    Upstream,
    bearer,
    closed_port_url,
    edit_as_superuser,
)


async def call(
    http: aiohttp.ClientSession, method: str, url: str, **kwargs: Any
) -> tuple[int, dict[str, Any], CIMultiDictProxy[str]]:
    async with http.request(method, url, **kwargs) as response:
        return response.status, await response.json(), response.headers


def assert_error(status: int, body: dict[str, Any], expected_status: int, code: str) -> str:
    assert status == expected_status, body
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code
    message: str = body["error"]["message"]
    assert len(message) > 20
    return message


async def test_missing_malformed_and_mistyped_keys_are_401(
    start_gateway: StartGateway, http: aiohttp.ClientSession, issue_key: IssueKey
) -> None:
    gateway = await start_gateway()
    good = await issue_key("prod")
    mistyped = good.token[:20] + ("A" if good.token[20] != "A" else "B") + good.token[21:]
    cases = {
        "missing": ({}, "missing API key"),
        "not bearer": ({"Authorization": f"Basic {good.token}"}, "missing API key"),
        "malformed": (bearer("nm_live_sk_short"), "malformed API key"),
        "malformed apikey header": ({"apikey": "sk_live_123"}, "malformed API key"),
        "checksum": (bearer(mistyped), "checksum failed"),
    }
    for name, (headers, expected) in cases.items():
        status, body, _ = await call(http, "GET", f"{gateway.url}/things", headers=headers)
        message = assert_error(status, body, 401, "INVALID_API_KEY")
        assert expected in message, name


async def test_checksum_failures_are_refused_without_a_database_call(
    start_gateway: StartGateway, http: aiohttp.ClientSession, issue_key: IssueKey
) -> None:
    gateway = await start_gateway()
    good = await issue_key("prod")
    await gateway.app.db.close()  # from here on, any lookup would fail with 503
    mistyped = good.token[:-1] + ("x" if good.token[-1] != "x" else "y")
    status, body, _ = await call(http, "GET", gateway.url, headers=bearer(mistyped))
    assert "checksum failed" in assert_error(status, body, 401, "INVALID_API_KEY")
    # The contrast: a well-formed key needs the database, which is gone.
    status, body, _ = await call(http, "GET", gateway.url, headers=bearer(good.token))
    assert_error(status, body, 503, "DATABASE_UNAVAILABLE")


async def test_unknown_revoked_and_expired_keys_are_401(
    start_gateway: StartGateway,
    http: aiohttp.ClientSession,
    issue_key: IssueKey,
    database_url: str,
) -> None:
    gateway = await start_gateway()
    unknown = generate_token(Environment.PROD, KeyKind.SECRET).token
    revoked = await issue_key("prod")
    expired = await issue_key("dev", expires_at=datetime.now(UTC) + timedelta(days=1))
    await edit_as_superuser(
        database_url,
        (
            "update public.api_keys set status = 'revoked', revoked_at = now() where id = %s",
            (revoked.key_id,),
        ),
        (
            "update public.api_keys set expires_at = now() - interval '1 second' where id = %s",
            (expired.key_id,),
        ),
    )
    for token, expected in [
        (unknown, "unknown API key"),
        (revoked.token, "revoked"),
        (expired.token, "expired"),
    ]:
        status, body, _ = await call(http, "GET", gateway.url, headers={"apikey": token})
        assert expected in assert_error(status, body, 401, "INVALID_API_KEY")


async def test_environment_mismatch_is_403_even_when_the_trigger_was_bypassed(
    start_gateway: StartGateway,
    http: aiohttp.ClientSession,
    issue_key: IssueKey,
    database_url: str,
    upstream: Upstream,
) -> None:
    gateway = await start_gateway()
    seeded = await issue_key("prod")
    status, _, _ = await call(http, "GET", gateway.url, headers=bearer(seeded.token))
    assert status == 200
    # An operator edits the database around the trigger that guards the invariant: the key
    # (and its token) stay prod, the project becomes dev.
    await edit_as_superuser(
        database_url,
        ("alter table public.projects disable trigger projects_enforce_environment_change", ()),
        ("update public.projects set environment = 'dev' where id = %s", (seeded.project.id,)),
        ("alter table public.projects enable trigger projects_enforce_environment_change", ()),
    )
    forwarded = len(upstream.requests)
    message = ""
    for _ in range(40):  # the notification arrives within moments
        status, body, _ = await call(http, "GET", gateway.url, headers=bearer(seeded.token))
        if status != 200:
            message = assert_error(status, body, 403, "ENVIRONMENT_MISMATCH")
            break
        forwarded = len(upstream.requests)
        await asyncio.sleep(0.05)
    assert "prod key cannot be used on a dev project" in message
    assert len(upstream.requests) == forwarded


async def test_suspended_project_is_403(
    start_gateway: StartGateway,
    http: aiohttp.ClientSession,
    issue_key: IssueKey,
    database_url: str,
) -> None:
    gateway = await start_gateway()
    seeded = await issue_key("staging")
    await edit_as_superuser(
        database_url,
        ("update public.projects set status = 'suspended' where id = %s", (seeded.project.id,)),
    )
    status, body, _ = await call(http, "GET", gateway.url, headers=bearer(seeded.token))
    assert "suspended" in assert_error(status, body, 403, "PROJECT_SUSPENDED")


async def test_publishable_keys_read_but_never_write(
    start_gateway: StartGateway,
    http: aiohttp.ClientSession,
    issue_key: IssueKey,
    upstream: Upstream,
) -> None:
    gateway = await start_gateway()
    pk = await issue_key("prod", "pk")
    for method in ("GET", "HEAD", "OPTIONS"):
        async with http.request(method, f"{gateway.url}/items", headers=bearer(pk.token)) as resp:
            assert resp.status == 200, method
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        status, body, _ = await call(
            http, method, f"{gateway.url}/items", headers=bearer(pk.token), json={"a": 1}
        )
        assert "secret (sk) key" in assert_error(status, body, 403, "PUBLISHABLE_KEY_READ_ONLY")
    assert [r["method"] for r in upstream.requests] == ["GET", "HEAD", "OPTIONS"]


async def test_rate_limited_is_429_with_retry_after(
    start_gateway: StartGateway, http: aiohttp.ClientSession, issue_key: IssueKey
) -> None:
    gateway = await start_gateway(platform={"default_rate_limit": 1})
    seeded = await issue_key("prod")
    status, _, _ = await call(http, "GET", gateway.url, headers=bearer(seeded.token))
    assert status == 200
    status, body, headers = await call(http, "GET", gateway.url, headers=bearer(seeded.token))
    message = assert_error(status, body, 429, "RATE_LIMITED")
    assert "rate limit of 1 requests per 60 s" in message
    assert 1 <= int(headers["Retry-After"]) <= 60
    assert headers["X-RateLimit-Remaining"] == "0"


async def test_upstream_down_is_502_and_slow_is_504(
    start_gateway: StartGateway, http: aiohttp.ClientSession, issue_key: IssueKey
) -> None:
    down = await start_gateway(gateway={"upstream_url": closed_port_url()})
    slow = await start_gateway(gateway={"upstream_timeout_seconds": 0.3})
    seeded = await issue_key("prod")
    status, body, _ = await call(http, "GET", f"{down.url}/x", headers=bearer(seeded.token))
    assert "cannot be reached" in assert_error(status, body, 502, "UPSTREAM_UNAVAILABLE")
    status, body, _ = await call(
        http, "GET", f"{slow.url}/slow?seconds=1.5", headers=bearer(seeded.token)
    )
    assert "did not answer in time" in assert_error(status, body, 504, "UPSTREAM_TIMEOUT")


async def test_rate_limiter_storage_down_is_503(
    start_gateway: StartGateway, http: aiohttp.ClientSession, issue_key: IssueKey
) -> None:
    redis_down = closed_port_url().replace("http://", "redis://")
    gateway = await start_gateway(platform={"REDIS_URL": redis_down})
    seeded = await issue_key("prod")
    status, body, _ = await call(http, "GET", gateway.url, headers=bearer(seeded.token))
    assert "cannot be counted" in assert_error(status, body, 503, "RATE_LIMITER_UNAVAILABLE")


async def test_oversized_body_is_413_and_not_forwarded(
    start_gateway: StartGateway,
    http: aiohttp.ClientSession,
    issue_key: IssueKey,
    upstream: Upstream,
) -> None:
    gateway = await start_gateway(gateway={"max_request_body_bytes": 100})
    seeded = await issue_key("dev")
    status, body, _ = await call(
        http, "POST", f"{gateway.url}/up", headers=bearer(seeded.token), data=b"x" * 101
    )
    assert "larger than 100 bytes" in assert_error(status, body, 413, "REQUEST_TOO_LARGE")
    status, _, _ = await call(
        http, "POST", f"{gateway.url}/up", headers=bearer(seeded.token), data=b"x" * 100
    )
    assert status == 200
    assert [len(r["body"]) for r in upstream.requests] == [100]
