"""Sign-in and sign-out: through Supabase Auth when it is configured, else the embedded local
stand-in; and the throttle in front of both."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any, Final, Protocol

from limits import RateLimitItem, parse
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError
from limits.storage import storage_from_string
from loguru import logger

from console.auth import Authenticator
from console.settings import ConsoleSettings
from shared import users
from shared.db import Database
from shared.errors import ParityError, PermissionDenied
from shared.redisurl import limits_storage
from shared.settings import PlatformSettings

WRONG_CREDENTIALS: Final = "wrong email or password"


class TooManySignIns(ParityError):
    """Too many sign-in attempts: wait before trying again."""

    code = "TOO_MANY_SIGN_INS"

    def __init__(self, retry_after: int) -> None:
        super().__init__(
            f"too many sign-in attempts: try again in {retry_after} s",
            hint="the wait is in the Retry-After header",
        )
        self.retry_after = retry_after


class SignInUnavailable(ParityError):
    """Sign-in is unavailable: the attempt counter (Redis) cannot be reached. Try again shortly."""

    code = "SIGN_IN_UNAVAILABLE"


class SignIn(Protocol):
    """Turns an email and a password into a session token (a JWT the Authenticator accepts)."""

    async def __call__(self, email: str, password: str) -> str: ...

    async def sign_out(self, token: str) -> None:
        """End the session at its issuer too (the console's own revocation is separate)."""


class LocalSignIn:
    """Finds (or, with sign-up allowed, creates) the user in `auth.users` and signs a token with
    the local secret."""

    def __init__(self, database: Database, authenticator: Authenticator, *, signup: bool) -> None:
        self._db = database
        self._auth = authenticator
        self._signup = signup

    async def __call__(self, email: str, password: str) -> str:
        async with self._db.as_service() as conn:
            user = await users.sign_in_local(conn, email, password, allow_signup=self._signup)
        return self._auth.issue(user)

    async def sign_out(self, token: str) -> None:
        return None  # the revocation list is all there is


class SupabaseSignIn:
    """Password sign-in with Supabase Auth; its access token is the session token."""

    def __init__(self, url: str, anon_key: str) -> None:
        from supabase import ClientOptions, create_client

        # One client serves every user: it must not keep (or refresh in a background thread) the
        # session of whoever signed in last. The token goes to the browser, not into the client.
        options = ClientOptions(auto_refresh_token=False, persist_session=False)
        self._client: Any = create_client(url, anon_key, options=options)

    async def __call__(self, email: str, password: str) -> str:
        users.clean_email(email)
        credentials = {"email": email.strip(), "password": password}
        try:
            # The supabase client is synchronous: keep its HTTP call off the event loop.
            response = await asyncio.to_thread(self._client.auth.sign_in_with_password, credentials)
        except Exception as exc:  # the client raises its own AuthApiError family
            # Unknown email and wrong password get the same answer, whatever Supabase says.
            logger.info("Supabase Auth refused a sign-in: {}", exc)
            raise PermissionDenied(WRONG_CREDENTIALS) from None
        session = getattr(response, "session", None)
        if session is None or not session.access_token:
            raise PermissionDenied(WRONG_CREDENTIALS)
        token: str = session.access_token
        return token

    async def sign_out(self, token: str) -> None:
        """Best effort: the console has already refused the token; Supabase's refresh token for
        the session is revoked too when Supabase answers."""
        try:
            await asyncio.to_thread(self._client.auth.admin.sign_out, token, "local")
        except Exception as exc:
            logger.warning("Supabase Auth sign-out failed: {}", exc)


def build_sign_in(settings: ConsoleSettings, db: Database, auth: Authenticator) -> SignIn:
    if settings.uses_supabase_auth:
        assert settings.supabase_url and settings.supabase_anon_key
        return SupabaseSignIn(settings.supabase_url, settings.supabase_anon_key)
    return LocalSignIn(db, auth, signup=settings.allow_signup)


class SignInThrottle:
    """Sign-in attempts per client address and per account, counted with the `limits` library
    (in Redis or a Redis Cluster when `REDIS_URL` is set, so that replicas share the counts;
    else in memory). Each check is one key, so on a cluster one node answers it.

    Every attempt, successful or not, counts against both limits before the password is checked,
    so parallel guesses cannot slip through.
    """

    def __init__(self, settings: ConsoleSettings, platform: PlatformSettings) -> None:
        uri, options = limits_storage(
            platform.redis_url,
            timeout_seconds=platform.redis_timeout_seconds,
            retries=platform.redis_retries,
        )
        self._limiter = MovingWindowRateLimiter(storage_from_string(uri, **options))
        self._per_account: RateLimitItem = parse(settings.signin_limit_per_account)
        self._per_address: RateLimitItem = parse(settings.signin_limit_per_address)

    @staticmethod
    def _account(email: str) -> str:
        return email.strip().lower()[:254]

    async def attempt(self, email: str, address: str) -> None:
        """Count an attempt; :class:`TooManySignIns` when either limit is spent."""
        checks = (
            (self._per_address, ("signin-address", address)),
            (self._per_account, ("signin-account", self._account(email))),
        )
        for item, keys in checks:
            try:
                allowed = await self._limiter.hit(item, *keys)
                stats = None if allowed else await self._limiter.get_window_stats(item, *keys)
            except StorageError as exc:
                # Without the counter no attempt is allowed (an outage must not lift the limit);
                # the caller gets a clear 503 at once, not a 500.
                raise SignInUnavailable(
                    "sign-in is unavailable: its attempt counter cannot be reached",
                    hint="try again in a few seconds",
                ) from exc
            if stats is not None:
                raise TooManySignIns(max(1, math.ceil(stats.reset_time - time.time())))


async def sign_in(
    sign_in: SignIn, throttle: SignInThrottle, email: str, password: str, address: str
) -> str:
    """A session token for `email`, throttled: what the API and the dashboard both call."""
    await throttle.attempt(email, address)
    return await sign_in(email, password)
