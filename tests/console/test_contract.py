"""The API's error contract as the README and the OpenAPI schema state it: one error shape, 422
for bad input (malformed JSON included), 409 for conflicts, 405 with every allowed method, naive
expiry times taken as UTC; and /docs served from the installed Swagger UI under a CSP."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import sync_playwright

from console.app import create_app
from console.settings import ConsoleSettings
from shared.db import Database
from shared.settings import PlatformSettings
from tests.console.conftest import TEST_SECRET, SignInAs, serve
from tests.console.test_browser import CHROMIUM_ARGS, DEFAULT_CHROMIUM


def assert_error_shape(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    assert set(error) <= {"code", "message", "hint", "fields"}


async def test_framework_errors_keep_the_shape_and_allow_lists_every_method(
    client: httpx.AsyncClient, sign_in_as: SignInAs
) -> None:
    alice = await sign_in_as("alice@example.com")
    for path, allowed in [
        ("/api/v1/projects", "GET, POST"),
        ("/api/v1/projects/00000000-0000-4000-8000-000000000000", "GET, PATCH, DELETE"),
        ("/api/v1/projects/00000000-0000-4000-8000-000000000000/keys", "GET, POST"),
        ("/api/v1/projects/00000000-0000-4000-8000-000000000000/webhook-endpoints", "GET, POST"),
        ("/api/v1/auth/token", "POST"),
    ]:
        for method in ("OPTIONS", "PUT"):
            answer = await client.request(method, path, headers=alice.headers)
            assert_error_shape(answer, 405, "METHOD_NOT_ALLOWED")
            assert answer.headers["allow"] == allowed, (method, path)
    missing = await client.get("/api/v1/nothing", headers=alice.headers)
    assert_error_shape(missing, 404, "NOT_FOUND")
    assert missing.json()["error"]["hint"]


async def test_unreadable_bodies_are_bad_input(
    client: httpx.AsyncClient, sign_in_as: SignInAs
) -> None:
    alice = await sign_in_as("alice@example.com")
    headers = {**alice.headers, "Content-Type": "application/json"}
    for body in [b'{"name": ', b"\xff\xfe not utf-8", b"[1, 2"]:
        answer = await client.post("/api/v1/projects", content=body, headers=headers)
        assert_error_shape(answer, 422, "INVALID_INPUT")
        assert answer.json()["error"]["hint"]
    short = await client.post(
        "/api/v1/auth/token", json={"email": "ada@example.com", "password": "1234567"}
    )
    assert_error_shape(short, 422, "INVALID_INPUT")
    schema = (await client.get("/openapi.json")).json()["components"]["schemas"]
    password = schema["Credentials"]["properties"]["password"]
    assert (password["minLength"], password["maxLength"]) == (8, 200)


async def test_naive_expiry_is_utc_and_a_bare_date_is_refused(
    client: httpx.AsyncClient, sign_in_as: SignInAs
) -> None:
    alice = await sign_in_as("alice@example.com")
    project = await client.post("/api/v1/projects", json={"name": "p"}, headers=alice.headers)
    keys = f"/api/v1/projects/{project.json()['id']}/keys"
    naive = await client.post(
        keys, json={"expires_at": "2030-01-01T00:00:00"}, headers=alice.headers
    )
    assert naive.status_code == 201, naive.text
    expires = datetime.fromisoformat(naive.json()["key"]["expires_at"].replace("Z", "+00:00"))
    assert expires == datetime(2030, 1, 1, tzinfo=UTC)
    for bad in ["2030-01-01", 1893456000, "2000-01-01T00:00:00Z"]:
        refused = await client.post(keys, json={"expires_at": bad}, headers=alice.headers)
        assert_error_shape(refused, 422, "INVALID_INPUT")
    # Rotating a revoked key is a conflict with its state, not bad input.
    key_id = naive.json()["key"]["id"]
    assert (await client.post(f"/api/v1/keys/{key_id}/revoke", headers=alice.headers)).is_success
    again = await client.post(f"/api/v1/keys/{key_id}/rotate", json={}, headers=alice.headers)
    assert_error_shape(again, 409, "CONFLICT")


def docs_app(database_url: str, db: Database, **console: Any) -> httpx.AsyncClient:
    settings = ConsoleSettings(_env_file=None, jwt_secret=TEST_SECRET, **console)
    app = create_app(
        settings, PlatformSettings(_env_file=None, database_url=database_url), database=db
    )
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://console.test")


async def test_docs_come_from_the_installed_package_under_a_csp(
    database_url: str, db: Database
) -> None:
    async with docs_app(database_url, db, docs=True) as client:
        page = await client.get("/docs")
        assert page.status_code == 200
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "default-src 'self'" in csp
        assert "cdn" not in page.text.lower() and "https://" not in page.text
        script = await client.get("/docs/assets/swagger-ui-bundle.js")
        assert script.status_code == 200 and "SwaggerUIBundle" in script.text
        assert (await client.get("/docs/init.js")).status_code == 200
    # Outside local runs, off unless asked for.
    async with docs_app(database_url, db) as client:
        assert (await client.get("/docs")).status_code == 404
        assert (await client.get("/docs/assets/swagger-ui-bundle.js")).status_code == 404


@pytest.mark.browser
def test_docs_render_in_a_browser_without_csp_violations(
    console_settings: ConsoleSettings, platform_settings: PlatformSettings
) -> None:
    chromium = Path(os.environ.get("PARITY_CHROMIUM", DEFAULT_CHROMIUM))
    if not chromium.exists():
        pytest.skip(f"Chromium not found at {chromium}")
    with serve(create_app(console_settings, platform_settings)) as base, sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(chromium), headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = browser.new_page()
            problems: list[str] = []
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            outside: list[str] = []
            page.on(
                "request",
                lambda r: outside.append(r.url) if not r.url.startswith(base) else None,
            )
            page.goto(f"{base}/docs")
            page.locator(".swagger-ui .info .title").wait_for(timeout=20_000)
            assert (
                "Environment Parity console"
                in page.locator(".swagger-ui .info .title").inner_text()
            )
            page.locator(".opblock-tag", has_text="projects").first.wait_for()
            assert not [p for p in problems if "Content Security Policy" in p], problems
            assert not outside, outside
        finally:
            browser.close()
