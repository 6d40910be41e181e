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
        default="",
        description="Name in leases and heartbeats, unique among running workers; empty: hostname"
        " and pid.",
    )
    log_level: str = Field(
        default="INFO",
        pattern="^(TRACE|DEBUG|INFO|WARNING|ERROR)$",
        description="INFO logs failed attempts and sweeps; DEBUG also every success.",
    )
    poll_interval_seconds: float = Field(
        default=5.0, gt=0, description="Polling fallback when no notification wakes the dispatcher."
    )
    sweep_interval_seconds: float = Field(
        default=10.0, gt=0, description="Pause between auto-suspend sweeps."
    )
    sweep_batch_size: int = Field(
        default=500, ge=1, le=10_000, description="Violators acted on per sweep transaction."
    )
    heartbeat_interval_seconds: float = Field(
        default=5.0, gt=0, description="How often the heartbeat row is refreshed."
    )
    audit_retention_days: int = Field(
        default=400,
        ge=1,
        le=36_500,
        description="Audit trail entries older than this many days are deleted by the worker.",
    )
    audit_purge_interval_seconds: float = Field(
        default=3_600.0, gt=0, description="Pause between runs of the audit trail's retention job."
    )
    audit_purge_batch_size: int = Field(
        default=10_000, ge=1, le=100_000, description="Audit entries deleted per transaction."
    )
    heartbeat_max_age_seconds: float = Field(
        default=30.0, gt=0, description="`--check` accepts heartbeats younger than this."
    )
    heartbeat_retention_seconds: float = Field(
        default=3_600.0, gt=0, description="Heartbeat rows of workers silent this long are pruned."
    )
    check_timeout_seconds: float = Field(
        default=3.0,
        gt=0,
        le=60,
        description="`--check` gives the database this long (process start-up comes on top).",
    )
    lease_seconds: float = Field(
        default=60.0, gt=0, description="How long a claimed delivery stays ours; then claimable."
    )
    batch_size: int = Field(
        default=200, ge=1, le=10_000, description="Deliveries leased at once (queued or in flight)."
    )
    record_interval_seconds: float = Field(
        default=0.02,
        ge=0,
        le=1,
        description="Finished attempts are recorded together, at most this long after finishing.",
    )
    concurrency: int = Field(default=50, ge=1, le=1_000, description="HTTP requests in flight.")
    endpoint_concurrency: int = Field(
        default=4,
        ge=1,
        le=1_000,
        description="Requests in flight to one endpoint, across all workers: a slow or hanging"
        " endpoint takes at most this share, never the whole worker.",
    )
    endpoint_prefetch: int = Field(
        default=100,
        ge=1,
        le=10_000,
        description="Deliveries of one fast endpoint (its last attempt took under a second) a"
        " worker may hold while no other worker holds any of that endpoint's: queued in memory,"
        " at most WORKER_ENDPOINT_CONCURRENCY of them in flight, so its next request never waits"
        " for a database round trip. Cut to half the held limit.",
    )
    connect_timeout_seconds: float = Field(
        default=5.0, gt=0, description="Time allowed to connect to a receiver."
    )
    request_timeout_seconds: float = Field(
        default=15.0, gt=0, description="Time allowed for a whole attempt, response included."
    )
    retry_schedule_seconds: tuple[float, ...] = Field(
        default=(60.0, 1_800.0, 7_200.0, 18_000.0),
        min_length=1,
        description="Where retries are limited (prod, staging): the wait before retry 1, 2, ...;"
        " the last repeats. Each wait is drawn between half and all of it (jitter).",
    )
    retry_wait_base_seconds: float = Field(
        default=30.0,
        gt=0,
        description="Where retries never stop (dev): wait before the first retry; doubles with each"
        " retry up to the cap. Each wait is drawn between half and all of it (jitter).",
    )
    unbounded_retry_wait_max_seconds: float = Field(
        default=300.0,
        gt=0,
        description="Longest wait where retries never stop (dev): a receiver back is served soon.",
    )
    retry_after_max_seconds: float = Field(
        default=3_600.0, ge=0, description="A receiver's Retry-After is honoured up to this."
    )
    response_body_limit: int = Field(
        default=2_048, ge=0, le=1_000_000, description="Bytes of a response kept per attempt."
    )
    allow_private_targets: bool = Field(
        default=False,
        description="Allow loopback/private webhook targets (local runs and tests only).",
    )
    shutdown_grace_seconds: float = Field(
        default=10.0, ge=0, description="In-flight deliveries get this long to finish at stop."
    )
    listen_reconnect_max_seconds: float = Field(
        default=5.0, gt=0, description="Longest pause between LISTEN reconnection attempts."
    )

    @model_validator(mode="after")
    def _settings_work_together(self) -> Self:
        problems: list[str] = []
        # A lease shorter than a request lets another worker claim (and send) it again mid-flight.
        if self.lease_seconds <= self.request_timeout_seconds:
            problems.append(
                "WORKER_LEASE_SECONDS must be longer than WORKER_REQUEST_TIMEOUT_SECONDS"
                f" ({self.lease_seconds:g} <= {self.request_timeout_seconds:g})"
            )
        if self.concurrency > self.batch_size:
            problems.append(
                "WORKER_CONCURRENCY cannot exceed WORKER_BATCH_SIZE: senders beyond the batch"
                f" never get work ({self.concurrency} > {self.batch_size})"
            )
        if self.heartbeat_max_age_seconds <= self.heartbeat_interval_seconds:
            problems.append(
                "WORKER_HEARTBEAT_MAX_AGE_SECONDS must be longer than"
                " WORKER_HEARTBEAT_INTERVAL_SECONDS, or --check fails between beats"
                f" ({self.heartbeat_max_age_seconds:g} <= {self.heartbeat_interval_seconds:g})"
            )
        if self.heartbeat_retention_seconds < self.heartbeat_max_age_seconds:
            problems.append(
                "WORKER_HEARTBEAT_RETENTION_SECONDS must be at least"
                " WORKER_HEARTBEAT_MAX_AGE_SECONDS"
            )
        if self.endpoint_prefetch < self.endpoint_concurrency:
            problems.append(
                "WORKER_ENDPOINT_PREFETCH cannot be below WORKER_ENDPOINT_CONCURRENCY"
                f" ({self.endpoint_prefetch} < {self.endpoint_concurrency})"
            )
        if any(wait < 0 for wait in self.retry_schedule_seconds):
            problems.append("WORKER_RETRY_SCHEDULE_SECONDS: waits cannot be negative")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def held_limit(self) -> int:
        """Deliveries held at once that are queued or in flight: the batch, cut to what the
        senders can start before the lease ends even if every request takes the whole timeout
        (leases are also renewed). Finished attempts waiting for the recorder come on top."""
        rounds = max(1, int(self.lease_seconds // self.request_timeout_seconds))
        return min(self.batch_size, self.concurrency * rounds)
