"""The dashboard over HTTP: sign-in with CSRF-protected forms, the session cookie, pages rendered
as the signed-in user, secrets shown once and prod's typed confirmations."""

from __future__ import annotations

import re

import httpx

from console.context import CSRF_COOKIE, CSRF_FIELD
from shared.db import Database

TOKEN_IN_PAGE = re.compile(r'id="new-key-token">(nm_[A-Za-z0-9_]+)<')


def csrf_token(page: httpx.Response) -> str:
    match = re.search(rf'name="{CSRF_FIELD}" value="([0-9a-f]+)"', page.text)
    assert match is not None, "the page has no CSRF field"
    return match[1]


async def sign_in(client: httpx.AsyncClient, email: str, password: str) -> httpx.Response:
    page = await client.get("/signin")
    return await client.post(
        "/signin",
        data={"email": email, "password": password, CSRF_FIELD: csrf_token(page)},
    )


async def test_sign_in_creates_the_user_and_sets_a_safe_session_cookie(
    client: httpx.AsyncClient,
) -> None:
    assert (await client.get("/projects")).headers["location"] == "/signin"
    page = await client.get("/signin")
    assert page.status_code == 200
    forged = await client.post(
        "/signin", data={"email": "a@example.com", "password": "secret-pass", CSRF_FIELD: "0" * 64}
    )
    assert forged.status_code == 403
    assert "parity_session" not in forged.cookies

    response = await sign_in(client, "Ada@Example.com", "correct horse")
    assert response.status_code == 303
    assert response.headers["location"] == "/projects"
    cookie = next(
        v for k, v in response.headers.multi_items() if k == "set-cookie" and "parity_session" in v
    )
    assert "HttpOnly" in cookie
    assert "SameSite=lax" in cookie
    me = await client.get("/api/v1/me")
    assert me.json()["email"] == "ada@example.com"

    client.cookies.delete("parity_session")
    wrong = await sign_in(client, "ada@example.com", "wrong password")
    assert wrong.status_code == 401
    assert "wrong email or password" in wrong.text
    short = await sign_in(client, "ada@example.com", "short")
    assert short.status_code == 422
    assert (await sign_in(client, "ada@example.com", "correct horse")).status_code == 303


async def test_unsafe_api_calls_with_the_cookie_need_the_csrf_header(
    client: httpx.AsyncClient,
) -> None:
    await sign_in(client, "ada@example.com", "correct horse")
    refused = await client.post("/api/v1/projects", json={"name": "x"})
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "CSRF_FAILED"
    page = await client.get("/projects")
    accepted = await client.post(
        "/api/v1/projects", json={"name": "x"}, headers={"X-CSRF-Token": csrf_token(page)}
    )
    assert accepted.status_code == 201
    assert client.cookies.get(CSRF_COOKIE)


async def test_project_pages_badges_banner_and_secrets_shown_once(
    client: httpx.AsyncClient,
) -> None:
    await sign_in(client, "ada@example.com", "correct horse")
    listing = await client.get("/projects")
    assert '<option value="prod" selected>Production</option>' in listing.text
    assert "Rate limit: 10x the project&#39;s base limit" in listing.text
    token = csrf_token(listing)

    ids = {}
    for name, environment in [("shop", "prod"), ("lab", "dev"), ("qa", "staging")]:
        created = await client.post(
            "/projects", data={"name": name, "environment": environment, CSRF_FIELD: token}
        )
        assert created.status_code == 303
        ids[environment] = created.headers["location"].rsplit("/", 1)[1]
    bad = await client.post(
        "/projects", data={"name": "x", "environment": "production", CSRF_FIELD: token}
    )
    assert bad.status_code == 422
    assert "invalid environment &#39;production&#39;" in bad.text

    listing = await client.get("/projects")
    for environment, label in [
        ("prod", "Production"),
        ("dev", "Development"),
        ("staging", "Staging"),
    ]:
        assert (
            f'class="badge badge-{environment}" data-environment="{environment}">{label}<'
            in listing.text
        )
        page = await client.get(f"/projects/{ids[environment]}")
        assert f'badge-{environment}" data-environment="{environment}">{label}<' in page.text
        assert ('id="prod-warning"' in page.text) == (environment == "prod")

    created = await client.post(
        f"/projects/{ids['dev']}/keys", data={"name": "ci", "kind": "sk", CSRF_FIELD: token}
    )
    assert created.status_code == 200
    assert created.headers["cache-control"] == "no-store"
    match = TOKEN_IN_PAGE.search(created.text)
    assert match is not None
    assert match[1].startswith("nm_dev_sk_")
    again = await client.get(f"/projects/{ids['dev']}")
    assert match[1] not in again.text
    assert f"nm_dev_sk_…{match[1][-4:]}" in again.text


async def test_destructive_actions_on_prod_need_the_typed_name(client: httpx.AsyncClient) -> None:
    await sign_in(client, "ada@example.com", "correct horse")
    token = csrf_token(await client.get("/projects"))
    created = await client.post(
        "/projects", data={"name": "shop", "environment": "prod", CSRF_FIELD: token}
    )
    project = created.headers["location"]
    await client.post(f"{project}/keys", data={"kind": "sk", CSRF_FIELD: token})
    [key] = (await client.get(f"/api/v1{project}/keys")).json()

    unconfirmed = await client.post(f"{project}/keys/{key['id']}/revoke", data={CSRF_FIELD: token})
    assert unconfirmed.status_code == 422
    assert "type the project name &#39;shop&#39; to confirm" in unconfirmed.text
    mistyped = await client.post(
        f"{project}/delete", data={"confirm_name": "Shop", CSRF_FIELD: token}
    )
    assert mistyped.status_code == 422
    assert (await client.get(f"/api/v1/keys/{key['id']}")).json()["status"] == "active"

    confirmed = await client.post(
        f"{project}/keys/{key['id']}/revoke", data={"confirm_name": "shop", CSRF_FIELD: token}
    )
    assert confirmed.status_code == 303
    assert (await client.get(f"/api/v1/keys/{key['id']}")).json()["status"] == "revoked"
    deleted = await client.post(
        f"{project}/delete", data={"confirm_name": "shop", CSRF_FIELD: token}
    )
    assert deleted.headers["location"] == "/projects"
    assert (await client.get(project)).status_code == 404


async def test_another_users_project_page_is_not_found(client: httpx.AsyncClient) -> None:
    await sign_in(client, "ada@example.com", "correct horse")
    token = csrf_token(await client.get("/projects"))
    created = await client.post("/projects", data={"name": "mine", CSRF_FIELD: token})
    project = created.headers["location"]
    client.cookies.clear()
    await sign_in(client, "bob@example.com", "another pass")
    token = csrf_token(await client.get("/projects"))
    assert (await client.get(project)).status_code == 404
    for action in ("keys", "delete", "test-event", "webhooks"):
        response = await client.post(
            f"{project}/{action}",
            data={"confirm_name": "mine", "url": "https://x.test/", CSRF_FIELD: token},
        )
        assert response.status_code == 404, action
    assert "mine" not in (await client.get("/projects")).text


async def test_form_input_postgres_cannot_store_is_a_clear_422(client: httpx.AsyncClient) -> None:
    await sign_in(client, "ada@example.com", "correct horse")
    token = csrf_token(await client.get("/projects"))
    response = await client.post(
        "/projects", data={"name": "a\x00b", "environment": "dev", CSRF_FIELD: token}
    )
    assert response.status_code == 422
    assert "NUL" in response.text
    assert "a\x00b" not in (await client.get("/projects")).text


async def test_webhooks_delivery_log_and_suspension_on_the_project_page(
    client: httpx.AsyncClient, db: Database
) -> None:
    await sign_in(client, "ada@example.com", "correct horse")
    token = csrf_token(await client.get("/projects"))
    project = (
        await client.post(
            "/projects", data={"name": "lab", "environment": "dev", CSRF_FIELD: token}
        )
    ).headers["location"]
    pid = project.rsplit("/", 1)[1]

    created = await client.post(
        f"{project}/webhooks",
        data={"url": "https://example.com/hook", "event_types": "webhook.test", CSRF_FIELD: token},
    )
    assert created.status_code == 200
    assert created.headers["cache-control"] == "no-store"
    secret = re.search(r'id="new-endpoint-secret">(whsec_[A-Za-z0-9+/=]+)<', created.text)
    assert secret is not None
    page = await client.get(project)
    assert secret[1] not in page.text
    assert "https://example.com/hook" in page.text

    sent = await client.post(f"{project}/test-event", data={CSRF_FIELD: token})
    assert sent.status_code == 303
    page = await client.get(sent.headers["location"])
    assert "Test event sent" in page.text
    [delivery_id] = re.findall(r'data-delivery-id="([0-9a-f-]+)"', page.text)
    assert "/redeliver" not in page.text  # pending deliveries are not offered for redelivery

    async with db.as_service() as conn:
        await conn.execute(
            "insert into public.webhook_attempts"
            " (delivery_id, attempt_number, started_at, duration_ms, status_code)"
            " values (%s, 1, now(), 31, 503)",
            (delivery_id,),
        )
        await conn.execute(
            "update public.webhook_deliveries set status = 'exhausted', attempts = 1,"
            " last_status_code = 503, completed_at = now() where id = %s",
            (delivery_id,),
        )
        await conn.execute(
            "insert into public.suspensions (project_id, reason) values (%s, 'cap of 10 passed')",
            (pid,),
        )
    page = await client.get(project)
    assert "#1" in page.text and "503 in 31 ms" in page.text
    assert "Suspended since" in page.text and "cap of 10 passed" in page.text
    redelivered = await client.post(
        f"{project}/deliveries/{delivery_id}/redeliver", data={CSRF_FIELD: token}
    )
    assert redelivered.status_code == 303
    detail = (await client.get(f"/api/v1/deliveries/{delivery_id}")).json()
    assert detail["delivery"]["status"] == "pending"
