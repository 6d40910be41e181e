"""The environment policy: the single place that says how prod, dev and staging behave.

The gateway (rate limits, log level), the worker (auto-suspend, webhook retries) and the console's
help text all read :func:`get_environment_config`; nothing else hard-codes a multiplier, a retry
count or a log level.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Final, Literal

from shared.errors import InvalidEnvironment

LogLevel = Literal["debug", "info"]


class Environment(StrEnum):
    """Where a project runs. The values are the database enum's (`public.environment`)."""

    PROD = "prod"
    DEV = "dev"
    STAGING = "staging"

    @property
    def key_label(self) -> str:
        """The word API key prefixes use: prod keys say `live`, as payment platforms' do."""
        return "live" if self is Environment.PROD else self.value

    @property
    def display_name(self) -> str:
        return _DISPLAY_NAMES[self]

    @classmethod
    def parse(cls, value: Environment | str) -> Environment:
        """The environment named by `value`, or :class:`InvalidEnvironment` saying what is valid."""
        if isinstance(value, Environment):
            return value
        if isinstance(value, str):
            try:
                return cls(value)
            except ValueError:
                pass
        raise InvalidEnvironment(value)


_DISPLAY_NAMES: Final = MappingProxyType(
    {
        Environment.PROD: "Production",
        Environment.DEV: "Development",
        Environment.STAGING: "Staging",
    }
)


@dataclass(frozen=True, slots=True)
class EnvironmentConfig:
    """How the platform behaves for one environment."""

    environment: Environment
    rate_limit_multiplier: int
    auto_suspend_enabled: bool
    log_level: LogLevel
    max_webhook_retries: int | None
    """Retries after the first attempt; ``None`` means retry without limit."""

    @property
    def logs_bodies(self) -> bool:
        """Debug level logs carry full request and response bodies."""
        return self.log_level == "debug"

    @property
    def max_webhook_attempts(self) -> int | None:
        """Attempts in all: the first one plus the retries."""
        return None if self.max_webhook_retries is None else self.max_webhook_retries + 1


_CONFIGS: Final = MappingProxyType(
    {
        Environment.PROD: EnvironmentConfig(
            environment=Environment.PROD,
            rate_limit_multiplier=1,
            auto_suspend_enabled=True,
            log_level="info",
            max_webhook_retries=3,
        ),
        Environment.DEV: EnvironmentConfig(
            environment=Environment.DEV,
            rate_limit_multiplier=10,
            auto_suspend_enabled=False,
            log_level="debug",
            max_webhook_retries=None,
        ),
        Environment.STAGING: EnvironmentConfig(
            environment=Environment.STAGING,
            rate_limit_multiplier=5,
            auto_suspend_enabled=False,
            log_level="debug",
            max_webhook_retries=5,
        ),
    }
)


def get_environment_config(environment: Environment | str) -> EnvironmentConfig:
    """The behaviour of `environment` (the enum or its value: ``"prod"``, ``"dev"``, ``"staging"``).

    Raises :class:`InvalidEnvironment` for anything else, ``"production"`` included.
    """
    return _CONFIGS[Environment.parse(environment)]
