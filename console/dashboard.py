"""The dashboard: server-rendered pages over the same shared queries as the API, as the signed-in
user. Forms post back here (CSRF-checked); a new secret is rendered into the response once and
never stored where it could be shown again."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final
from uuid import UUID

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse

from console import sessions
from console.auth import Session, Unauthenticated
from console.context import (
    CSRF_COOKIE,
    CSRF_FIELD,
    Console,
    ConsoleDep,
    Form,
    PageSession,
    client_address,
    get_console,
    live_session,
)
from console.errors import status_of
from console.signin import TooManySignIns, sign_in
from shared import apikeys, deliveries, projects, suspensions, users, webhooks
from shared.db import Connection
from shared.environment import Environment, EnvironmentConfig, get_environment_config
from shared.errors import InvalidInput, NotFound, ParityError, PermissionDenied
from shared.projects import Project

router = APIRouter(include_in_schema=False)

MAX_GRACE_HOURS: Final = 720


@dataclass(frozen=True, slots=True)
class EnvironmentHelp:
    """What the create form says about an environment, generated from its policy."""

    environment: Environment
    label: str
    lines: tuple[str, ...]


def environment_help(config: EnvironmentConfig) -> EnvironmentHelp:
    retries = (
        "retried without limit (backoff capped)"
        if config.max_webhook_retries is None
        else f"retried {config.max_webhook_retries} times, then kept for replay"
    )
    return EnvironmentHelp(
        environment=config.environment,
        label=config.environment.display_name,
        lines=(
            f"Rate limit: {config.rate_limit_multiplier}x the project's base limit",
            "Auto-suspend on hard caps: "
            + ("on" if config.auto_suspend_enabled else "off (a warning event instead)"),
            f"Log level: {config.log_level}"
            + (" (full request and response bodies)" if config.logs_bodies else ""),
            f"Failed webhooks: {retries}",
        ),
    )


ENVIRONMENTS = tuple(environment_help(get_environment_config(env)) for env in Environment)


def render(
    request: Request,
    template: str,
    context: dict[str, Any],
    *,
    status: int = 200,
    no_store: bool = False,
) -> HTMLResponse:
    """A page with a CSRF token for its forms (and the cookie it is checked against)."""
    state = get_console(request)
    nonce = request.cookies.get(CSRF_COOKIE)
    fresh = nonce is None
    if nonce is None:
        nonce = state.csrf.new_nonce()
    response = state.templates.TemplateResponse(
        request,
        template,
        {"csrf_field": CSRF_FIELD, "csrf_token": state.csrf.token_for(nonce), **context},
        status_code=status,
    )
    if fresh:
        response.set_cookie(
            CSRF_COOKIE,
            nonce,
            httponly=True,
            secure=state.settings.cookie_secure,
            samesite=state.settings.cookie_samesite,
        )
    if no_store:
        response.headers["Cache-Control"] = "no-store"
    # Pages load only this site's own script and stylesheet: no inline code to inject into.
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    )
    return response


def error_page(request: Request, status: int, message: str) -> HTMLResponse:
    return render(request, "error.html", {"status": status, "message": message}, status=status)


def see_other(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


# Sign-in -----------------------------------------------------------------------------------------


@router.get("/")
async def home(request: Request, state: ConsoleDep) -> Response:
    signed_in = request.cookies.get(state.settings.cookie_name) is not None
    return see_other("/projects" if signed_in else "/signin")


def signin_context(state: Console) -> dict[str, Any]:
    return {
        "supabase": state.settings.uses_supabase_auth,
        "signup": state.settings.allow_signup,
        "min_password": users.MIN_PASSWORD_LENGTH,
        "max_password": users.MAX_PASSWORD_LENGTH,
    }


@router.get("/signin")
async def signin_page(request: Request, state: ConsoleDep) -> HTMLResponse:
    return render(request, "signin.html", signin_context(state))


@router.post("/signin")
async def signin(request: Request, state: ConsoleDep, form: Form) -> Response:
    email = form.get("email", "")
    try:
        token = await sign_in(
            state.sign_in, state.throttle, email, form.get("password", ""), client_address(request)
        )
    except (InvalidInput, PermissionDenied, TooManySignIns) as exc:
        page = render(
            request,
            "signin.html",
            {**signin_context(state), "error": exc.message, "email": email},
            status=401 if isinstance(exc, PermissionDenied) else status_of(exc),
        )
        if isinstance(exc, TooManySignIns):
            page.headers["Retry-After"] = str(exc.retry_after)
        return page
    response = see_other("/projects")
    response.set_cookie(
        state.settings.cookie_name,
        token,
        max_age=state.settings.session_ttl_seconds,
        httponly=True,
        secure=state.settings.cookie_secure,
        samesite=state.settings.cookie_samesite,
    )
    return response


@router.post("/signout")
async def signout(request: Request, state: ConsoleDep, form: Form) -> Response:
    """End the session on the server (its token is refused from now on), then drop the cookie."""
    token = request.cookies.get(state.settings.cookie_name)
    if token is not None:
        try:
            session = await live_session(state, token)
        except Unauthenticated:
            pass  # already expired or ended: nothing left to end
        else:
            await sessions.revoke(state.db, session)
            await state.sign_in.sign_out(token)
    response = see_other("/signin")
    response.delete_cookie(state.settings.cookie_name)
    return response


# Projects ----------------------------------------------------------------------------------------


async def projects_page(
    request: Request,
    state: Console,
    session: Session,
    *,
    status: int = 200,
    error: str | None = None,
    form: dict[str, str] | None = None,
) -> HTMLResponse:
    async with state.db.as_user(session.user_id, session.claims) as conn:
        found = await projects.list_projects(conn)
    chosen = (form or {}).get("environment", Environment.PROD.value)
    return render(
        request,
        "projects.html",
        {
            "session": session,
            "projects": found,
            "environments": ENVIRONMENTS,
            "chosen": chosen if chosen in {env.value for env in Environment} else "prod",
            "error": error,
            "name": (form or {}).get("name", ""),
        },
        status=status,
    )


@router.get("/projects")
async def list_projects(request: Request, state: ConsoleDep, session: PageSession) -> Response:
    return await projects_page(request, state, session)


@router.post("/projects")
async def create_project(
    request: Request, state: ConsoleDep, session: PageSession, form: Form
) -> Response:
    try:
        async with state.db.as_user(session.user_id, session.claims) as conn:
            project = await projects.create_project(
                conn,
                name=form.get("name", ""),
                environment=form.get("environment", Environment.PROD.value),
            )
    except InvalidInput as exc:
        return await projects_page(
            request, state, session, status=422, error=exc.message, form=form
        )
    return see_other(f"/projects/{project.id}")


async def project_page(
    request: Request,
    state: Console,
    session: Session,
    project_id: UUID,
    *,
    status: int = 200,
    error: str | None = None,
    notice: str | None = None,
    new_key: apikeys.IssuedKey | None = None,
    new_endpoint: webhooks.CreatedEndpoint | None = None,
) -> HTMLResponse:
    async with state.db.as_user(session.user_id, session.claims) as conn:
        project = await projects.get_project(conn, project_id)
        keys = await apikeys.list_keys(conn, project_id)
        endpoints = await webhooks.list_endpoints(conn, project_id)
        recent = await deliveries.list_deliveries(
            conn, project_id, limit=state.settings.deliveries_page_size
        )
        attempts = await deliveries.attempts_by_delivery(conn, [d.id for d in recent])
        history = await suspensions.list_suspensions(conn, project_id)
    return render(
        request,
        "project.html",
        {
            "session": session,
            "project": project,
            "config": get_environment_config(project.environment),
            "help": environment_help(get_environment_config(project.environment)),
            "keys": keys,
            "endpoints": {e.id: e for e in endpoints},
            "deliveries": recent,
            "attempts": attempts,
            "suspension": next((s for s in history if s.is_open), None),
            "suspensions": history,
            "error": error,
            "notice": notice,
            "new_key": new_key,
            "new_endpoint": new_endpoint,
        },
        status=status,
        # A page carrying a new secret must not be kept by the browser or a proxy.
        no_store=new_key is not None or new_endpoint is not None,
    )


@router.get("/projects/{project_id}")
async def show_project(
    project_id: UUID, request: Request, state: ConsoleDep, session: PageSession
) -> Response:
    notice = {"test-sent": "Test event sent to every enabled endpoint."}.get(
        request.query_params.get("notice", "")
    )
    return await project_page(request, state, session, project_id, notice=notice)


def confirm_destructive(project: Project, form: dict[str, str], what: str) -> None:
    """On prod projects, destructive actions need the project's name typed in."""
    if project.environment is Environment.PROD and form.get("confirm_name", "") != project.name:
        raise InvalidInput(
            f"{what} in production needs confirmation:"
            f" type the project name {project.name!r} to confirm"
        )


Shown = dict[str, Any]
"""What an action hands to the page it returns to: a new key or endpoint, shown once."""

Action = Callable[[Connection, Project], Awaitable[Shown | Response | None]]


async def act(
    request: Request, state: Console, session: Session, project_id: UUID, action: Action
) -> Response:
    """Run `action(conn, project)` as the user in one transaction, then show the project again:
    by redirecting (so a reload does not repeat it), with a secret rendered once, or with the
    reason the action was refused."""
    try:
        async with state.db.as_user(session.user_id, session.claims) as conn:
            project = await projects.get_project(conn, project_id)
            result = await action(conn, project)
    except ParityError as exc:
        status = status_of(exc)
        if status in (401, 404):
            raise
        return await project_page(
            request, state, session, project_id, status=status, error=exc.message
        )
    if isinstance(result, Response):
        return result
    if result is not None:
        return await project_page(request, state, session, project_id, **result)
    return see_other(f"/projects/{project_id}")


async def _own_key(conn: Connection, project: Project, key_id: UUID) -> apikeys.ApiKey:
    key = await apikeys.get_key(conn, key_id)
    if key.project_id != project.id:
        raise NotFound(f"API key {key_id} not found")
    return key


async def _own_endpoint(
    conn: Connection, project: Project, endpoint_id: UUID
) -> webhooks.WebhookEndpoint:
    endpoint = await webhooks.get_endpoint(conn, endpoint_id)
    if endpoint.project_id != project.id:
        raise NotFound(f"webhook endpoint {endpoint_id} not found")
    return endpoint


@router.post("/projects/{project_id}/delete")
async def delete_project(
    project_id: UUID, request: Request, state: ConsoleDep, session: PageSession, form: Form
) -> Response:
    async def delete(conn: Connection, project: Project) -> Response:
        confirm_destructive(project, form, "Deleting this project")
        await projects.delete_project(conn, project.id)
        return see_other("/projects")

    return await act(request, state, session, project_id, delete)


# Keys --------------------------------------------------------------------------------------------


@router.post("/projects/{project_id}/keys")
async def create_key(
    project_id: UUID, request: Request, state: ConsoleDep, session: PageSession, form: Form
) -> Response:
    async def create(conn: Connection, project: Project) -> Shown:
        issued = await apikeys.create_key(
            conn, project.id, form.get("kind", "sk"), name=form.get("name", "")
        )
        # The only time the token is shown: rendered into this response, stored nowhere.
        return {"new_key": issued}

    return await act(request, state, session, project_id, create)


@router.post("/projects/{project_id}/keys/{key_id}/revoke")
async def revoke_key(
    project_id: UUID,
    key_id: UUID,
    request: Request,
    state: ConsoleDep,
    session: PageSession,
    form: Form,
) -> Response:
    async def revoke(conn: Connection, project: Project) -> None:
        await _own_key(conn, project, key_id)
        confirm_destructive(project, form, "Revoking a key")
        await apikeys.revoke_key(conn, key_id)

    return await act(request, state, session, project_id, revoke)


@router.post("/projects/{project_id}/keys/{key_id}/rotate")
async def rotate_key(
    project_id: UUID,
    key_id: UUID,
    request: Request,
    state: ConsoleDep,
    session: PageSession,
    form: Form,
) -> Response:
    async def rotate(conn: Connection, project: Project) -> Shown:
        await _own_key(conn, project, key_id)
        try:
            hours = int(form.get("grace_hours", "24"))
        except ValueError:
            hours = -1
        if not 0 <= hours <= MAX_GRACE_HOURS:
            raise InvalidInput(f"grace period must be 0 to {MAX_GRACE_HOURS} hours")
        if hours == 0:
            confirm_destructive(project, form, "Rotating a key without a grace period")
        issued = await apikeys.rotate_key(conn, key_id, grace=timedelta(hours=hours))
        return {"new_key": issued}

    return await act(request, state, session, project_id, rotate)


# Webhooks ----------------------------------------------------------------------------------------


@router.post("/projects/{project_id}/webhooks")
async def create_endpoint(
    project_id: UUID, request: Request, state: ConsoleDep, session: PageSession, form: Form
) -> Response:
    async def create(conn: Connection, project: Project) -> Shown:
        event_types = form.get("event_types", "").replace(",", " ").split()
        created = await webhooks.create_endpoint(
            conn,
            project.id,
            form.get("url", ""),
            description=form.get("description", ""),
            event_types=event_types,
        )
        return {"new_endpoint": created}

    return await act(request, state, session, project_id, create)


@router.post("/projects/{project_id}/webhooks/{endpoint_id}/{change}")
async def change_endpoint(
    project_id: UUID,
    endpoint_id: UUID,
    change: str,
    request: Request,
    state: ConsoleDep,
    session: PageSession,
    form: Form,
) -> Response:
    if change not in {"enable", "disable", "delete"}:
        raise NotFound(f"no such action {change!r}")

    async def apply(conn: Connection, project: Project) -> None:
        await _own_endpoint(conn, project, endpoint_id)
        if change == "delete":
            confirm_destructive(project, form, "Deleting a webhook endpoint")
            await webhooks.delete_endpoint(conn, endpoint_id)
        else:
            await webhooks.set_enabled(conn, endpoint_id, change == "enable")

    return await act(request, state, session, project_id, apply)


@router.post("/projects/{project_id}/test-event")
async def send_test_event(
    project_id: UUID, request: Request, state: ConsoleDep, session: PageSession, form: Form
) -> Response:
    async def send(conn: Connection, project: Project) -> Response:
        await webhooks.send_test_event(conn, project.id, "Hello from the console")
        return see_other(f"/projects/{project.id}?notice=test-sent#deliveries")

    return await act(request, state, session, project_id, send)


@router.post("/projects/{project_id}/deliveries/{delivery_id}/redeliver")
async def redeliver(
    project_id: UUID,
    delivery_id: UUID,
    request: Request,
    state: ConsoleDep,
    session: PageSession,
    form: Form,
) -> Response:
    async def again(conn: Connection, project: Project) -> Response:
        delivery = await deliveries.get_delivery(conn, delivery_id)
        if delivery.project_id != project.id:
            raise NotFound(f"delivery {delivery_id} not found")
        await deliveries.redeliver(conn, delivery_id)
        return see_other(f"/projects/{project.id}#deliveries")

    return await act(request, state, session, project_id, again)
