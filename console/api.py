"""The management API under /api/v1. Every handler runs as the signed-in user (RLS applies):
another user's rows are simply not there, so they answer 404 exactly like missing ones."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Annotated, Final
from uuid import UUID

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.responses import StreamingResponse

from console import sessions, signin
from console.auth import Session, Unauthenticated
from console.context import ApiSession, Console, ConsoleDep, client_address
from console.schemas import (
    AppCreate,
    AppLink,
    AppOut,
    AuditAction,
    AuditPageOut,
    CreatedEndpointOut,
    Credentials,
    DeliveryDetailOut,
    EndpointCreate,
    EndpointOut,
    EnvironmentOut,
    ErrorOut,
    IssuedKeyOut,
    KeyCreate,
    KeyOut,
    KeyRotate,
    MeOut,
    ParityOut,
    ProjectCreate,
    ProjectUpdate,
    PromotionCreate,
    PromotionOut,
    SuspensionStateOut,
    TestEvent,
    TestEventOut,
    TokenOut,
)
from shared import apikeys, apps, audit, deliveries, parity, projects, suspensions, webhooks
from shared.apikeys import ApiKey, IssuedKey
from shared.deliveries import Delivery
from shared.environment import Environment
from shared.errors import PermissionDenied
from shared.projects import Project

_ERRORS: dict[int | str, dict[str, object]] = {
    401: {"model": ErrorOut, "description": "Not signed in"},
    404: {"model": ErrorOut, "description": "No such thing, or not yours"},
    409: {"model": ErrorOut, "description": "Conflicts with the current state"},
    413: {"model": ErrorOut, "description": "Request body over the size limit"},
    422: {"model": ErrorOut, "description": "Invalid input"},
}

router = APIRouter(prefix="/api/v1", responses=_ERRORS)

JSON_LINES: Final = "application/jsonl"


def key_out(key: ApiKey) -> KeyOut:
    return KeyOut.model_validate(
        {
            **{name: getattr(key, name) for name in ApiKey.__slots__},
            "kind": key.kind.value,
            "display": key.display,
        }
    )


def issued_out(issued: IssuedKey) -> IssuedKeyOut:
    return IssuedKeyOut(key=key_out(issued.key), token=issued.token)


@router.post(
    "/auth/token",
    tags=["session"],
    responses={
        401: {"model": ErrorOut, "description": "Wrong email or password"},
        429: {
            "model": ErrorOut,
            "description": "Too many attempts for this email or from this address",
            "headers": {
                "Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}
            },
        },
    },
)
async def sign_in(
    body: Credentials, request: Request, state: ConsoleDep, response: Response
) -> TokenOut:
    """A session token for API clients: the same sign-in as the dashboard's (Supabase Auth when
    configured, else the local one), throttled per email and per client address."""
    response.headers["Cache-Control"] = "no-store"
    try:
        token = await signin.sign_in(
            state.sign_in, state.throttle, body.email, body.password, client_address(request)
        )
    except PermissionDenied as exc:
        raise Unauthenticated(exc.message, hint=None) from None
    return TokenOut(access_token=token)


@router.post("/auth/signout", status_code=status.HTTP_204_NO_CONTENT, tags=["session"])
async def sign_out(state: ConsoleDep, session: ApiSession) -> Response:
    """End this session now: its token is refused from then on (and, with Supabase Auth, the
    session is signed out there too)."""
    await sessions.revoke(state.db, session)
    await state.sign_in.sign_out(session.token)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/me", tags=["session"])
async def me(session: ApiSession) -> MeOut:
    return MeOut(user_id=session.user_id, email=session.email)


@router.get("/environments", tags=["projects"])
async def list_environments(session: ApiSession) -> list[EnvironmentOut]:
    """How each environment behaves (from the platform's environment policy)."""
    return [EnvironmentOut.of(env) for env in Environment]


# Projects ----------------------------------------------------------------------------------------


@router.get("/projects", tags=["projects"])
async def list_projects(state: ConsoleDep, session: ApiSession) -> list[Project]:
    async with state.db.as_user(session.user_id, session.claims, session.request_headers) as conn:
        found = await projects.list_projects(conn)
    return found


@router.post("/projects", status_code=status.HTTP_201_CREATED, tags=["projects"])
async def create_project(body: ProjectCreate, state: ConsoleDep, session: ApiSession) -> Project:
    async with state.db.as_user(session.user_id, session.claims, session.request_headers) as conn:
        project = await projects.create_project(conn, name=body.name, environment=body.environment)
    return project


@router.get("/projects/{project_id}", tags=["projects"])
async def get_project(project_id: UUID, state: ConsoleDep, session: ApiSession) -> Project:
    async with state.db.as_user(session.user_id, session.claims, session.request_headers) as conn:
        project = await projects.get_project(conn, project_id)
    return project


@router.patch("/projects/{project_id}", tags=["projects"])
async def update_project(
    project_id: UUID, body: ProjectUpdate, state: ConsoleDep, session: ApiSession
) -> Project:
    """Rename a project, or move it to another environment (refused while keys are active)."""
    async with state.db.as_user(session.user_id, session.claims, session.request_headers) as conn:
        project = await projects.get_project(conn, project_id)
        if body.name is not None:
            project = await projects.rename_project(conn, project_id, body.name)
        if body.environment is not None:
            project = await projects.change_environment(conn, project_id, body.environment)
    return project


@router.delete("/projects/{project_id}", status_code=status.HTTP_204_NO_CONTENT, tags=["projects"])
async def delete_project(project_id: UUID, state: ConsoleDep, session: ApiSession) -> Response:
    async with state.db.as_user(session.user_id, session.claims, session.request_headers) as conn:
        await projects.delete_project(conn, project_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/projects/{project_id}/suspension", tags=["projects"])
async def suspension_state(
    project_id: UUID, state: ConsoleDep, session: ApiSession
) -> SuspensionStateOut:
    async with state.db.as_user(session.user_id, session.claims, session.request_headers) as conn:
        await projects.get_project(conn, project_id)
        history = await suspensions.list_suspensions(conn, project_id)
    current = next((s for s in history if s.is_open), None)
    return SuspensionStateOut(
        suspended=current is not None,
        current=current,
        history=history,
    )


# API keys ----------------------------------------------------------------------------------------


@router.get("/projects/{project_id}/keys", tags=["keys"])
async def list_keys(project_id: UUID, state: ConsoleDep, session: ApiSession) -> list[KeyOut]:
    async with state.db.as_user(session.user_id, session.claims, session.request_headers) as conn:
        await projects.get_project(conn, project_id)
        found = await apikeys.list_keys(conn, project_id)
    return [key_out(key) for key in found]


@router.post("/projects/{project_id}/keys", status_code=status.HTTP_201_CREATED, tags=["keys"])
async def create_key(
    project_id: UUID, body: KeyCreate, state: ConsoleDep, session: ApiSession, response: Response
) -> IssuedKeyOut:
    """Issue a key; its prefix follows the project's environment. The token is returned once."""
    response.headers["Cache-Control"] = "no-store"
    async with state.db.as_user(session.user_id, session.claims, session.request_headers) as conn:
        issued = await apikeys.create_key(
            conn, project_id, body.kind, name=body.name, expires_at=body.expires_at
        )
    return issued_out(issued)


@router.get("/keys/{key_id}", tags=["keys"])
async def get_key(key_id: UUID, state: ConsoleDep, session: ApiSession) -> KeyOut:
    async with state.db.as_user(session.user_id, session.claims, session.request_headers) as conn:
        return key_out(await apikeys.get_key(conn, key_id))


@router.post("/keys/{key_id}/revoke", tags=["keys"])
async def revoke_key(key_id: UUID, state: ConsoleDep, session: ApiSession) -> KeyOut:
    async with state.db.as_user(session.user_id, session.claims, session.request_headers) as conn:
        return key_out(await apikeys.revoke_key(conn, key_id))


@router.post("/keys/{key_id}/rotate", status_code=status.HTTP_201_CREATED, tags=["keys"])
async def rotate_key(
    key_id: UUID, body: KeyRotate, state: ConsoleDep, session: ApiSession, response: Response
) -> IssuedKeyOut:
    """Issue a replacement; the old key keeps working for the grace period, then expires."""
    response.headers["Cache-Control"] = "no-store"
    async with state.db.as_user(session.user_id, session.claims, session.request_headers) as conn:
        issued = await apikeys.rotate_key(conn, key_id, grace=timedelta(seconds=body.grace_seconds))
    return issued_out(issued)


# Webhook endpoints -------------------------------------------------------------------------------


@router.get("/projects/{project_id}/webhook-endpoints", tags=["webhooks"])
async def list_endpoints(
    project_id: UUID, state: ConsoleDep, session: ApiSession
) -> list[EndpointOut]:
    async with state.db.as_user(session.user_id, session.claims, session.request_headers) as conn:
        await projects.get_project(conn, project_id)
        found = await webhooks.list_endpoints(conn, project_id)
    return [EndpointOut.of(endpoint) for endpoint in found]


@router.post(
    "/projects/{project_id}/webhook-endpoints",
    status_code=status.HTTP_201_CREATED,
    tags=["webhooks"],
)
async def create_endpoint(
    project_id: UUID,
    body: EndpointCreate,
    state: ConsoleDep,
    session: ApiSession,
    response: Response,
) -> CreatedEndpointOut:
    """Add an endpoint. Its signing secret is returned once."""
    response.headers["Cache-Control"] = "no-store"
    async with state.db.as_user(session.user_id, session.claims, session.request_headers) as conn:
        # Looked up first so another user's project answers 404, not an RLS refusal.
        await projects.get_project(conn, project_id)
        created = await webhooks.create_endpoint(
            conn,
            project_id,
            body.url,
            name=body.name,
            description=body.description,
            event_types=body.event_types,
        )
    return CreatedEndpointOut(endpoint=EndpointOut.of(created.endpoint), secret=created.secret)


@router.post("/webhook-endpoints/{endpoint_id}/disable", tags=["webhooks"])
async def disable_endpoint(
    endpoint_id: UUID, state: ConsoleDep, session: ApiSession
) -> EndpointOut:
    async with state.db.as_user(session.user_id, session.claims, session.request_headers) as conn:
        endpoint = await webhooks.set_enabled(conn, endpoint_id, False)
    return EndpointOut.of(endpoint)


@router.post("/webhook-endpoints/{endpoint_id}/enable", tags=["webhooks"])
async def enable_endpoint(endpoint_id: UUID, state: ConsoleDep, session: ApiSession) -> EndpointOut:
    async with state.db.as_user(session.user_id, session.claims, session.request_headers) as conn:
        endpoint = await webhooks.set_enabled(conn, endpoint_id, True)
    return EndpointOut.of(endpoint)


@router.delete(
    "/webhook-endpoints/{endpoint_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    tags=["webhooks"],
)
async def delete_endpoint(endpoint_id: UUID, state: ConsoleDep, session: ApiSession) -> Response:
    async with state.db.as_user(session.user_id, session.claims, session.request_headers) as conn:
        await webhooks.delete_endpoint(conn, endpoint_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/projects/{project_id}/test-event", status_code=status.HTTP_201_CREATED, tags=["webhooks"]
)
async def send_test_event(
    project_id: UUID, body: TestEvent, state: ConsoleDep, session: ApiSession
) -> TestEventOut:
    """Send a `webhook.test` event to every enabled endpoint of the project."""
    async with state.db.as_user(session.user_id, session.claims, session.request_headers) as conn:
        event_id = await webhooks.send_test_event(conn, project_id, body.message)
        fanned = await deliveries.count_for_event(conn, event_id)
    return TestEventOut(event_id=event_id, deliveries=fanned)


# Audit trail -------------------------------------------------------------------------------------


@router.get("/projects/{project_id}/audit", tags=["audit"])
async def list_audit(
    project_id: UUID,
    state: ConsoleDep,
    session: ApiSession,
    action: Annotated[AuditAction | None, Query(description="Only entries of this action.")] = None,
    before: Annotated[
        int | None,
        Query(ge=1, le=audit.MAX_ENTRY_ID, description="`next_before` of the last page."),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=audit.MAX_PAGE)] = 50,
) -> AuditPageOut:
    """The project's audit trail, newest first, a page at a time (a deleted project's too)."""
    page = await audit_page(
        state,
        session,
        project_id,
        action=None if action is None else action.value,
        before=before,
        limit=limit,
    )
    return AuditPageOut.model_validate(page)


@router.get(
    "/projects/{project_id}/audit.jsonl",
    tags=["audit"],
    response_class=StreamingResponse,
    responses={200: {"content": {JSON_LINES: {}}, "description": "One entry per line."}},
)
async def export_audit(project_id: UUID, state: ConsoleDep, session: ApiSession) -> Response:
    """The whole audit trail of the project as JSON lines, newest first, to download."""
    first = await audit_page(state, session, project_id, limit=audit.MAX_PAGE)

    async def lines() -> AsyncIterator[str]:
        page = first
        while True:
            for entry in page.entries:
                yield entry.as_json_line() + "\n"
            if page.next_before is None:
                return
            # A transaction per page: no connection is held while the client reads.
            page = await audit_page(
                state, session, project_id, before=page.next_before, limit=audit.MAX_PAGE
            )

    return StreamingResponse(
        lines(),
        media_type=JSON_LINES,
        headers={"Content-Disposition": f'attachment; filename="audit-{project_id}.jsonl"'},
    )


async def audit_page(
    state: Console,
    session: Session,
    project_id: UUID,
    *,
    action: str | None = None,
    before: int | None = None,
    limit: int,
) -> audit.Page:
    """A page of the project's trail as the user; 404 for a project that is neither theirs nor
    was theirs."""
    async with state.db.as_user(session.user_id, session.claims, session.request_headers) as conn:
        page = await audit.list_entries(
            conn, project_id, action=action, before=before, limit=limit, reader=session.user_id
        )
        if not page.entries and before is None:
            await projects.get_project(conn, project_id)  # NotFound unless it is theirs
    return page


# Deliveries --------------------------------------------------------------------------------------


@router.get("/projects/{project_id}/deliveries", tags=["deliveries"])
async def list_deliveries(
    project_id: UUID, state: ConsoleDep, session: ApiSession
) -> list[Delivery]:
    async with state.db.as_user(session.user_id, session.claims, session.request_headers) as conn:
        await projects.get_project(conn, project_id)
        found = await deliveries.list_deliveries(
            conn, project_id, limit=state.settings.deliveries_page_size
        )
    return found


@router.get("/deliveries/{delivery_id}", tags=["deliveries"])
async def get_delivery(
    delivery_id: UUID, state: ConsoleDep, session: ApiSession
) -> DeliveryDetailOut:
    async with state.db.as_user(session.user_id, session.claims, session.request_headers) as conn:
        delivery = await deliveries.get_delivery(conn, delivery_id)
        attempts = await deliveries.list_attempts(conn, delivery_id)
    return DeliveryDetailOut(delivery=delivery, attempts=attempts)


@router.post("/deliveries/{delivery_id}/redeliver", tags=["deliveries"])
async def redeliver(delivery_id: UUID, state: ConsoleDep, session: ApiSession) -> DeliveryDetailOut:
    """Make a finished delivery due again now (same webhook-id, attempt log kept)."""
    async with state.db.as_user(session.user_id, session.claims, session.request_headers) as conn:
        delivery = await deliveries.redeliver(conn, delivery_id)
        attempts = await deliveries.list_attempts(conn, delivery_id)
    return DeliveryDetailOut(delivery=delivery, attempts=attempts)


# Apps --------------------------------------------------------------------------------------------


def app_out(app: apps.App) -> AppOut:
    return AppOut(
        id=app.id, name=app.name, created_at=app.created_at, environments=app.environments
    )


@router.post("/apps", status_code=status.HTTP_201_CREATED, tags=["apps"])
async def create_app(body: AppCreate, state: ConsoleDep, session: ApiSession) -> AppOut:
    """An app: up to one project per environment, compared by the parity report."""
    async with state.db.as_user(session.user_id, session.claims, session.request_headers) as conn:
        app = await apps.create_app(conn, body.name, create_projects=body.create_projects)
    return app_out(app)


@router.get("/apps", tags=["apps"])
async def list_apps(state: ConsoleDep, session: ApiSession) -> list[AppOut]:
    async with state.db.as_user(session.user_id, session.claims, session.request_headers) as conn:
        found = await apps.list_apps(conn)
    return [app_out(app) for app in found]


@router.get("/apps/{app_id}", tags=["apps"])
async def get_app(app_id: UUID, state: ConsoleDep, session: ApiSession) -> AppOut:
    async with state.db.as_user(session.user_id, session.claims, session.request_headers) as conn:
        return app_out(await apps.get_app(conn, app_id))


@router.delete("/apps/{app_id}", status_code=status.HTTP_204_NO_CONTENT, tags=["apps"])
async def delete_app(app_id: UUID, state: ConsoleDep, session: ApiSession) -> Response:
    """Delete the app; its projects stay."""
    async with state.db.as_user(session.user_id, session.claims, session.request_headers) as conn:
        await apps.delete_app(conn, app_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.put("/apps/{app_id}/environments/{environment}", tags=["apps"])
async def link_environment(
    app_id: UUID, environment: Environment, body: AppLink, state: ConsoleDep, session: ApiSession
) -> AppOut:
    """Link a project as this environment of the app: its environment must be this one (409
    otherwise), and the slot empty or already its own (409 otherwise)."""
    async with state.db.as_user(session.user_id, session.claims, session.request_headers) as conn:
        return app_out(await apps.link(conn, app_id, environment, body.project_id))


@router.delete("/apps/{app_id}/environments/{environment}", tags=["apps"])
async def unlink_environment(
    app_id: UUID, environment: Environment, state: ConsoleDep, session: ApiSession
) -> AppOut:
    """Empty this environment's slot; the project itself stays."""
    async with state.db.as_user(session.user_id, session.claims, session.request_headers) as conn:
        return app_out(await apps.unlink(conn, app_id, environment))


@router.get("/apps/{app_id}/parity", tags=["apps"], response_model_by_alias=True)
async def parity_report(
    app_id: UUID,
    state: ConsoleDep,
    session: ApiSession,
    source: Annotated[Environment, Query(alias="from")],
    target: Annotated[Environment, Query(alias="to")],
) -> ParityOut:
    """Every difference between two environments of the app, field by field, classed as policy
    (the environments behave differently on purpose), environment-specific (URLs) or drift."""
    async with state.db.as_user(session.user_id, session.claims, session.request_headers) as conn:
        differences = await parity.report(conn, app_id, source, target)
    return ParityOut.model_validate(
        {"from": source, "to": target, "differences": [d.as_json() for d in differences]}
    )


@router.post("/apps/{app_id}/promotions", tags=["apps"])
async def promote(
    app_id: UUID, body: PromotionCreate, state: ConsoleDep, session: ApiSession, response: Response
) -> PromotionOut:
    """Carry the source's drift forward onto the target: a dry run returns the plan and its
    fingerprint; applying with that fingerprint applies exactly that plan in one transaction
    (409 if either side changed since). Into prod, confirm_name must be the target's name."""
    response.headers["Cache-Control"] = "no-store"
    async with state.db.as_user(session.user_id, session.claims, session.request_headers) as conn:
        promotion = await parity.promote(
            conn,
            app_id,
            body.source,
            body.target,
            dry_run=body.dry_run,
            expected_fingerprint=body.fingerprint,
            include_limits=body.include_limits,
            urls=body.urls,
            carry_urls=body.carry_urls,
            confirm_name=body.confirm_name,
        )
    return PromotionOut.model_validate(
        {
            "from": body.source,
            "to": body.target,
            "plan": [change.as_json() for change in promotion.changes],
            "fingerprint": promotion.fingerprint,
            "applied": promotion.applied,
            "secrets": promotion.secrets,
        }
    )
