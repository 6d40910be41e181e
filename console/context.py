"""What every request handler reaches through the app: settings, database, sign-in, templates,
and the dependencies that turn a request into a signed-in user."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Annotated

from fastapi import Depends, Request
from fastapi.templating import Jinja2Templates

from console import sessions
from console.auth import Authenticator, Csrf, Session, Unauthenticated
from console.flash import FlashBox
from console.settings import ConsoleSettings
from console.signin import SignIn, SignInThrottle
from shared.db import Database
from shared.settings import PlatformSettings

CSRF_COOKIE = "parity_csrf"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True, slots=True)
class Console:
    settings: ConsoleSettings
    db: Database
    auth: Authenticator
    csrf: Csrf
    sign_in: SignIn
    throttle: SignInThrottle
    templates: Jinja2Templates
    platform: PlatformSettings
    flash: FlashBox


def get_console(request: Request) -> Console:
    state: Console = request.app.state.console
    return state


ConsoleDep = Annotated[Console, Depends(get_console)]


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


async def api_session(request: Request, state: ConsoleDep) -> Session:
    """The signed-in user of an API request: a Bearer token, or the dashboard's session cookie.

    With the cookie, unsafe methods also need the CSRF token in a header, since a browser sends
    cookies on its own.
    """
    token = bearer_token(request)
    if token is None:
        token = request.cookies.get(state.settings.cookie_name)
        if token is None:
            raise Unauthenticated()
        if request.method in UNSAFE_METHODS:
            state.csrf.check(request.cookies.get(CSRF_COOKIE), request.headers.get(CSRF_HEADER))
    return with_request(await live_session(state, token), request)


async def page_session(request: Request, state: ConsoleDep) -> Session:
    """The signed-in user of a dashboard page (the session cookie)."""
    token = request.cookies.get(state.settings.cookie_name)
    if token is None:
        raise Unauthenticated()
    return with_request(await live_session(state, token), request)


def with_request(session: Session, request: Request) -> Session:
    """`session` carrying its request's context for Postgres (the audit trail): the client's
    address as `x-forwarded-for` and the user agent, with the lower-case names PostgREST uses."""
    headers = {"x-forwarded-for": client_address(request)}
    user_agent = request.headers.get("user-agent", "")[:500]
    if user_agent:
        headers["user-agent"] = user_agent
    return replace(session, request_headers=headers)


async def live_session(state: Console, token: str) -> Session:
    """The session `token` stands for: validly signed, unexpired, not ended, its user existing."""
    session = await state.auth.verify(token)
    await sessions.check(state.db, session)
    return session


def client_address(request: Request) -> str:
    """The client's address as the server sees it (uvicorn applies X-Forwarded-For only from the
    proxies it trusts: `--forwarded-allow-ips`)."""
    return request.client.host if request.client else "unknown"


async def checked_form(request: Request, state: ConsoleDep) -> dict[str, str]:
    """The posted form's text fields, once its CSRF token has been checked."""
    form = await request.form()
    fields = {key: value for key, value in form.items() if isinstance(value, str)}
    state.csrf.check(request.cookies.get(CSRF_COOKIE), fields.get(CSRF_FIELD))
    return fields


ApiSession = Annotated[Session, Depends(api_session)]
PageSession = Annotated[Session, Depends(page_session)]
Form = Annotated[dict[str, str], Depends(checked_form)]
