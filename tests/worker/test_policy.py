"""Retry policies, Retry-After, the SSRF guard's address rules and settings bounds."""

from __future__ import annotations

import asyncio
import ipaddress
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from shared.db import Database
from shared.environment import Environment, get_environment_config
from shared.errors import DatabaseUnavailable, ParityError
from worker.errors import is_transient
from worker.retry import build_policy, schedule_summary
from worker.sender import parse_retry_after, refusal
from worker.settings import WorkerSettings

SETTINGS = WorkerSettings(
    retry_schedule_seconds=(10, 20, 40, 60),
    retry_wait_base_seconds=10,
    unbounded_retry_wait_max_seconds=25,
    retry_after_max_seconds=100,
)


@pytest.mark.parametrize("environment", list(Environment))
def test_the_attempt_budget_comes_from_the_environment_config(environment: Environment) -> None:
    policy = build_policy(environment, SETTINGS)
    limit = get_environment_config(environment).max_webhook_attempts
    decisions = [policy.decide(n) for n in range(1, 60)]
    gave_up = [n for n, d in enumerate(decisions, start=1) if d.give_up]
    if limit is None:
        assert gave_up == []
    else:
        assert gave_up[0] == limit
        assert all(not d.give_up for d in decisions[: limit - 1])


def _spread(policy_env: str, attempt: int, settings: WorkerSettings = SETTINGS) -> list[float]:
    policy = build_policy(policy_env, settings)
    return [policy.decide(attempt).delay_seconds for _ in range(400)]


@pytest.mark.parametrize(
    ("environment", "attempt", "scheduled"),
    [("prod", 1, 10), ("prod", 2, 20), ("prod", 3, 40), ("staging", 5, 60), ("dev", 1, 10)],
)
def test_each_wait_is_drawn_between_half_and_all_of_its_schedule(
    environment: str, attempt: int, scheduled: float
) -> None:
    delays = _spread(environment, attempt)
    assert all(scheduled / 2 <= d <= scheduled for d in delays)
    # Spread over the window, not bunched at one end.
    assert min(delays) < scheduled * 0.6 and max(delays) > scheduled * 0.9


@pytest.mark.parametrize(("environment", "attempt"), [("dev", 3), ("dev", 50), ("staging", 5)])
def test_jitter_stays_effective_at_the_cap(environment: str, attempt: int) -> None:
    cap = 25 if environment == "dev" else 60
    delays = _spread(environment, attempt)
    assert all(cap / 2 <= d <= cap for d in delays)
    assert len(set(delays)) > 390  # no lockstep: practically every retry at its own moment
    assert max(delays) - min(delays) > cap * 0.4


def test_prod_defaults_spread_three_retries_over_hours() -> None:
    defaults = WorkerSettings()
    policy = build_policy("prod", defaults)
    for _ in range(50):
        total = sum(policy.decide(n).delay_seconds for n in (1, 2, 3))
        assert 3_600 <= total <= 3 * 3_600
    assert policy.decide(4).give_up
    summary = schedule_summary(Environment.PROD, defaults)
    assert "3 retries after 60, 1800, 7200 s" in summary


def test_retry_after_lengthens_the_wait_within_bounds_and_never_shortens_it() -> None:
    prod = build_policy("prod", SETTINGS)
    assert prod.decide(1, retry_after=30).delay_seconds == 30
    assert prod.decide(1, retry_after=10_000).delay_seconds == 100
    assert 20 <= prod.decide(3, retry_after=1).delay_seconds <= 40
    assert prod.decide(4, retry_after=30).give_up


def test_retry_after_reads_seconds_and_http_dates() -> None:
    now = datetime(2026, 4, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("120") == 120
    assert parse_retry_after("Wed, 01 Apr 2026 12:01:30 GMT", now=now) == 90
    assert parse_retry_after("Wed, 01 Apr 2026 11:00:00 GMT", now=now) == 0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("10.1.2.3", "private"),
        ("192.168.0.10", "private"),
        ("172.16.5.4", "private"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("224.0.0.1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("240.0.0.1", "reserved"),
        ("93.184.215.14", None),
        ("2606:4700::1111", None),
    ],
)
def test_the_ssrf_guard_refuses_non_public_addresses(address: str, why: str | None) -> None:
    reason = refusal(ipaddress.ip_address(address))
    if why is None:
        assert reason is None
    else:
        assert reason is not None and why in reason


@pytest.mark.parametrize(
    "field", ["concurrency", "batch_size", "lease_seconds", "poll_interval_seconds"]
)
def test_settings_refuse_out_of_range_values(field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        WorkerSettings.model_validate({field: 0})


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"lease_seconds": 10, "request_timeout_seconds": 10}, "WORKER_LEASE_SECONDS must be"),
        ({"concurrency": 100, "batch_size": 50}, "WORKER_CONCURRENCY cannot exceed"),
        (
            {"heartbeat_interval_seconds": 30, "heartbeat_max_age_seconds": 30},
            "WORKER_HEARTBEAT_MAX_AGE_SECONDS must be longer",
        ),
    ],
)
def test_settings_that_cannot_work_together_are_refused(
    settings: dict[str, float], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        WorkerSettings.model_validate(settings)


def test_the_held_limit_fits_the_lease() -> None:
    # At the defaults with a 30 s timeout, 200 held would mean the last 100 start after 60 s.
    assert WorkerSettings(request_timeout_seconds=30).held_limit == 100
    assert WorkerSettings().held_limit == 200


async def test_deadlocks_and_outages_are_transient_other_errors_are_not(db: Database) -> None:
    async with db.as_service() as conn:
        await conn.execute("set role postgres")
        await conn.execute("create table public.pair (id int primary key)")
        await conn.execute("insert into public.pair values (1), (2)")
        await conn.execute("grant update, select on public.pair to service_role")
    first_locked, second_locked = asyncio.Event(), asyncio.Event()

    async def lock(first: int, second: int, mine: asyncio.Event, theirs: asyncio.Event) -> None:
        async with db.as_service() as conn:
            await conn.execute("update public.pair set id = id where id = %s", (first,))
            mine.set()
            await theirs.wait()
            await conn.execute("update public.pair set id = id where id = %s", (second,))

    outcomes = await asyncio.gather(
        lock(1, 2, first_locked, second_locked),
        lock(2, 1, second_locked, first_locked),
        return_exceptions=True,
    )
    [deadlock] = [o for o in outcomes if isinstance(o, ParityError)]
    assert is_transient(deadlock)
    assert is_transient(DatabaseUnavailable("gone"))
    with pytest.raises(ParityError) as missing:
        async with db.as_service() as conn:
            await conn.execute("select * from public.no_such_table")
    assert not is_transient(missing.value)
