"""The worker's own settings (`WORKER_` prefix), beside the shared `PlatformSettings`."""

from __future__ import annotations

from typing import Self

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class WorkerSettings(BaseSettings):
    """How the worker paces itself. Built once in `main()` and passed down."""

    model_config = SettingsConfigDict(
        env_prefix="WORKER_", env_file=".env", extra="ignore", frozen=True
    )

    name: str = Field(
        default="", description="Name in leases and heartbeats; empty: hostname and pid."
    )
    log_level: str = Field(default="INFO", pattern="^(TRACE|DEBUG|INFO|WARNING|ERROR)$")
    poll_interval_seconds: float = Field(
        default=5.0, gt=0, description="Polling fallback when no notification wakes the dispatcher."
    )
    sweep_interval_seconds: float = Field(default=10.0, gt=0)
    sweep_batch_size: int = Field(default=500, ge=1, le=10_000)
    heartbeat_interval_seconds: float = Field(default=5.0, gt=0)
    heartbeat_max_age_seconds: float = Field(
        default=30.0, gt=0, description="`--check` accepts heartbeats younger than this."
    )
    lease_seconds: float = Field(
        default=60.0, gt=0, description="How long a claimed delivery stays ours; then claimable."
    )
    batch_size: int = Field(default=200, ge=1, le=10_000)
    concurrency: int = Field(default=50, ge=1, le=1_000, description="HTTP requests in flight.")
    connect_timeout_seconds: float = Field(default=5.0, gt=0)
    request_timeout_seconds: float = Field(default=15.0, gt=0)
    retry_wait_base_seconds: float = Field(
        default=30.0, gt=0, description="Wait before the first retry; doubles with each retry."
    )
    retry_wait_max_seconds: float = Field(
        default=3_600.0, gt=0, description="Longest wait between retries of a bounded policy."
    )
    unbounded_retry_wait_max_seconds: float = Field(
        default=300.0,
        gt=0,
        description="Longest wait where retries never stop (dev): a receiver back is served soon.",
    )
    retry_jitter_seconds: float = Field(default=0.0, ge=0)
    retry_after_max_seconds: float = Field(
        default=3_600.0, ge=0, description="A receiver's Retry-After is honoured up to this."
    )
    response_body_limit: int = Field(default=2_048, ge=0, le=1_000_000)
    allow_private_targets: bool = Field(
        default=False,
        description="Allow loopback/private webhook targets (local runs and tests only).",
    )
    shutdown_grace_seconds: float = Field(
        default=10.0, ge=0, description="In-flight deliveries get this long to finish at stop."
    )
    listen_reconnect_max_seconds: float = Field(default=5.0, gt=0)

    @model_validator(mode="after")
    def _lease_outlasts_a_request(self) -> Self:
        # A lease shorter than a request lets another worker claim (and send) it again mid-flight.
        if self.lease_seconds <= self.request_timeout_seconds:
            raise ValueError(
                "lease_seconds must be longer than request_timeout_seconds"
                f" ({self.lease_seconds:g} <= {self.request_timeout_seconds:g})"
            )
        return self
