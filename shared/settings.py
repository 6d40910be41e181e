"""Platform-wide settings, read from the environment (and a `.env` file) when a process starts.

Each process builds its settings once in its entry point and passes them down; nothing reads the
environment at import time. Process-specific settings live beside each process with their own
prefix (`GATEWAY_`, `WORKER_`, `CONSOLE_`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.redisurl import parse_redis_url


class PlatformSettings(BaseSettings):
    """Settings every process shares."""

    # Errors name the setting and the problem, never the value (URLs carry passwords).
    model_config = SettingsConfigDict(
        env_prefix="PARITY_",
        env_file=".env",
        extra="ignore",
        frozen=True,
        hide_input_in_errors=True,
    )

    database_url: str = Field(
        default="",
        validation_alias=AliasChoices("DATABASE_URL", "PARITY_DATABASE_URL"),
        description="Postgres connection URL. Empty: `make run` starts an embedded Postgres.",
    )
    database_session_url: str = Field(
        default="",
        validation_alias=AliasChoices("DATABASE_SESSION_URL", "PARITY_DATABASE_SESSION_URL"),
        description="A session (direct) connection for LISTEN; empty: DATABASE_URL.",
    )
    db_prepared_statements: bool | None = Field(
        default=None,
        description="psycopg's prepared statements. Unset: off when DATABASE_URL is Supabase's"
        " transaction pooler (port 6543), else on. Set false behind any transaction-mode pooler.",
    )
    redis_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("REDIS_URL", "PARITY_REDIS_URL"),
        description="Redis (or `redis+cluster://host:port,...`) for rate limits shared between"
        " replicas; memory when unset.",
    )
    redis_timeout_seconds: float = Field(
        default=0.45,
        gt=0,
        description="Longest wait for a Redis connection or answer, per attempt.",
    )
    redis_retries: int = Field(
        default=1,
        ge=0,
        le=5,
        description="Attempts after the first when Redis fails (at once, after refreshing a"
        " cluster's slot map): a decision is known within (1 + retries) x the timeout.",
    )
    db_pool_min_size: int = Field(default=1, ge=0)
    db_pool_max_size: int = Field(default=10, ge=1)
    log_format: Literal["text", "json"] = Field(
        default="text", description="`json` writes one JSON object per log line."
    )
    default_rate_limit: int = Field(
        default=600, ge=1, description="Requests per rate-limit window for prod projects."
    )
    rate_limit_window_seconds: int = Field(default=60, ge=1)
    default_request_cap: int = Field(
        default=1_000_000, ge=1, description="Hard cap of requests per cap window."
    )
    cap_window_seconds: int = Field(default=86_400, ge=1)

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value:
            parse_redis_url(value)
        return value or None

    @property
    def session_database_url(self) -> str:
        """Where LISTEN connections go: a transaction pooler cannot hold them."""
        return self.database_session_url or self.database_url
