"""The dashboard: server-rendered pages over the same shared queries as the API, as the signed-in
user.

Every form posts back here (CSRF-checked) and is answered with a redirect (303, POST/redirect/GET),
so reloading a page never repeats an action. What an action has to say on the next page (a new
secret, shown once; a refusal with the database's hint; a notice) travels in a one-time flash
(`console.flash`), never in a URL."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Final
from uuid import UUID

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from markupsafe import Markup

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
from console.flash import FLASH_COOKIE, FLASH_TTL_SECONDS, Flash
from console.signin import TooManySignIns, sign_in
from shared import (
    apikeys,
    apps,
    audit,
    deliveries,
    parity,
    projects,
    suspensions,
    usage,
    users,
    webhooks,
)
from shared.db import Connection
from shared.environment import Environment, EnvironmentConfig, get_environment_config
from shared.errors import (
    ConfirmationRequired,
    Conflict,
    InvalidInput,
    NotFound,
    ParityError,
    PermissionDenied,
    StaleFingerprint,
)
from shared.parity import PROMOTION_ORDER
from shared.projects import Project
from shared.webhook_urls import display_form

router = APIRouter(include_in_schema=False)

MAX_GRACE_HOURS: Final = 720
FAVICON: Final = Path(__file__).resolve().parent / "static" / "favicon.ico"


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


def when(moment: datetime | None, *, seconds: bool = False) -> Markup:
    """A time as every page shows it: in UTC, saying so, machine-readable in `datetime`."""
    if moment is None:
        return Markup("")
    utc = moment.astimezone(UTC)
    shown = utc.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")
    return Markup('<time datetime="{}">{} UTC</time>').format(utc.isoformat(), shown)


def number(value: float) -> str:
    """Thousands separated, at most one decimal: 1,234 or 12.5."""
    return f"{value:,.0f}" if float(value).is_integer() or value >= 100 else f"{value:,.1f}"


def percent(value: float) -> str:
    """82 for 82.4; one decimal below 10 (0.4), so a little use does not read as none."""
    return f"{value:.0f}" if value >= 10 or value == 0 else f"{value:.1f}"


def render(
    request: Request,
    template: str,
    context: dict[str, Any],
    *,
    status: int = 200,
    no_store: bool = False,
) -> HTMLResponse:
    """A page with a CSRF token for its forms (and the cookie it is checked against), and the
    flash meant for it (`context["flash"]`, from :func:`take_flash`), its cookie then dropped."""
    state = get_console(request)
    nonce = request.cookies.get(CSRF_COOKIE)
    fresh = nonce is None
    if nonce is None:
        nonce = state.csrf.new_nonce()
    session = context.get("session")
    flash = context.get("flash")
    response = state.templates.TemplateResponse(
        request,
        template,
        {
            "csrf_field": CSRF_FIELD,
            "csrf_token": state.csrf.token_for(nonce),
            "flash": flash,
            "when": when,
            "number": number,
            "percent": percent,
            "display_url": display_form,
            **context,
        },
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
    if flash is not None:
        # Shown: the browser drops it, so a reload (or Back) shows the page without it.
        response.delete_cookie(
            FLASH_COOKIE,
            path="/",
            httponly=True,
            secure=state.settings.cookie_secure,
            samesite=state.settings.cookie_samesite,
        )
    if no_store or session is not None:
        # Signed-in pages (one may carry a secret) are kept by neither the browser nor a proxy.
        response.headers["Cache-Control"] = "no-store"
    # Pages load only this site's own script and stylesheet: no inline code to inject into.
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    )
    return response


async def take_flash(request: Request, session: Session) -> Flash | None:
    """The flash meant for this page, if no replica has shown it yet (it is then recorded)."""
    state = get_console(request)
    return await state.flash.take(
        state.db, request.cookies.get(FLASH_COOKIE), path=request.url.path, user_id=session.user_id
    )


def error_page(request: Request, status: int, message: str) -> HTMLResponse:
    return render(request, "error.html", {"status": status, "message": message}, status=status)


def see_other(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


def redirect_with(request: Request, flash: Flash, *, anchor: str = "") -> RedirectResponse:
    """303 to the flash's page (at `anchor`), the flash riding along in its one-time cookie."""
    state = get_console(request)
    response = see_other(flash.target + anchor)
    response.set_cookie(
        FLASH_COOKIE,
        state.flash.seal(flash),
        max_age=FLASH_TTL_SECONDS,
        # One flash at a time, site-wide: a newer one replaces an older one unseen, and no two
        # cookies of the same name (for different paths) ever reach the server together.
        path="/",
        httponly=True,
        secure=state.settings.cookie_secure,
        samesite=state.settings.cookie_samesite,
    )
    return response


@router.get("/favicon.ico")
async def favicon() -> FileResponse:
    return FileResponse(
        FAVICON, media_type="image/x-icon", headers={"Cache-Control": "public, max-age=86400"}
    )


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


@router.get("/projects")
async def list_projects(request: Request, state: ConsoleDep, session: PageSession) -> Response:
    async with state.db.as_user(session.user_id, session.claims, session.request_headers) as conn:
        found = await projects.list_projects(conn)
    return render(
        request,
        "projects.html",
        {
            "session": session,
            "projects": found,
            "environments": ENVIRONMENTS,
            "flash": await take_flash(request, session),
        },
    )


@router.post("/projects")
async def create_project(
    request: Request, state: ConsoleDep, session: PageSession, form: Form
) -> Response:
    try:
        async with state.db.as_user(
            session.user_id, session.claims, session.request_headers
        ) as conn:
            project = await projects.create_project(
                conn,
                name=form.get("name", ""),
                environment=form.get("environment", Environment.PROD.value),
            )
    except InvalidInput as exc:
        # What was typed, to fill the form in again: printable text only, and not much of it.
        kept = {
            k: "".join(ch for ch in form.get(k, "")[:200] if ch.isprintable())
            for k in ("name", "environment")
        }
        return redirect_with(
            request,
            Flash(
                target="/projects",
                user_id=str(session.user_id),
                error=exc.message,
                hint=exc.hint,
                section="create",
                form=kept,
            ),
            anchor="#create",
        )
    return see_other(project_path(project.id))


def project_path(project_id: UUID) -> str:
    return f"/projects/{project_id}"


@dataclass(frozen=True, slots=True)
class UsageChart:
    """The usage card's two bars, laid out for an SVG 600 units wide."""

    usage: usage.WindowUsage
    width: int = 600
    bar_x: int = 130
    bar_width: int = 330

    @staticmethod
    def fill(percent: float) -> int:
        return round(min(percent, 100.0) * 3.3)

    @staticmethod
    def tone(percent: float) -> str:
        return "over" if percent >= 100 else "near" if percent >= 80 else "ok"


ACTORS: Final = {
    "platform": "the platform",
    "worker": "the worker",
    "operator": "an operator",
}


def actor_words(entry: audit.AuditEntry, session: Session) -> str:
    """Who acted, in words: you, another user (by id), the platform, the worker, an operator."""
    if entry.actor_type == "user":
        return "you" if entry.actor_id == session.user_id else f"user {entry.actor_id}"
    return ACTORS[entry.actor_type]


def _shown(value: Any) -> str:
    """A value as typed: text in quotes, unescaped (the page escapes it as HTML), else JSON."""
    return f'"{value}"' if isinstance(value, str) else json.dumps(value)


def plan_line(change: dict[str, Any]) -> str:
    """One change of a promotion's plan, e.g. `create endpoint orders: event_types ["a"]`."""
    what = change.get("action", "").replace("_", " ")
    if change.get("endpoint"):
        what += f" {change['endpoint']}"
    values = ", ".join(f"{k} {_shown(v)}" for k, v in sorted(change.get("set", {}).items()))
    return f"{what}: {values}" if values else what


def change_lines(entry: audit.AuditEntry) -> list[str]:
    """Each changed column as `column: before → after` (a side without a value left out); a
    promotion as where it came from, then each change of its plan."""
    if entry.action == "promotion.applied":
        source = entry.changes.get("from", {})
        heading = f"from {source.get('environment')} ({source.get('project_name')})"
        return [heading] + [plan_line(change) for change in entry.changes.get("plan", [])]
    lines = []
    for column, change in sorted(entry.changes.items()):
        before, after = (_shown(change.get(side)) for side in ("before", "after"))
        if change.get("before") is None:
            lines.append(f"{column}: {after}")
        elif change.get("after") is None and entry.action.endswith(".deleted"):
            lines.append(f"{column}: was {before}")
        else:
            lines.append(f"{column}: {before} \u2192 {after}")
    return lines


async def project_context(
    state: Console, session: Session, project_id: UUID, *, activity_before: int | None = None
) -> dict[str, Any]:
    async with state.db.as_user(session.user_id, session.claims, session.request_headers) as conn:
        project = await projects.get_project(conn, project_id)
        keys = await apikeys.list_keys(conn, project_id)
        endpoints = await webhooks.list_endpoints(conn, project_id)
        counts = await deliveries.counts_by_endpoint(conn, project_id)
        recent = await deliveries.list_deliveries(
            conn, project_id, limit=state.settings.deliveries_page_size
        )
        attempts = await deliveries.attempts_by_delivery(conn, [d.id for d in recent])
        history = await suspensions.list_suspensions(conn, project_id)
        used = await usage.current_usage(conn, project, state.platform)
        activity = await audit.list_entries(
            conn,
            project_id,
            before=activity_before,
            limit=state.settings.activity_page_size,
            reader=session.user_id,
        )
        app = await apps.app_of_project(conn, project_id)
    config = get_environment_config(project.environment)
    return {
        "session": session,
        "project": project,
        "config": config,
        "help": environment_help(config),
        "environments": ENVIRONMENTS,
        "keys": keys,
        "endpoints": {e.id: e for e in endpoints},
        "counts": counts,
        "deliveries": recent,
        "attempts": attempts,
        "suspension": next((s for s in history if s.is_open), None),
        "suspensions": history,
        "chart": UsageChart(used),
        "active_keys": sum(1 for k in keys if k.status == "active"),
        "activity": activity,
        "app": app,
        "activity_before": activity_before,
        "actor_words": lambda entry: actor_words(entry, session),
        "change_lines": change_lines,
    }


@router.get("/projects/{project_id}")
async def show_project(
    project_id: UUID,
    request: Request,
    state: ConsoleDep,
    session: PageSession,
    activity_before: Annotated[int | None, Query(ge=1, le=audit.MAX_ENTRY_ID)] = None,
) -> Response:
    """The project page; `activity_before` pages the Activity card to older entries."""
    context = await project_context(state, session, project_id, activity_before=activity_before)
    return render(request, "project.html", {**context, "flash": await take_flash(request, session)})


@router.get("/projects/{project_id}/deliveries")
async def delivery_log(
    project_id: UUID, request: Request, state: ConsoleDep, session: PageSession
) -> Response:
    """The delivery log and each endpoint's counts alone: what the project page polls to show
    deliveries as they happen."""
    async with state.db.as_user(session.user_id, session.claims, session.request_headers) as conn:
        project = await projects.get_project(conn, project_id)
        endpoints = await webhooks.list_endpoints(conn, project_id)
        counts = await deliveries.counts_by_endpoint(conn, project_id)
        recent = await deliveries.list_deliveries(
            conn, project_id, limit=state.settings.deliveries_page_size
        )
        attempts = await deliveries.attempts_by_delivery(conn, [d.id for d in recent])
    return render(
        request,
        "live.html",
        {
            "session": session,
            "project": project,
            "endpoints": {e.id: e for e in endpoints},
            "counts": counts,
            "deliveries": recent,
            "attempts": attempts,
        },
    )


@router.get("/projects/{project_id}/{action:path}")
async def action_address(project_id: UUID) -> Response:
    """An action's address opened directly (a bookmark, a pasted link): nothing happens there on a
    GET, so show the project it belongs to instead of an error."""
    return see_other(project_path(project_id))


def confirm_destructive(project: Project, form: dict[str, str], what: str) -> None:
    """Destructive actions need a confirmation: the project's name typed in on prod, a ticked
    box elsewhere (both work without JavaScript)."""
    if project.environment is Environment.PROD:
        if form.get("confirm_name", "") != project.name:
            raise InvalidInput(
                f"{what} in production needs confirmation:"
                f" type the project name exactly as shown: {project.name}"
            )
    elif form.get("confirm", "") != "yes":
        raise InvalidInput(f"{what} needs confirmation: tick the box, then try again")


Done = Flash | Response | None
"""What an action returns: a flash for the project page, another answer, or nothing to say."""

Action = Callable[[Connection, Project], Awaitable[Done]]


async def act(
    request: Request,
    state: Console,
    session: Session,
    project_id: UUID,
    action: Action,
    *,
    anchor: str = "",
) -> Response:
    """Run `action(conn, project)` as the user in one transaction, then redirect to the project
    page (so a reload never repeats it) with what it has to say, or the reason it was refused and
    the database's hint, in a one-time flash."""

    async def on_project(conn: Connection) -> Done:
        return await action(conn, await projects.get_project(conn, project_id))

    return await run_action(
        request, state, session, project_path(project_id), on_project, anchor=anchor
    )


async def run_action(
    request: Request,
    state: Console,
    session: Session,
    target: str,
    action: Callable[[Connection], Awaitable[Done]],
    *,
    anchor: str = "",
    kept: dict[str, str] | None = None,
) -> Response:
    """Run `action(conn)` as the user in one transaction, then redirect to `target` (at `anchor`,
    which may start with a query string) with what it has to say, or the reason it was refused
    and the database's hint, in a one-time flash (with `kept`, fields to fill in again, never
    secrets). Not found stays an error page."""
    section = anchor.partition("#")[2]
    try:
        async with state.db.as_user(
            session.user_id, session.claims, session.request_headers
        ) as conn:
            result = await action(conn)
    except ParityError as exc:
        if status_of(exc) in (401, 404):
            raise
        refused = Flash(
            target=target,
            user_id=str(session.user_id),
            error=exc.message,
            hint=exc.hint,
            section=section,
            form=kept or {},
        )
        return redirect_with(request, refused, anchor=anchor)
    if isinstance(result, Response):
        return result
    if result is None:
        return see_other(target + anchor)
    # Said where the page opens (the anchor), not at its top out of sight.
    return redirect_with(request, replace(result, section=section), anchor=anchor)


def flash_for(session: Session, project: Project, **fields: Any) -> Flash:
    return Flash(target=project_path(project.id), user_id=str(session.user_id), **fields)


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
        return redirect_with(
            request,
            Flash(
                target="/projects",
                user_id=str(session.user_id),
                notice=f"Deleted the project {project.name}.",
            ),
        )

    return await act(request, state, session, project_id, delete, anchor="#danger")


@router.post("/projects/{project_id}/environment")
async def change_environment(
    project_id: UUID, request: Request, state: ConsoleDep, session: PageSession, form: Form
) -> Response:
    async def change(conn: Connection, project: Project) -> Flash:
        changed = await projects.change_environment(conn, project.id, form.get("environment", ""))
        return flash_for(
            session,
            project,
            notice=f"The project is now in {changed.environment.display_name}.",
        )

    return await act(request, state, session, project_id, change, anchor="#environment")


# Keys --------------------------------------------------------------------------------------------


def key_shown_once(session: Session, project: Project, issued: apikeys.IssuedKey) -> Flash:
    # The only time the token is shown: on the page this redirects to, from a one-time flash.
    return flash_for(
        session,
        project,
        issued_for="key",
        secret_label=issued.key.name or issued.key.display,
        secret=issued.token,
    )


@router.post("/projects/{project_id}/keys")
async def create_key(
    project_id: UUID, request: Request, state: ConsoleDep, session: PageSession, form: Form
) -> Response:
    async def create(conn: Connection, project: Project) -> Flash:
        issued = await apikeys.create_key(
            conn, project.id, form.get("kind", "sk"), name=form.get("name", "")
        )
        return key_shown_once(session, project, issued)

    return await act(request, state, session, project_id, create, anchor="#keys")


@router.post("/projects/{project_id}/keys/{key_id}/revoke")
async def revoke_key(
    project_id: UUID,
    key_id: UUID,
    request: Request,
    state: ConsoleDep,
    session: PageSession,
    form: Form,
) -> Response:
    async def revoke(conn: Connection, project: Project) -> Flash:
        key = await _own_key(conn, project, key_id)
        confirm_destructive(project, form, "Revoking a key")
        await apikeys.revoke_key(conn, key_id)
        return flash_for(session, project, notice=f"Revoked the key {key.display}.")

    return await act(request, state, session, project_id, revoke, anchor="#keys")


@router.post("/projects/{project_id}/keys/{key_id}/rotate")
async def rotate_key(
    project_id: UUID,
    key_id: UUID,
    request: Request,
    state: ConsoleDep,
    session: PageSession,
    form: Form,
) -> Response:
    async def rotate(conn: Connection, project: Project) -> Flash:
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
        return key_shown_once(session, project, issued)

    return await act(request, state, session, project_id, rotate, anchor="#keys")


# Webhooks ----------------------------------------------------------------------------------------


@router.post("/projects/{project_id}/webhooks")
async def create_endpoint(
    project_id: UUID, request: Request, state: ConsoleDep, session: PageSession, form: Form
) -> Response:
    async def create(conn: Connection, project: Project) -> Flash:
        event_types = form.get("event_types", "").replace(",", " ").split()
        created = await webhooks.create_endpoint(
            conn,
            project.id,
            form.get("url", "").strip(),
            name=form.get("name", "").strip() or None,
            description=form.get("description", ""),
            event_types=event_types,
        )
        # The signing secret's only showing, like a key's.
        return flash_for(
            session,
            project,
            issued_for="endpoint",
            secret_label=(
                f"{created.endpoint.name} ({display_form(created.endpoint.url)})"
                if created.endpoint.name
                else display_form(created.endpoint.url)
            ),
            secret=created.secret,
        )

    return await act(request, state, session, project_id, create, anchor="#webhooks")


ENDPOINT_CHANGES: Final = {"enable": "Enabled", "disable": "Disabled", "delete": "Deleted"}


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
    if change not in ENDPOINT_CHANGES:
        raise NotFound("no such endpoint action: use enable, disable or delete")

    async def apply(conn: Connection, project: Project) -> Flash:
        endpoint = await _own_endpoint(conn, project, endpoint_id)
        if change == "delete":
            confirm_destructive(project, form, "Deleting a webhook endpoint")
            await webhooks.delete_endpoint(conn, endpoint_id)
        else:
            await webhooks.set_enabled(conn, endpoint_id, change == "enable")
        notice = f"{ENDPOINT_CHANGES[change]} the endpoint {display_form(endpoint.url)}."
        return flash_for(session, project, notice=notice)

    return await act(request, state, session, project_id, apply, anchor="#webhooks")


@router.post("/projects/{project_id}/test-event")
async def send_test_event(
    project_id: UUID, request: Request, state: ConsoleDep, session: PageSession, form: Form
) -> Response:
    async def send(conn: Connection, project: Project) -> Flash:
        await webhooks.send_test_event(conn, project.id, "Hello from the console")
        return flash_for(
            session,
            project,
            notice="Test event sent to every enabled endpoint: the delivery log below updates"
            " as it arrives.",
        )

    return await act(request, state, session, project_id, send, anchor="#deliveries")


@router.post("/projects/{project_id}/deliveries/{delivery_id}/redeliver")
async def redeliver(
    project_id: UUID,
    delivery_id: UUID,
    request: Request,
    state: ConsoleDep,
    session: PageSession,
    form: Form,
) -> Response:
    async def again(conn: Connection, project: Project) -> Flash:
        delivery = await deliveries.get_delivery(conn, delivery_id)
        if delivery.project_id != project.id:
            raise NotFound(f"delivery {delivery_id} not found")
        await deliveries.redeliver(conn, delivery_id)
        return flash_for(session, project, notice="Redelivery scheduled.")

    return await act(request, state, session, project_id, again, anchor="#deliveries")


# Apps --------------------------------------------------------------------------------------------

PAIRS: Final = (
    (Environment.DEV, Environment.STAGING),
    (Environment.STAGING, Environment.PROD),
    (Environment.DEV, Environment.PROD),
)
"""The pairs an app page compares and promotes, forward, the default first."""

FromEnv = Annotated[Environment | None, Query(alias="from")]
ToEnv = Annotated[Environment | None, Query(alias="to")]


def app_path(app_id: UUID) -> str:
    return f"/apps/{app_id}"


def pair_query(source: Environment, target: Environment) -> str:
    return f"?from={source.value}&to={target.value}"


def shown_value(value: Any) -> str:
    """A value of the parity report or a plan as typed: text in quotes, absent as a dash."""
    if value is None:
        return "\u2014"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_shown(v)}" for k, v in value.items())
    return _shown(value)


@router.get("/apps")
async def list_apps(request: Request, state: ConsoleDep, session: PageSession) -> Response:
    async with state.db.as_user(session.user_id, session.claims, session.request_headers) as conn:
        found = await apps.list_apps(conn)
        owned = await projects.list_projects(conn)
    return render(
        request,
        "apps.html",
        {
            "session": session,
            "apps": found,
            "projects": {p.id: p for p in owned},
            "order": PROMOTION_ORDER,
            "flash": await take_flash(request, session),
        },
    )


@router.post("/apps")
async def create_app(
    request: Request, state: ConsoleDep, session: PageSession, form: Form
) -> Response:
    async def create(conn: Connection) -> Response:
        app = await apps.create_app(
            conn, form.get("name", ""), create_projects=form.get("create_projects") == "yes"
        )
        return see_other(app_path(app.id))

    return await run_action(request, state, session, "/apps", create, anchor="#create")


def default_pair(app: apps.App) -> tuple[Environment, Environment] | None:
    """The first pair of PAIRS with both environments linked."""
    for source, target in PAIRS:
        if app.environments[source] and app.environments[target]:
            return source, target
    return None


@router.get("/apps/{app_id}")
async def show_app(
    app_id: UUID,
    request: Request,
    state: ConsoleDep,
    session: PageSession,
    source: FromEnv = None,
    target: ToEnv = None,
) -> Response:
    """The app page: its environments side by side, the parity report of one pair (`from`,
    `to`; the first linked pair by default) and the ways to promote forward."""
    report: list[parity.Difference] | None = None
    refused: ParityError | None = None
    async with state.db.as_user(session.user_id, session.claims, session.request_headers) as conn:
        app = await apps.get_app(conn, app_id)
        linked = await apps.linked_projects(conn, app)
        candidates = await apps.unlinked_projects(conn)
        pair = (source, target) if source and target else default_pair(app)
        if pair is not None:
            try:
                report = await parity.report(conn, app_id, *pair)
            except (InvalidInput, Conflict) as exc:  # raised before any query: nothing to undo
                refused = exc
    return render(
        request,
        "app.html",
        {
            "session": session,
            "app": app,
            "linked": linked,
            "candidates": candidates,
            "order": PROMOTION_ORDER,
            "pairs": PAIRS,
            "pair": pair,
            "report": report,
            "refused": refused,
            "shown_value": shown_value,
            "flash": await take_flash(request, session),
        },
        status=200 if refused is None else status_of(refused),
    )


@router.post("/apps/{app_id}/environments/{environment}")
async def link_environment(
    app_id: UUID,
    environment: Environment,
    request: Request,
    state: ConsoleDep,
    session: PageSession,
    form: Form,
) -> Response:
    async def link(conn: Connection) -> Flash:
        try:
            project_id = UUID(form.get("project_id", ""))
        except ValueError:
            raise InvalidInput("choose a project to link") from None
        await apps.link(conn, app_id, environment, project_id)
        project = await projects.get_project(conn, project_id)
        return Flash(
            target=app_path(app_id),
            user_id=str(session.user_id),
            notice=f"Linked {project.name} as the {environment.display_name} environment.",
        )

    return await run_action(request, state, session, app_path(app_id), link, anchor="#environments")


@router.post("/apps/{app_id}/environments/{environment}/unlink")
async def unlink_environment(
    app_id: UUID,
    environment: Environment,
    request: Request,
    state: ConsoleDep,
    session: PageSession,
    form: Form,
) -> Response:
    async def unlink(conn: Connection) -> Flash:
        await apps.unlink(conn, app_id, environment)
        return Flash(
            target=app_path(app_id),
            user_id=str(session.user_id),
            notice=f"Unlinked the {environment.display_name} environment; its project stays.",
        )

    return await run_action(
        request, state, session, app_path(app_id), unlink, anchor="#environments"
    )


def promote_path(app_id: UUID) -> str:
    return f"/apps/{app_id}/promote"


@router.get("/apps/{app_id}/promote")
async def promotion_plan(
    app_id: UUID,
    request: Request,
    state: ConsoleDep,
    session: PageSession,
    source: Annotated[Environment, Query(alias="from")],
    target: Annotated[Environment, Query(alias="to")],
    include_limits: Annotated[str, Query()] = "",
) -> Response:
    """The plan of a promotion (a dry run: nothing changes), and the form that applies it."""
    limits = include_limits == "yes"
    async with state.db.as_user(session.user_id, session.claims, session.request_headers) as conn:
        app = await apps.get_app(conn, app_id)
        promotion = await parity.promote(
            conn, app_id, source, target, dry_run=True, include_limits=limits
        )
    return render(
        request,
        "promote.html",
        {
            "session": session,
            "app": app,
            "promotion": promotion,
            "source": source,
            "target": target,
            "include_limits": limits,
            "pair_query": pair_query(source, target),
            "shown_value": shown_value,
            "flash": await take_flash(request, session),
        },
    )


URL_FIELD: Final = "url."
"""A created endpoint's target URL is the form field `url.<endpoint name>`."""


@router.post("/apps/{app_id}/promote")
async def apply_promotion(
    app_id: UUID, request: Request, state: ConsoleDep, session: PageSession, form: Form
) -> Response:
    """Apply the plan the page showed (its fingerprint): into prod with the target's typed name.
    The new endpoints' signing secrets are shown once, on the app page, from a one-time flash."""
    try:
        source, target = Environment(form.get("from", "")), Environment(form.get("to", ""))
    except ValueError:
        raise InvalidInput("choose environments to promote from and to") from None
    limits = form.get("include_limits") == "yes"
    urls = {
        key.removeprefix(URL_FIELD): value.strip()
        for key, value in form.items()
        if key.startswith(URL_FIELD) and value.strip()
    }
    query = pair_query(source, target) + ("&include_limits=yes" if limits else "")

    async def apply(conn: Connection) -> Done:
        try:
            promotion = await parity.promote(
                conn,
                app_id,
                source,
                target,
                dry_run=False,
                expected_fingerprint=form.get("fingerprint") or None,
                include_limits=limits,
                urls=urls,
                carry_urls=form.get("carry_urls") == "yes",
                confirm_name=form.get("confirm_name"),
            )
        # The API's hints name request fields; here, say what to do on the page.
        except ConfirmationRequired as exc:
            raise ConfirmationRequired(
                exc.message, hint="Type it in the box below, exactly as shown."
            ) from None
        except StaleFingerprint as exc:
            raise StaleFingerprint(
                exc.message, hint="The plan above is made afresh: review it, then apply again."
            ) from None
        count = len(promotion.changes)
        done = Flash(
            target=app_path(app_id),
            user_id=str(session.user_id),
            notice=f"Promoted {count} change{'s' if count != 1 else ''} from"
            f" {source.display_name} to {target.display_name}.",
            issued_for="promotion" if promotion.secrets else None,
            secrets=promotion.secrets,
            section="promote",
        )
        if not state.flash.fits(done):
            # Refused before commit: secrets that cannot be shown must not exist.
            raise InvalidInput(
                f"this promotion creates {len(promotion.secrets)} endpoints, too many to show"
                " their signing secrets on one page",
                hint="Promote through the API (POST /api/v1/apps/{id}/promotions), which"
                " returns every secret.",
            )
        return redirect_with(request, done, anchor=pair_query(source, target) + "#promote")

    # Refused (a stale plan, a missing name or URL): back to the plan, which is made afresh.
    kept = {URL_FIELD + name: url[:500] for name, url in urls.items()}
    return await run_action(
        request, state, session, promote_path(app_id), apply, anchor=query + "#apply", kept=kept
    )


@router.get("/apps/{app_id}/{action:path}")
async def app_action_address(app_id: UUID) -> Response:
    """An app action's address opened directly: show the app instead of an error."""
    return see_other(app_path(app_id))
