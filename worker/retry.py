"""Webhook retry policies: tenacity `stop` and `wait` strategies per environment, evaluated into a
decision the dispatcher stores (`next_attempt_at`), never slept in memory."""

from __future__ import annotations

from dataclasses import dataclass

from tenacity import RetryCallState, Retrying
from tenacity.stop import stop_after_attempt, stop_base, stop_never
from tenacity.wait import (
    wait_base,
    wait_chain,
    wait_exponential,
    wait_fixed,
    wait_random,
    wait_random_exponential,
)

from shared.environment import Environment, get_environment_config
from worker.settings import WorkerSettings


@dataclass(frozen=True, slots=True)
class RetryDecision:
    """What to do after a failed attempt: retry after `delay_seconds`, or give up."""

    give_up: bool
    delay_seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """One environment's policy, made of tenacity strategies."""

    stop: stop_base
    wait: wait_base
    retry_after_max_seconds: float

    def decide(self, attempts: int, *, retry_after: float | None = None) -> RetryDecision:
        """The decision after `attempts` failed attempts (counted since the last redelivery).

        A receiver's `Retry-After` lengthens the wait, up to `retry_after_max_seconds`; it never
        shortens the policy's own wait.
        """
        state = RetryCallState(_RETRYING, None, (), {})
        state.attempt_number = attempts
        if self.stop(state):
            return RetryDecision(give_up=True)
        delay = float(self.wait(state))
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.retry_after_max_seconds))
        return RetryDecision(give_up=False, delay_seconds=delay)


# RetryCallState wants a retrying object; the strategies we call never look at it.
_RETRYING = Retrying()


def build_wait(bounded: bool, settings: WorkerSettings) -> wait_base:
    """The wait before each retry, with "equal jitter": half of the scheduled wait is fixed, the
    other half random, so retries never bunch, at the cap included.

    Limited retries (prod, staging) follow `retry_schedule_seconds`, spread over hours by default;
    unlimited ones (dev) double from `retry_wait_base_seconds` up to the cap, so a receiver that
    comes back is served within minutes.
    """
    if bounded:
        return wait_chain(
            *(wait_fixed(s / 2) + wait_random(0, s / 2) for s in settings.retry_schedule_seconds)
        )
    half_base = settings.retry_wait_base_seconds / 2
    half_cap = settings.unbounded_retry_wait_max_seconds / 2
    return wait_exponential(multiplier=half_base, max=half_cap) + wait_random_exponential(
        multiplier=half_base, max=half_cap
    )


def build_policy(environment: Environment | str, settings: WorkerSettings) -> RetryPolicy:
    """The policy for `environment`: its attempt limit comes from the environment config."""
    max_attempts = get_environment_config(environment).max_webhook_attempts
    return RetryPolicy(
        stop=stop_never if max_attempts is None else stop_after_attempt(max_attempts),
        wait=build_wait(max_attempts is not None, settings),
        retry_after_max_seconds=settings.retry_after_max_seconds,
    )


def build_policies(settings: WorkerSettings) -> dict[Environment, RetryPolicy]:
    return {env: build_policy(env, settings) for env in Environment}


def schedule_summary(environment: Environment, settings: WorkerSettings) -> str:
    """The retry schedule of `environment` in words, for the start-up log."""
    max_retries = get_environment_config(environment).max_webhook_retries
    if max_retries is None:
        return (
            f"{environment.value}: retries without limit, from"
            f" {settings.retry_wait_base_seconds:g} s doubling to"
            f" {settings.unbounded_retry_wait_max_seconds:g} s"
        )
    schedule = settings.retry_schedule_seconds
    waits = [schedule[min(n, len(schedule) - 1)] for n in range(max_retries)]
    return (
        f"{environment.value}: {max_retries} retries after"
        f" {', '.join(f'{w:g}' for w in waits)} s (half fixed, half random),"
        f" giving up {sum(waits) / 2:g} to {sum(waits):g} s after the first attempt"
    )
