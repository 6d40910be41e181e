"""The console application: the management API, the dashboard and sign-in, in one FastAPI app."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final

import swagger_ui
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from loguru import logger
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from console import api, dashboard
from console.auth import Authenticator, Csrf, Unauthenticated
from console.bodycap import CODE as TOO_LARGE
from console.bodycap import BodyCap
from console.context import Console
from console.errors import status_of
from console.flash import FlashBox
from console.schemas import ErrorBody, ErrorOut, FieldError
from console.settings import ConsoleSettings
from console.signin import SignInThrottle, TooManySignIns, build_sign_in
from shared.db import Database
from shared.errors import InvalidInput, ParityError
from shared.settings import PlatformSettings

HERE: Final = Path(__file__).resolve().parent
SWAGGER_UI: Final = Path(swagger_ui.__file__).resolve().parent / "static"
DOCS_CSP: Final = (
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'self'"
)
DOCS_PAGE: Final = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Environment Parity console API</title>
<link rel="stylesheet" href="/docs/assets/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/docs/assets/swagger-ui-bundle.js"></script>
<script src="/docs/init.js"></script></body></html>
"""
DOCS_INIT: Final = (
    'window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui", '
    "deepLinking: true, presets: [SwaggerUIBundle.presets.apis]});\n"
)


_SECURITY_HEADERS: Final = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
)


class SecurityHeaders:
    """Headers every response carries unless it set its own (pure ASGI: the body stream is left
    alone, so the body cap's refusal reaches the route's error handling)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [(k, v) for k, v in _SECURITY_HEADERS if k not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)


def is_api(request: Request) -> bool:
    return request.url.path.startswith("/api/")


def error_json(status: int, body: ErrorBody) -> JSONResponse:
    return JSONResponse(ErrorOut(error=body).model_dump(exclude_none=True), status_code=status)


async def on_parity_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ParityError)
    status = status_of(exc)
    if status >= 500:
        logger.opt(exception=exc).error("{} {} failed", request.method, request.url.path)
    if is_api(request):
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        response = error_json(status, ErrorBody(code=exc.code, message=exc.message, hint=exc.hint))
        if headers:
            response.headers.update(headers)
        if isinstance(exc, TooManySignIns):
            response.headers["Retry-After"] = str(exc.retry_after)
        return response
    if isinstance(exc, Unauthenticated):
        # Expired, ended or forged: the cookie is of no more use.
        redirect = RedirectResponse("/signin", status_code=303)
        redirect.delete_cookie(request.app.state.console.settings.cookie_name)
        return redirect
    return dashboard.error_page(request, status, exc.message)


def _field_name(loc: tuple[int | str, ...]) -> str:
    # ("body", "environment") -> "environment"; ("path", "project_id") -> "project_id".
    parts = [str(part) for part in loc[1:]] if len(loc) > 1 else [str(part) for part in loc]
    return ".".join(parts) or "body"


async def on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    fields = [
        FieldError(field=_field_name(tuple(error.get("loc", ()))), message=str(error.get("msg")))
        for error in exc.errors()
    ]
    message = "; ".join(f"{f.field}: {f.message}" for f in fields) or "invalid request"
    if is_api(request):
        hint = "each entry of `fields` names a field and what is wrong with it"
        body = ErrorBody(code=InvalidInput.code, message=message, hint=hint, fields=fields)
        return error_json(422, body)
    return dashboard.error_page(request, 422, message)


_HTTP_CODES: Final = {
    404: ("NOT_FOUND", "check the path against /openapi.json"),
    405: ("METHOD_NOT_ALLOWED", "the Allow header lists the methods this path takes"),
    413: (TOO_LARGE, None),
}


_METHODS: Final = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(request: Request) -> list[str]:
    """Every method some route takes on this path (Starlette's 405 names only the first route's):
    each method is tried against the app's routes as the router itself would."""
    routes = request.app.router.routes
    scope = {"type": "http", "path": request.url.path, "root_path": ""}
    return [
        method
        for method in _METHODS
        if any(route.matches({**scope, "method": method})[0] is Match.FULL for route in routes)
    ]


async def on_http_error(request: Request, exc: Exception) -> Response:
    """Framework errors (unknown route, wrong method, unreadable body) in the API's error shape."""
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    headers = dict(exc.headers or {})
    if status == 405:
        headers["Allow"] = ", ".join(allowed_methods(request))
    if not is_api(request):
        page = dashboard.error_page(request, status, str(exc.detail))
        page.headers.update(headers)
        return page
    if status == 400:
        # FastAPI's "error parsing the body" (e.g. not UTF-8): bad input, like malformed JSON.
        body = ErrorBody(
            code="INVALID_INPUT",
            message="the request body could not be read as JSON",
            hint="send a UTF-8 JSON object with Content-Type: application/json",
        )
        return error_json(422, body)
    code, hint = _HTTP_CODES.get(status, ("HTTP_ERROR", None))
    if status == 413:
        limit = request.app.state.console.settings.max_body_bytes
        hint = f"send at most {limit} bytes (CONSOLE_MAX_BODY_BYTES)"
    response = error_json(status, ErrorBody(code=code, message=str(exc.detail), hint=hint))
    response.headers.update(headers)
    return response


def create_app(
    settings: ConsoleSettings,
    platform: PlatformSettings,
    *,
    database: Database | None = None,
    local: bool = False,
) -> FastAPI:
    """The console. Given `database` (already open), the app uses it; otherwise it opens and
    closes its own pool on `platform.database_url` with the app's lifespan.

    `local` (see :func:`console.settings.is_local_run`) allows the development defaults; without
    it, settings unsafe to deploy raise :class:`console.settings.UnsafeSettings`.
    """
    settings = settings.for_run(local=local)
    owns_db = database is None
    db = database or Database(
        platform.database_url,
        min_size=platform.db_pool_min_size,
        max_size=platform.db_pool_max_size,
        name="console",
        prepared_statements=platform.db_prepared_statements,
    )
    auth = Authenticator(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.uses_dev_secret:
            logger.warning(
                "CONSOLE_JWT_SECRET is the built-in development secret: accepted in this local "
                "run only (loopback binding or embedded database, no Supabase settings)"
            )
        if owns_db:
            await db.open()
        try:
            yield
        finally:
            if owns_db:
                await db.close()

    app = FastAPI(
        title="Environment Parity console",
        version="1",
        summary="Projects, API keys and webhooks, each in prod, dev or staging.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.console = Console(
        settings=settings,
        db=db,
        auth=auth,
        csrf=Csrf(settings.jwt_secret),
        sign_in=build_sign_in(settings, db, auth),
        throttle=SignInThrottle(settings, platform),
        templates=Jinja2Templates(directory=HERE / "templates"),
        platform=platform,
        flash=FlashBox(settings.jwt_secret),
    )
    app.add_exception_handler(ParityError, on_parity_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, bool]:
        return {"ok": True}

    if settings.docs:
        # Swagger UI from the installed swagger-ui-py package: nothing loads from elsewhere.
        @app.get("/docs", include_in_schema=False)
        async def docs() -> HTMLResponse:
            return HTMLResponse(DOCS_PAGE, headers={"Content-Security-Policy": DOCS_CSP})

        @app.get("/docs/init.js", include_in_schema=False)
        async def docs_init() -> Response:
            return Response(DOCS_INIT, media_type="text/javascript")

        app.mount("/docs/assets", StaticFiles(directory=SWAGGER_UI), name="docs-assets")

    app.include_router(api.router)
    app.include_router(dashboard.router)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.add_middleware(SecurityHeaders)
    # Outermost, so that nothing reads a body before the cap applies.
    app.add_middleware(BodyCap, max_bytes=settings.max_body_bytes)
    return app
