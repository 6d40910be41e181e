"""The console's own settings (prefix `CONSOLE_`); the shared ones come from `PlatformSettings`.

A few defaults depend on whether this is a local run (see :func:`is_local_run`): the built-in
development secret, non-`Secure` cookies and open registration are for local runs only.
:meth:`ConsoleSettings.for_run` fills them in, or refuses a configuration that is unsafe to deploy.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Final, Literal

from limits import parse
from psycopg.conninfo import conninfo_to_dict
from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_JWT_SECRET: Final = "dev-only-insecure-console-secret-change-me-0123456789"  # noqa: S105
"""The signing secret of local runs: public in the source, so refused anywhere else."""

MIB: Final = 1024 * 1024


class UnsafeSettings(ValueError):
    """The settings are not safe outside a local run; the message names the setting to change."""


class ConsoleSettings(BaseSettings):
    """Sign-in, sessions, abuse limits and the dashboard."""

    model_config = SettingsConfigDict(
        env_prefix="CONSOLE_", env_file=".env", extra="ignore", frozen=True
    )

    jwt_secret: str | None = Field(
        default=None,
        min_length=32,
        description="HS256 secret that signs and verifies session JWTs (Supabase's JWT secret "
        "when using Supabase Auth). Unset: the built-in development secret in local runs only.",
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
        default=True,
        description="Send cookies over HTTPS only. Unset: on, except in local runs.",
    )
    cookie_samesite: Literal["lax", "strict"] = "lax"
    allow_signup: bool = Field(
        default=False,
        description="Local sign-in creates an account for an unknown email. Unset: on in local "
        "runs only.",
    )
    signin_limit_per_account: str = Field(
        default="10/15 minutes",
        description="Failed sign-ins allowed per email (the `limits` library's notation).",
    )
    signin_limit_per_address: str = Field(
        default="100/15 minutes",
        description="Sign-in attempts allowed per client address.",
    )
    max_body_bytes: int = Field(
        default=MIB, ge=1024, description="Largest request body accepted (413 beyond)."
    )
    docs: bool | None = Field(
        default=None, description="Serve Swagger UI at /docs. Unset: on in local runs only."
    )
    deliveries_page_size: int = Field(default=50, ge=1, le=500)
    activity_page_size: int = Field(default=20, ge=1, le=100)

    @field_validator("signin_limit_per_account", "signin_limit_per_address")
    @classmethod
    def _parses(cls, value: str) -> str:
        parse(value)  # ValueError with the library's message when it does not parse
        return value

    @property
    def uses_supabase_auth(self) -> bool:
        return bool(self.supabase_url and self.supabase_anon_key)

    @property
    def names_an_identity_provider(self) -> bool:
        """Supabase or a JWKS is configured: this is not a self-contained local run."""
        return bool(self.supabase_url or self.supabase_anon_key or self.jwks_url)

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

    def for_run(self, *, local: bool) -> ConsoleSettings:
        """These settings with the run-dependent defaults filled in, or :class:`UnsafeSettings`.

        Outside a local run the development secret is refused, and so is a configuration with
        neither `CONSOLE_JWT_SECRET` nor a JWKS (nothing could verify a session). Local sign-in
        signs its own tokens, so without Supabase Auth it needs `CONSOLE_JWT_SECRET`.
        """
        given = self.model_fields_set
        update: dict[str, Any] = {}
        if "cookie_secure" not in given:
            update["cookie_secure"] = not local
        if "allow_signup" not in given:
            update["allow_signup"] = local
        if self.docs is None:
            update["docs"] = local
        if self.jwt_secret is None and local:
            update["jwt_secret"] = DEV_JWT_SECRET
        elif not local:
            if self.uses_dev_secret:
                raise UnsafeSettings(
                    "CONSOLE_JWT_SECRET is the built-in development secret, which is public: "
                    "set a secret of your own (32+ random characters)"
                )
            if self.jwt_secret is None and self.effective_jwks_url is None:
                raise UnsafeSettings(
                    "CONSOLE_JWT_SECRET is not set and no JWKS is configured (CONSOLE_JWKS_URL "
                    "or SUPABASE_URL): outside local runs the console needs one to verify sessions"
                )
            if self.jwt_secret is None and not self.uses_supabase_auth:
                raise UnsafeSettings(
                    "CONSOLE_JWT_SECRET is not set: local sign-in signs its session tokens with "
                    "it (or set SUPABASE_URL and SUPABASE_ANON_KEY to sign in with Supabase Auth)"
                )
        return self.model_copy(update=update)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def is_embedded_database(database_url: str) -> bool:
    """The database is reached over a Unix socket only (`make run`'s embedded Postgres)."""
    try:
        host = conninfo_to_dict(database_url).get("host") or ""
    except Exception:
        return False
    return bool(host) and all(part.startswith("/") for part in str(host).split(","))


def is_local_run(settings: ConsoleSettings, *, database_url: str, host: str) -> bool:
    """A run on one machine for development: no Supabase or JWKS settings, and the console is
    bound to loopback only or its database is the embedded one."""
    if settings.names_an_identity_provider:
        return False
    return is_loopback(host) or is_embedded_database(database_url)
