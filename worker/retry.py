"""Webhook retry policies: tenacity `stop` and `wait` strategies per environment, evaluated into a
decision the dispatcher stores (`next_attempt_at`), never slept in memory."""

from __future__ import annotations

from dataclasses import dataclass

from tenacity import RetryCallState, Retrying
from tenacity.stop import stop_after_attempt, stop_base, stop_never
from tenacity.wait import wait_base, wait_exponential_jitter

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


def build_policy(environment: Environment | str, settings: WorkerSettings) -> RetryPolicy:
    """The policy for `environment`: its attempt limit comes from the environment config."""
    max_attempts = get_environment_config(environment).max_webhook_attempts
    cap = (
        settings.unbounded_retry_wait_max_seconds
        if max_attempts is None
        else settings.retry_wait_max_seconds
    )
    return RetryPolicy(
        stop=stop_never if max_attempts is None else stop_after_attempt(max_attempts),
        wait=wait_exponential_jitter(
            multiplier=settings.retry_wait_base_seconds,
            max=cap,
            jitter=settings.retry_jitter_seconds,
        ),
        retry_after_max_seconds=settings.retry_after_max_seconds,
    )


def build_policies(settings: WorkerSettings) -> dict[Environment, RetryPolicy]:
    return {env: build_policy(env, settings) for env in Environment}
