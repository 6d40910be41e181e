"""Sign-in through Supabase Auth with the `supabase` client, when SUPABASE_URL and an anon key
are set. Supabase itself is not reachable from tests: a small GoTrue-compatible server on a free
loopback port answers the password grant the client sends, with a token signed by the project's
JWT secret, exactly what the console then verifies."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import jwt
import pytest
from fastapi import FastAPI

from console.app import create_app
from console.settings import ConsoleSettings
from shared.db import Database
from shared.settings import PlatformSettings
from tests.conftest import MakeUser, User
from tests.console.conftest import TEST_SECRET, JsonAnswer, json_server
from tests.console.test_dashboard import csrf_token

PASSWORD = "correct horse"


def gotrue(users: dict[str, User]) -> JsonAnswer:
    """Answers POST /auth/v1/token?grant_type=password as Supabase Auth does."""

    def answer(method: str, path: str, headers: dict[str, str], raw: bytes) -> tuple[int, object]:
        body = json.loads(raw or b"{}")
        user = users.get(body.get("email", ""))
        if (
            method != "POST"
            or not path.startswith("/auth/v1/token?grant_type=password")
            or headers.get("apikey") != "anon-key"
            or user is None
            or body.get("password") != PASSWORD
        ):
            return 400, {"error": "invalid_grant", "error_description": "Invalid login"}
        now = int(time.time())
        claims = {"sub": str(user.id), "email": user.email, "role": "authenticated"}
        token = jwt.encode(
            {**claims, "aud": "authenticated", "iat": now, "exp": now + 3600},
            TEST_SECRET,
            algorithm="HS256",
        )
        return 200, {
            "access_token": token,
            "token_type": "bearer",
            "expires_in": 3600,
            "expires_at": now + 3600,
            "refresh_token": "r1",
            "user": {
                "id": str(user.id),
                "aud": "authenticated",
                "role": "authenticated",
                "email": user.email,
                "app_metadata": {"provider": "email"},
                "user_metadata": {},
                "created_at": "2026-01-01T00:00:00Z",
            },
        }

    return answer


@pytest.fixture
def auth_users() -> dict[str, User]:
    return {}


@pytest.fixture
def supabase_url(auth_users: dict[str, User]) -> Iterator[str]:
    with json_server(gotrue(auth_users)) as base:
        yield base


@pytest.fixture
def supabase_app(supabase_url: str, database_url: str, db: Database) -> FastAPI:
    settings = ConsoleSettings(
        _env_file=None,
        jwt_secret=TEST_SECRET,
        supabase_url=supabase_url,
        supabase_anon_key="anon-key",
        cookie_secure=False,  # plain HTTP in the test
    )
    return create_app(
        settings, PlatformSettings(_env_file=None, database_url=database_url), database=db
    )


async def test_sign_in_goes_through_supabase_auth(
    supabase_app: FastAPI, auth_users: dict[str, User], make_user: MakeUser
) -> None:
    # Supabase Auth owns auth.users there; here the row is made as it would have been at sign-up.
    auth_users["ada@example.com"] = await make_user("ada@example.com")
    transport = httpx.ASGITransport(app=supabase_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://console.test") as client:
        page = await client.get("/signin")
        assert "Supabase Auth" in page.text
        token = csrf_token(page)
        wrong = await client.post(
            "/signin",
            data={"email": "ada@example.com", "password": "nope nope", "csrf_token": token},
        )
        assert wrong.status_code == 401
        assert "wrong email or password" in wrong.text
        unknown = await client.post(
            "/signin", data={"email": "eve@example.com", "password": PASSWORD, "csrf_token": token}
        )
        assert unknown.status_code == 401
        # The same answer: the page does not tell which emails have accounts.
        assert unknown.text.replace("eve@", "ada@") == wrong.text

        ok = await client.post(
            "/signin", data={"email": "ada@example.com", "password": PASSWORD, "csrf_token": token}
        )
        assert ok.status_code == 303
        me = (await client.get("/api/v1/me")).json()
        assert me == {"user_id": str(auth_users["ada@example.com"].id), "email": "ada@example.com"}
        created = await client.post(
            "/api/v1/projects",
            json={"name": "via supabase", "environment": "staging"},
            headers={"X-CSRF-Token": token},
        )
        assert created.status_code == 201
