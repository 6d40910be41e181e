"""US-004: the limit is the base limit times the environment's multiplier, counted exactly."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest

from gateway.ratelimit import MemoryWindows, RedisWindows
from shared.environment import get_environment_config
from tests.gateway.conftest import (
    IssueKey,
    RateLimitHeaders,
    StartGateway,
    bearer,
    edit_as_superuser,
    rate_limit_headers,
)
from tests.gateway.test_processes import REDIS_URL, redis_prefix

BASE = 3

__all__ = ["redis_prefix"]  # the fixture, used by name below


async def requests_before_first_429(
    http: aiohttp.ClientSession, url: str, token: str, ceiling: int
) -> int:
    """Sequential requests until the first 429 (at most `ceiling`); how many succeeded."""
    for sent in range(ceiling):
        async with http.get(url, headers=bearer(token)) as response:
            limits = rate_limit_headers(response.headers)
            assert (limits.quota, limits.remaining) == (limits.x_limit, limits.x_remaining)
            assert 1 <= limits.reset_after <= limits.window
            if response.status == 429:
                assert limits.remaining == 0
                assert int(response.headers["Retry-After"]) == limits.reset_after
                return sent
            assert response.status == 200
            assert limits.remaining == limits.quota - sent - 1
    raise AssertionError(f"no 429 after {ceiling} requests")


@pytest.mark.parametrize(("environment", "expected"), [("prod", 3), ("staging", 15), ("dev", 30)])
async def test_counting_exactly_per_environment(
    start_gateway: StartGateway,
    http: aiohttp.ClientSession,
    issue_key: IssueKey,
    environment: str,
    expected: int,
) -> None:
    assert expected == BASE * get_environment_config(environment).rate_limit_multiplier
    gateway = await start_gateway(platform={"default_rate_limit": BASE})
    seeded = await issue_key(environment)
    count = await requests_before_first_429(http, gateway.url, seeded.token, expected + 5)
    assert count == expected


async def test_project_override_is_multiplied_and_budgets_are_per_project(
    start_gateway: StartGateway, http: aiohttp.ClientSession, issue_key: IssueKey
) -> None:
    gateway = await start_gateway(platform={"default_rate_limit": BASE})
    custom = await issue_key("staging", rate_limit=2)
    second_key = await issue_key(project=custom.project)
    other = await issue_key("prod")
    # Two keys of one project share its budget: 2 x 5 = 10 in all.
    for _ in range(7):
        async with http.get(gateway.url, headers=bearer(custom.token)) as response:
            assert response.status == 200
    async with http.get(gateway.url, headers=bearer(second_key.token)) as response:
        assert response.headers["X-RateLimit-Limit"] == "10"
        assert response.headers["X-RateLimit-Remaining"] == "2"
    statuses = []
    for _ in range(3):
        async with http.get(gateway.url, headers=bearer(second_key.token)) as response:
            statuses.append(response.status)
    assert statuses == [200, 200, 429]
    assert await requests_before_first_429(http, gateway.url, other.token, 10) == BASE


async def test_a_new_window_brings_a_new_budget(
    start_gateway: StartGateway, http: aiohttp.ClientSession, issue_key: IssueKey
) -> None:
    gateway = await start_gateway(
        platform={"default_rate_limit": 2, "rate_limit_window_seconds": 1}
    )
    seeded = await issue_key("prod")
    first = await requests_before_first_429(http, gateway.url, seeded.token, 5)
    await asyncio.sleep(1.1)  # the window ends (not an assertion on time: it waits it out)
    second = await requests_before_first_429(http, gateway.url, seeded.token, 5)
    assert (first, second) == (2, 2)


async def test_every_answer_to_an_identified_key_carries_the_budget_refusals_included(
    start_gateway: StartGateway,
    http: aiohttp.ClientSession,
    issue_key: IssueKey,
    database_url: str,
) -> None:
    """Refusals that are not the limiter's (a publishable key writing, a suspended project, a
    body too large) show the project's budget without spending it; an unidentified key (401)
    shows none. Headers are parsed as structured fields (httpapi draft -10)."""
    gateway = await start_gateway(
        platform={"default_rate_limit": 5}, gateway={"max_request_body_bytes": 10}
    )
    pk = await issue_key("prod", "pk")

    async def answer(method: str, token: str, **kwargs: Any) -> tuple[int, RateLimitHeaders]:
        async with http.request(method, gateway.url, headers=bearer(token), **kwargs) as response:
            return response.status, rate_limit_headers(response.headers)

    status, first = await answer("GET", pk.token)
    assert (status, first.policy, first.quota, first.window) == (200, "default", 5, 60)
    assert first.remaining == 4
    status, refused = await answer("POST", pk.token, json={"a": 1})  # PUBLISHABLE_KEY_READ_ONLY
    assert (status, refused.quota, refused.remaining) == (403, 5, 4)  # shown, not spent
    assert 1 <= refused.reset_after <= 60 and refused.x_reset >= int(time.time())
    status, _ = await answer("GET", pk.token, data=b"x" * 100)  # REQUEST_TOO_LARGE, counted
    assert status == 413
    await edit_as_superuser(
        database_url,
        ("update public.projects set status = 'suspended' where id = %s", (pk.project.id,)),
    )
    expected = 3
    for _ in range(40):
        status, suspended = await answer("GET", pk.token)
        if status == 403:
            assert suspended.remaining == expected  # the refusal spent nothing
            break
        expected = suspended.remaining  # served before the suspension arrived: spent one
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the suspension never reached the gateway")
    async with http.get(gateway.url, headers=bearer(pk.token[:-1] + "x")) as response:
        assert response.status == 401
        assert not {"RateLimit", "RateLimit-Policy", "X-RateLimit-Limit"} & set(response.headers)


async def test_memory_windows_count_exactly_across_a_reset_and_sweep_idle_keys() -> None:
    now = [1000.0]
    windows = MemoryWindows(clock=lambda: now[0], sweep_seconds=15)
    assert [await windows.hit("a", 10) for _ in range(3)] == [(1, 1010.0), (2, 1010.0), (3, 1010.0)]
    assert await windows.peek("a") == (3, 1010.0)  # peeking does not count
    assert await windows.hit("b", 10) == (1, 1010.0)
    now[0] = 1009.999
    assert await windows.hit("a", 10) == (4, 1010.0)  # still the same window
    now[0] = 1010.0
    assert await windows.peek("a") == (0, None)
    assert await windows.hit("a", 10) == (1, 1020.0)  # a new window, counted from one
    assert len(windows) == 2  # `b` expired but not swept yet
    now[0] = 1021.0
    await windows.hit("c", 10)  # a hit past the sweep time drops expired windows
    assert len(windows) == 1


async def test_redis_windows_count_exactly_in_batches_across_instances_and_a_reset(
    redis_prefix: str,
) -> None:
    """Two gateways' Redis windows (one prefix) hit one key concurrently: every count from 1 to
    the total is handed out exactly once, batched or not, and a new window starts from one."""
    first = RedisWindows(REDIS_URL, key_prefix=redis_prefix)
    second = RedisWindows(REDIS_URL, key_prefix=redis_prefix)
    try:
        hits = await asyncio.gather(
            *(windows.hit("project", 1) for _ in range(60) for windows in (first, second))
        )
        assert sorted(count for count, _ in hits) == list(range(1, 121))
        ends = {round(end, 1) for _, end in hits}
        assert len(ends) <= 2 and 0 < min(ends) - time.time() <= 1.1  # one window's end
        assert (await first.peek("project"))[0] == 120  # peeking does not count
        await asyncio.sleep(1.2)  # the window ends (not a timing assertion: it waits it out)
        assert (await second.peek("project")) == (0, None)
        assert (await first.hit("project", 1))[0] == 1
    finally:
        await first.close()
        await second.close()
