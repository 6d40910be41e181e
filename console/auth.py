"""Who is asking: session JWTs (issued locally or by Supabase Auth) and CSRF tokens for forms.

Tokens are verified locally with PyJWT: HS256 with the shared secret when one is set (what the
local sign-in issues, and what Supabase Auth signs with on projects with a legacy JWT secret), or an
asymmetric key from the JWKS (`CONSOLE_JWKS_URL`, else Supabase Auth's). A verified token may still
have been revoked (signed out): :mod:`console.sessions` checks that on every request.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final
from uuid import UUID

import jwt

from console.settings import ConsoleSettings
from shared.errors import ParityError
from shared.users import User

LOCAL_ISSUER: Final = "parity-console"
_ASYMMETRIC: Final = ("RS256", "ES256", "EdDSA")
MAX_TOKEN_LENGTH: Final = 8192


SIGN_IN_HINT: Final = (
    "get a token from POST /api/v1/auth/token and send it as `Authorization: Bearer <token>`"
)


class Unauthenticated(ParityError):
    """Sign in first: the session is missing, expired, ended or invalid."""

    code = "UNAUTHENTICATED"

    def __init__(self, message: str | None = None, *, hint: str | None = SIGN_IN_HINT) -> None:
        super().__init__(message, hint=hint)


class CsrfFailed(ParityError):
    """The form is stale or was not sent by this site: reload the page and try again."""

    code = "CSRF_FAILED"


@dataclass(frozen=True, slots=True)
class Session:
    """A verified signed-in user."""

    user_id: UUID
    email: str | None
    token_id: str
    """The token's `jti`, or the SHA-256 of the token when it has none: what sign-out revokes."""
    expires_at: datetime
    token: str = field(repr=False)
    claims: Mapping[str, Any] = field(repr=False)
    """The token's claims, given to Postgres as request.jwt.claims (as PostgREST does)."""
    request_headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    """What Postgres gets as request.headers (as PostgREST passes them): the client's address
    and user agent, which the audit trail records."""


class Authenticator:
    """Issues local session tokens and verifies any token the console accepts."""

    def __init__(self, settings: ConsoleSettings) -> None:
        self._secret = settings.jwt_secret
        self._audience = settings.jwt_audience
        self._ttl = settings.session_ttl_seconds
        jwks_url = settings.effective_jwks_url
        self._jwks = jwt.PyJWKClient(jwks_url, lifespan=600, timeout=10) if jwks_url else None

    @property
    def can_issue(self) -> bool:
        return self._secret is not None

    def issue(self, user: User) -> str:
        """A session token for `user`, shaped like Supabase Auth's access tokens."""
        if self._secret is None:
            raise ParityError("local sign-in needs CONSOLE_JWT_SECRET to sign session tokens")
        now = int(time.time())
        claims = {
            "jti": secrets.token_urlsafe(16),
            "sub": str(user.id),
            "email": user.email,
            "role": "authenticated",
            "aud": self._audience,
            "iss": LOCAL_ISSUER,
            "iat": now,
            "exp": now + self._ttl,
        }
        return jwt.encode(claims, self._secret, algorithm="HS256")

    async def verify(self, token: str) -> Session:
        """The session `token` stands for, or :class:`Unauthenticated`."""
        if not token or len(token) > MAX_TOKEN_LENGTH:
            raise Unauthenticated()
        try:
            algorithm = jwt.get_unverified_header(token).get("alg")
            if algorithm == "HS256" and self._secret is not None:
                key: Any = self._secret
            elif self._jwks is not None and algorithm in _ASYMMETRIC:
                # The JWKS client may fetch over the network (cached for `lifespan`): off the loop.
                signing_key = await asyncio.to_thread(self._jwks.get_signing_key_from_jwt, token)
                key = signing_key.key
            else:
                raise Unauthenticated(f"unsupported token algorithm {algorithm!r}")
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self._audience,
                options={"require": ["exp", "sub"]},
            )
        except (jwt.PyJWTError, ValueError) as exc:
            raise Unauthenticated(f"invalid session token: {exc}") from None
        if claims.get("role") != "authenticated":
            # A service or anon token is not a user: it must never reach as_user.
            raise Unauthenticated("the token does not belong to a signed-in user")
        try:
            user_id = UUID(str(claims["sub"]))
        except ValueError:
            raise Unauthenticated("the token's subject is not a user id") from None
        email = claims.get("email")
        jti = claims.get("jti")
        if isinstance(jti, str) and 0 < len(jti) <= 200:
            token_id = jti
        else:
            token_id = "sha256:" + hashlib.sha256(token.encode()).hexdigest()
        try:
            expires_at = datetime.fromtimestamp(float(claims["exp"]), UTC)
        except (TypeError, ValueError, OverflowError, OSError):
            raise Unauthenticated("the token's expiry is not a time") from None
        return Session(
            user_id=user_id,
            email=email if isinstance(email, str) else None,
            token_id=token_id,
            expires_at=expires_at,
            token=token,
            claims=claims,
        )


class Csrf:
    """Signed double-submit tokens: a random nonce in a cookie, its HMAC in each form.

    A cross-site page can make the browser send the cookie (where SameSite allows) but can neither
    read it nor compute the HMAC, so it cannot fill in the hidden field.
    """

    def __init__(self, secret: str | None) -> None:
        # Without a shared secret (Supabase Auth with a JWKS only) the key is this process's own:
        # forms then verify only on the replica that rendered them.
        seed = secret.encode() if secret is not None else secrets.token_bytes(32)
        self._key = hmac.new(seed, b"console csrf", hashlib.sha256).digest()

    @staticmethod
    def new_nonce() -> str:
        return secrets.token_urlsafe(24)

    def token_for(self, nonce: str) -> str:
        return hmac.new(self._key, nonce.encode(), hashlib.sha256).hexdigest()

    def check(self, nonce: str | None, token: str | None) -> None:
        if not nonce or not token or not hmac.compare_digest(self.token_for(nonce), token):
            raise CsrfFailed()
