"""Sign-in: through Supabase Auth when it is configured, else the embedded local stand-in."""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from console.auth import Authenticator
from shared import users
from shared.db import Database
from shared.errors import PermissionDenied


class SignIn(Protocol):
    """Turns an email and a password into a session token (a JWT the Authenticator accepts)."""

    async def __call__(self, email: str, password: str) -> str: ...


class LocalSignIn:
    """Creates or finds the user in `auth.users` and signs a token with the local secret."""

    def __init__(self, database: Database, authenticator: Authenticator) -> None:
        self._db = database
        self._auth = authenticator

    async def __call__(self, email: str, password: str) -> str:
        async with self._db.as_service() as conn:
            user = await users.sign_in_local(conn, email, password)
        return self._auth.issue(user)


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
            raise PermissionDenied(f"Supabase Auth refused the sign-in: {exc}") from None
        session = getattr(response, "session", None)
        if session is None or not session.access_token:
            raise PermissionDenied("Supabase Auth returned no session")
        token: str = session.access_token
        return token
