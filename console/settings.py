"""The console's own settings (prefix `CONSOLE_`); the shared ones come from `PlatformSettings`."""

from __future__ import annotations

from typing import Final, Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_JWT_SECRET: Final = "dev-only-insecure-console-secret-change-me-0123456789"  # noqa: S105
"""The default signing secret: fine on a laptop, never in a deployment (a warning is logged)."""


class ConsoleSettings(BaseSettings):
    """Sign-in, sessions and the dashboard."""

    model_config = SettingsConfigDict(
        env_prefix="CONSOLE_", env_file=".env", extra="ignore", frozen=True
    )

    jwt_secret: str = Field(
        default=DEV_JWT_SECRET,
        min_length=32,
        description="HS256 secret that signs and verifies session JWTs (Supabase's JWT secret "
        "when using Supabase Auth). The default is for local runs only.",
    )
    jwks_url: str | None = Field(
        default=None,
        description="JWKS URL for asymmetric session tokens; defaults to Supabase Auth's when "
        "SUPABASE_URL is set.",
    )
    jwt_audience: str = Field(default="authenticated")
    supabase_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("SUPABASE_URL", "CONSOLE_SUPABASE_URL"),
        description="With an anon key: sign-in goes through Supabase Auth.",
    )
    supabase_anon_key: str | None = Field(
        default=None,
        validation_alias=AliasChoices("SUPABASE_ANON_KEY", "CONSOLE_SUPABASE_ANON_KEY"),
    )
    session_ttl_seconds: int = Field(
        default=3600, ge=60, le=7 * 86_400, description="Lifetime of a local session token."
    )
    cookie_name: str = Field(default="parity_session", pattern=r"^[A-Za-z0-9_\-]{1,64}$")
    cookie_secure: bool = Field(
        default=False, description="Send cookies over HTTPS only (turn on behind TLS)."
    )
    cookie_samesite: Literal["lax", "strict"] = "lax"
    deliveries_page_size: int = Field(default=50, ge=1, le=500)

    @property
    def uses_supabase_auth(self) -> bool:
        return bool(self.supabase_url and self.supabase_anon_key)

    @property
    def effective_jwks_url(self) -> str | None:
        """The JWKS to verify asymmetric tokens with: the configured one, else Supabase Auth's."""
        if self.jwks_url:
            return self.jwks_url
        if self.supabase_url:
            return f"{self.supabase_url.rstrip('/')}/auth/v1/.well-known/jwks.json"
        return None

    @property
    def uses_dev_secret(self) -> bool:
        return self.jwt_secret == DEV_JWT_SECRET
