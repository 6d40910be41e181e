"""Deployment-safe sessions: the development secret only in local runs, tokens verified through
the effective JWKS (Supabase's by default, served here by a real HTTP server on loopback), and
sessions that end on the server when the user signs out, or when the user is gone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import jwt
import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import FastAPI
from jwt.algorithms import RSAAlgorithm
from playwright.sync_api import sync_playwright

from console.app import create_app
from console.settings import (
    DEV_JWT_SECRET,
    ConsoleSettings,
    UnsafeSettings,
    is_embedded_database,
    is_local_run,
)
from shared.db import Database
from shared.settings import PlatformSettings
from tests.conftest import MakeUser
from tests.console.conftest import TEST_SECRET, console_env, json_server, serve
from tests.console.test_browser import CHROMIUM_ARGS, DEFAULT_CHROMIUM

PASSWORD = "correct horse battery"


def user_claims(user_id: Any, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    return {
        "sub": str(user_id),
        "role": "authenticated",
        "aud": "authenticated",
        "email": "ada@example.com",
        "iat": now,
        "exp": now + 600,
        **overrides,
    }


# Starting, or refusing to ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        # Bound beyond loopback, no secret at all.
        (["--host", "0.0.0.0"], {}, "CONSOLE_JWT_SECRET is not set"),
        # Supabase settings make it a deployment even on loopback: the public secret is refused.
        (
            ["--host", "127.0.0.1"],
            {
                "SUPABASE_URL": "http://127.0.0.1:9",
                "SUPABASE_ANON_KEY": "anon",
                "CONSOLE_JWT_SECRET": DEV_JWT_SECRET,
            },
            "CONSOLE_JWT_SECRET is the built-in development secret",
        ),
        # A JWKS to verify with, but local sign-in would have nothing to sign with.
        (
            ["--host", "127.0.0.1"],
            {"CONSOLE_JWKS_URL": "http://127.0.0.1:9/jwks.json"},
            "CONSOLE_JWT_SECRET is not set: local sign-in",
        ),
    ],
)
def test_the_console_refuses_to_start_when_unsafe(
    database_url: str, args: list[str], env: dict[str, str], named: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "console", "--port", "0", *args],
        env=console_env(DATABASE_URL=database_url, **env),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr.decode()
    stderr = result.stderr.decode()
    assert stderr.startswith("usage: python -m console")
    assert named in stderr


def test_local_runs_are_loopback_or_embedded_without_supabase() -> None:
    plain = ConsoleSettings(_env_file=None)
    tcp = "postgresql://postgres@db.internal:5432/postgres"
    embedded = "postgresql://postgres@localhost:5432/postgres?host=/tmp/pgserver"
    assert is_embedded_database(embedded) and not is_embedded_database(tcp)
    assert is_local_run(plain, database_url=tcp, host="127.0.0.1")
    assert is_local_run(plain, database_url=tcp, host="::1")
    assert is_local_run(plain, database_url=embedded, host="0.0.0.0")
    assert not is_local_run(plain, database_url=tcp, host="0.0.0.0")
    supabase = ConsoleSettings(_env_file=None, supabase_url="https://x.supabase.co")
    assert not is_local_run(supabase, database_url=embedded, host="127.0.0.1")

    local = plain.for_run(local=True)
    assert local.uses_dev_secret and not local.cookie_secure and local.allow_signup and local.docs
    deployed = ConsoleSettings(_env_file=None, jwt_secret=TEST_SECRET).for_run(local=False)
    assert deployed.cookie_secure and not deployed.allow_signup and not deployed.docs
    # Explicit settings win over the run's defaults.
    chosen = ConsoleSettings(
        _env_file=None, jwt_secret=TEST_SECRET, cookie_secure=False, allow_signup=True
    ).for_run(local=False)
    assert not chosen.cookie_secure and chosen.allow_signup
    with pytest.raises(UnsafeSettings, match="CONSOLE_JWT_SECRET"):
        plain.for_run(local=False)


# The effective JWKS: Supabase's by default -------------------------------------------------------


@pytest.fixture
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def supabase_requests() -> list[tuple[str, str, dict[str, str]]]:
    return []


@pytest.fixture
def supabase_url(
    rsa_key: rsa.RSAPrivateKey, supabase_requests: list[tuple[str, str, dict[str, str]]]
) -> Iterator[str]:
    """A stand-in for a Supabase project on loopback: its JWKS at the standard path, and the
    sign-out endpoint (which records what it was sent)."""
    jwk = json.loads(RSAAlgorithm.to_jwk(rsa_key.public_key()))
    document = {"keys": [{**jwk, "kid": "k1", "alg": "RS256", "use": "sig"}]}

    def answer(method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, object]:
        supabase_requests.append((method, path, headers))
        if method == "GET" and path == "/auth/v1/.well-known/jwks.json":
            return 200, document
        if method == "POST" and path.startswith("/auth/v1/logout"):
            return 200, {}
        return 404, {"error": "not_found"}

    with json_server(answer) as base:
        yield base


@pytest.fixture
def supabase_app(supabase_url: str, database_url: str, db: Database) -> FastAPI:
    # A deployment: no CONSOLE_JWT_SECRET, no local run; only Supabase's settings.
    settings = ConsoleSettings(
        _env_file=None, supabase_url=supabase_url, supabase_anon_key="anon-key"
    )
    platform = PlatformSettings(_env_file=None, database_url=database_url)
    return create_app(settings, platform, database=db)


async def test_rs256_tokens_verify_through_supabases_jwks_and_the_dev_secret_does_not(
    supabase_app: FastAPI,
    rsa_key: rsa.RSAPrivateKey,
    make_user: MakeUser,
    supabase_requests: list[tuple[str, str, dict[str, str]]],
) -> None:
    ada = await make_user("ada@example.com")
    transport = httpx.ASGITransport(app=supabase_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://console.test") as client:
        token = jwt.encode(user_claims(ada.id), rsa_key, algorithm="RS256", headers={"kid": "k1"})
        me = await client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
        assert me.status_code == 200, me.text
        assert me.json()["user_id"] == str(ada.id)
        assert ("GET", "/auth/v1/.well-known/jwks.json") in [r[:2] for r in supabase_requests]

        # The attack: a token signed with the development secret, which is in the source.
        forged = jwt.encode(user_claims(ada.id), DEV_JWT_SECRET, algorithm="HS256")
        refused = await client.get(
            "/api/v1/projects", headers={"Authorization": f"Bearer {forged}"}
        )
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "UNAUTHENTICATED"

        # Sign-out ends the session here and, best effort, at Supabase Auth.
        out = await client.post(
            "/api/v1/auth/signout", headers={"Authorization": f"Bearer {token}"}
        )
        assert out.status_code == 204
        [logout] = [r for r in supabase_requests if r[1].startswith("/auth/v1/logout")]
        assert logout[0] == "POST" and "scope=local" in logout[1]
        assert logout[2]["authorization"] == f"Bearer {token}"
        assert logout[2]["apikey"] == "anon-key"
        again = await client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
        assert again.status_code == 401
        assert "ended" in again.json()["error"]["message"]


# Sessions that end -------------------------------------------------------------------------------


async def test_sign_out_kills_the_token_in_the_api(client: httpx.AsyncClient) -> None:
    signed = await client.post(
        "/api/v1/auth/token", json={"email": "ada@example.com", "password": PASSWORD}
    )
    assert signed.status_code == 200
    token = signed.json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    assert (await client.get("/api/v1/me", headers=headers)).status_code == 200
    second = (
        await client.post(
            "/api/v1/auth/token", json={"email": "ada@example.com", "password": PASSWORD}
        )
    ).json()["access_token"]

    assert (await client.post("/api/v1/auth/signout", headers=headers)).status_code == 204
    for method, path in [("GET", "/api/v1/me"), ("GET", "/api/v1/projects")]:
        dead = await client.request(method, path, headers=headers)
        assert dead.status_code == 401
        assert dead.json()["error"]["code"] == "UNAUTHENTICATED"
        assert dead.headers["www-authenticate"] == "Bearer"
    # Only that session ended: another sign-in of the same user still works.
    other = await client.get("/api/v1/me", headers={"Authorization": f"Bearer {second}"})
    assert other.status_code == 200


async def test_a_token_of_a_deleted_user_gets_a_clean_401(
    client: httpx.AsyncClient, database_url: str
) -> None:
    signed = await client.post(
        "/api/v1/auth/token", json={"email": "gone@example.com", "password": PASSWORD}
    )
    headers = {"Authorization": f"Bearer {signed.json()['access_token']}"}
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("delete from auth.users where email = 'gone@example.com'")
    created = await client.post("/api/v1/projects", json={"name": "x"}, headers=headers)
    assert created.status_code == 401
    assert created.json() == {
        "error": {
            "code": "UNAUTHENTICATED",
            "message": "the session's user no longer exists",
            "hint": created.json()["error"]["hint"],
        }
    }
    assert "violates" not in created.text


async def test_an_expired_session_sends_the_browser_to_sign_in(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    ada = await make_user("ada@example.com")
    expired = jwt.encode(
        user_claims(ada.id, exp=int(time.time()) - 5), TEST_SECRET, algorithm="HS256"
    )
    client.cookies.set("parity_session", expired)
    page = await client.get("/projects")
    assert page.status_code == 303
    assert page.headers["location"] == "/signin"
    assert 'parity_session=""' in page.headers["set-cookie"]
    api = await client.get("/api/v1/projects")
    assert api.status_code == 401


def test_the_cookie_is_secure_outside_local_runs(database_url: str, db: Database) -> None:
    platform = PlatformSettings(_env_file=None, database_url=database_url)
    deployed = create_app(
        ConsoleSettings(_env_file=None, jwt_secret=TEST_SECRET, allow_signup=True), platform
    )
    local = create_app(ConsoleSettings(_env_file=None), platform, local=True)
    for app, secure in [(deployed, True), (local, False)]:
        with serve(app) as base, httpx.Client(base_url=base) as http:
            page = http.get("/signin")
            assert ("Secure" in page.headers["set-cookie"]) is secure
            nonce = page.cookies["parity_csrf"]
            token = page.text.split('name="csrf_token" value="')[1].split('"')[0]
            # The nonce cookie sent by hand: a client only sends a Secure cookie over HTTPS.
            signed = httpx.post(
                f"{base}/signin",
                data={
                    "email": f"{uuid4().hex}@example.com",
                    "password": PASSWORD,
                    "csrf_token": token,
                },
                headers={"Cookie": f"parity_csrf={nonce}"},
            )
            assert signed.status_code == 303
            session_cookie = [
                c for c in signed.headers.get_list("set-cookie") if c.startswith("parity_session=")
            ]
            assert session_cookie and ("Secure" in session_cookie[0]) is secure
            assert "HttpOnly" in session_cookie[0]


@pytest.mark.browser
def test_sign_out_in_the_browser_ends_the_session_on_the_server(served_console: str) -> None:
    chromium = Path(os.environ.get("PARITY_CHROMIUM", DEFAULT_CHROMIUM))
    if not chromium.exists():
        pytest.skip(f"Chromium not found at {chromium}")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(chromium), headless=True, args=CHROMIUM_ARGS
        )
        try:
            context = browser.new_context(base_url=served_console)
            context.set_default_timeout(15_000)
            page = context.new_page()
            page.goto("/signin")
            page.fill("input[name=email]", "ada@example.com")
            page.fill("input[name=password]", PASSWORD)
            page.click("#signin-form button[type=submit]")
            page.wait_for_url("**/projects")
            [cookie] = [c for c in context.cookies() if c["name"] == "parity_session"]
            stolen = cookie["value"]
            page.click("form[action='/signout'] button")
            page.wait_for_url("**/signin")
            # The old token, put back (as a thief who copied it would), no longer opens anything.
            context.add_cookies(
                [{"name": "parity_session", "value": stolen, "url": served_console}]
            )
            page.goto("/projects")
            assert page.url.endswith("/signin")
            api = httpx.get(
                f"{served_console}/api/v1/me", headers={"Authorization": f"Bearer {stolen}"}
            )
            assert api.status_code == 401
        finally:
            browser.close()


@pytest.mark.parametrize("role", ["anon", "authenticated"])
def test_the_revocation_list_is_out_of_reach_of_api_roles(database_url: str, role: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        for statement in [
            "select count(*) from private.revoked_sessions",
            "delete from private.revoked_sessions",
            "insert into private.revoked_sessions (token_id, user_id, expires_at)"
            " values ('x', gen_random_uuid(), now())",
        ]:
            with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
                conn.execute(f"set local role {role}")
                conn.execute(statement)
        exposed = conn.execute(
            "select relrowsecurity from pg_class where oid = 'private.revoked_sessions'::regclass"
        ).fetchone()
        assert exposed == (True,)
