"""The console application: the management API, the dashboard and sign-in, in one FastAPI app."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from loguru import logger
from starlette.exceptions import HTTPException as StarletteHTTPException

from console import api, dashboard
from console.auth import Authenticator, Csrf, Unauthenticated
from console.context import Console
from console.errors import status_of
from console.flash import FlashBox
from console.schemas import ErrorBody, ErrorOut, FieldError
from console.settings import ConsoleSettings
from console.signin import LocalSignIn, SignIn, SupabaseSignIn
from shared.db import Database
from shared.errors import InvalidInput, ParityError
from shared.settings import PlatformSettings

HERE: Final = Path(__file__).resolve().parent


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
        return response
    if isinstance(exc, Unauthenticated):
        return RedirectResponse("/signin", status_code=303)
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
        return error_json(422, ErrorBody(code=InvalidInput.code, message=message, fields=fields))
    return dashboard.error_page(request, 422, message)


_HTTP_CODES: Final = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED", 400: "BAD_REQUEST"}


async def on_http_error(request: Request, exc: Exception) -> Response:
    """Framework errors (unknown route, wrong method, unreadable body) in the API's error shape."""
    assert isinstance(exc, StarletteHTTPException)
    if not is_api(request):
        return dashboard.error_page(request, exc.status_code, str(exc.detail))
    code = _HTTP_CODES.get(exc.status_code, "HTTP_ERROR")
    response = error_json(exc.status_code, ErrorBody(code=code, message=str(exc.detail)))
    response.headers.update(exc.headers or {})
    return response


def build_sign_in(settings: ConsoleSettings, db: Database, auth: Authenticator) -> SignIn:
    if settings.uses_supabase_auth:
        assert settings.supabase_url and settings.supabase_anon_key
        return SupabaseSignIn(settings.supabase_url, settings.supabase_anon_key)
    return LocalSignIn(db, auth)


def create_app(
    settings: ConsoleSettings,
    platform: PlatformSettings,
    *,
    database: Database | None = None,
) -> FastAPI:
    """The console. Given `database` (already open), the app uses it; otherwise it opens and
    closes its own pool on `platform.database_url` with the app's lifespan."""
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
                "CONSOLE_JWT_SECRET is the built-in development secret: set your own outside "
                "local runs"
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
    )
    app.state.console = Console(
        settings=settings,
        db=db,
        auth=auth,
        csrf=Csrf(settings.jwt_secret),
        sign_in=build_sign_in(settings, db, auth),
        templates=Jinja2Templates(directory=HERE / "templates"),
        platform=platform,
        flash=FlashBox(settings.jwt_secret),
    )
    app.add_exception_handler(ParityError, on_parity_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)

    @app.middleware("http")
    async def security_headers(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        return response

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, bool]:
        return {"ok": True}

    app.include_router(api.router)
    app.include_router(dashboard.router)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    return app
