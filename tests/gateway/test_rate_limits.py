"""US-004: the limit is the base limit times the environment's multiplier, counted exactly."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from shared.environment import get_environment_config
from tests.gateway.conftest import IssueKey, StartGateway, bearer, rate_limit_headers

BASE = 3


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
