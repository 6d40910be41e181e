"""The gateway's own settings (prefix `GATEWAY_`), beside the platform's shared ones."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class GatewaySettings(BaseSettings):
    """Settings of `python -m gateway`."""

    model_config = SettingsConfigDict(
        env_prefix="GATEWAY_", env_file=".env", extra="ignore", frozen=True
    )

    upstream_url: str = Field(
        default="http://127.0.0.1:8081",
        description="Where authenticated requests are forwarded (scheme, host, port, base path).",
    )
    connect_timeout_seconds: float = Field(
        default=2.0, gt=0, description="Connecting to the upstream; past it: 502."
    )
    upstream_timeout_seconds: float = Field(
        default=30.0, gt=0, description="Whole upstream exchange; past it: 504."
    )
    max_upstream_connections: int = Field(
        default=512, ge=1, description="Connections the shared upstream client keeps at most."
    )
    key_cache_ttl_seconds: float = Field(
        default=30.0,
        gt=0,
        description="How long a key lookup is trusted without a notification; bounds staleness "
        "when notifications are lost.",
    )
    key_cache_max_entries: int = Field(default=100_000, ge=1)
    usage_flush_interval_seconds: float = Field(
        default=5.0, gt=0, description="How often metered usage is written to Postgres."
    )
    listener_retry_seconds: float = Field(
        default=1.0, gt=0, description="Wait before reconnecting the notification listener."
    )
    max_request_body_bytes: int = Field(
        default=10 * 1024 * 1024,
        ge=0,
        description="Largest request body forwarded; larger ones get 413 REQUEST_TOO_LARGE.",
    )
    log_body_max_bytes: int = Field(
        default=8192, ge=0, description="Body bytes shown by dev and staging debug records."
    )
    redis_key_prefix: str = Field(
        default="parity-gateway",
        min_length=1,
        description="Prefix of rate-limit keys in Redis; replicas sharing a budget share it.",
    )
