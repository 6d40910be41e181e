"""The gateway's own settings (prefix `GATEWAY_`), beside the platform's shared ones."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.metrics import MetricsSettings


class GatewaySettings(MetricsSettings):
    """Settings of `python -m gateway`, with `GATEWAY_METRICS_PORT` and `GATEWAY_METRICS_HOST`
    (metrics, `/healthz` and `/readyz` on a port of their own; unset: off)."""

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
    unknown_key_ttl_seconds: float = Field(
        default=5.0,
        gt=0,
        description="How long a token hash found unknown is answered 401 without a query (a new "
        "key's notification forgets them all at once).",
    )
    unknown_key_max_entries: int = Field(
        default=100_000, ge=1, description="Unknown token hashes remembered at most."
    )
    client_lookup_limit: int = Field(
        default=100,
        ge=0,
        description="Key lookups (tokens neither cached nor known unknown) one client address "
        "may cause per `client_lookup_window_seconds`; past it: 429 before authentication. "
        "0 turns the limit off (behind a proxy every client shares its address).",
    )
    client_lookup_window_seconds: int = Field(default=10, ge=1)
    db_wait_seconds: float = Field(
        default=2.0,
        gt=0,
        le=30,
        description="Longest wait for a database connection (a key lookup when Postgres is "
        "down); past it: 503 DATABASE_UNAVAILABLE.",
    )
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
