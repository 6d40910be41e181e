"""The dashboard over HTTP: sign-in with CSRF-protected forms, the session cookie, pages rendered
as the signed-in user, secrets shown once and prod's typed confirmations."""

from __future__ import annotations

import re
from datetime import timedelta
from uuid import uuid4

import httpx
from loguru import logger

from console.context import CSRF_COOKIE, CSRF_FIELD
from console.flash import FLASH_TTL_SECONDS, Flash, FlashBox
from shared.db import Database

TOKEN_IN_PAGE = re.compile(r'id="new-key-value">(nm_[A-Za-z0-9_]+)<')


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


async def create_project(
    client: httpx.AsyncClient, token: str, name: str, environment: str = "prod"
) -> str:
    created = await client.post(
        "/projects", data={"name": name, "environment": environment, CSRF_FIELD: token}
    )
    assert created.status_code == 303
    location: str = created.headers["location"]
    return location


def set_cookie_header(response: httpx.Response, name: str) -> str:
    return next(
        v
        for k, v in response.headers.multi_items()
        if k == "set-cookie" and v.startswith(f"{name}=")
    )


async def count_keys(db: Database, project_id: str) -> int:
    async with db.as_service() as conn:
        cur = await conn.execute(
            "select count(*) as n from public.api_keys where project_id = %s", (project_id,)
        )
        row = await cur.fetchone()
    assert row is not None
    n: int = row["n"]
    return n


async def test_project_pages_badges_banner_and_secrets_shown_once(
    client: httpx.AsyncClient, db: Database
) -> None:
    await sign_in(client, "ada@example.com", "correct horse")
    listing = await client.get("/projects")
    assert '<option value="prod" selected>Production</option>' in listing.text
    assert "Rate limit: 10x the project&#39;s base limit" in listing.text
    token = csrf_token(listing)

    ids = {}
    for name, environment in [("shop", "prod"), ("lab", "dev"), ("qa", "staging")]:
        location = await create_project(client, token, name, environment)
        ids[environment] = location.rsplit("/", 1)[1]
    # A refused form redirects too; the page it lands on says why and keeps what was typed.
    bad = await client.post(
        "/projects", data={"name": "kept", "environment": "production", CSRF_FIELD: token}
    )
    assert bad.status_code == 303
    assert bad.headers["location"] == "/projects#create"
    refused = await client.get("/projects")
    assert "invalid environment &#39;production&#39;" in refused.text
    assert 'name="name" required maxlength="100" value="kept"' in refused.text
    assert "invalid environment" not in (await client.get("/projects")).text

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
        assert page.headers["cache-control"] == "no-store"

    # POST/redirect/GET: the POST answers 303 with the secret in neither the URL nor the page.
    created = await client.post(
        f"/projects/{ids['dev']}/keys", data={"name": "ci", "kind": "sk", CSRF_FIELD: token}
    )
    assert created.status_code == 303
    assert created.headers["location"] == f"/projects/{ids['dev']}#keys"
    assert "nm_" not in created.text
    flash = set_cookie_header(created, "parity_flash")
    assert "HttpOnly" in flash
    assert "Path=/;" in flash
    assert "Max-Age=120" in flash
    assert "nm_dev" not in flash  # encrypted, not merely signed

    shown = await client.get(f"/projects/{ids['dev']}")
    assert shown.headers["cache-control"] == "no-store"
    match = TOKEN_IN_PAGE.search(shown.text)
    assert match is not None
    assert match[1].startswith("nm_dev_sk_")
    assert 'parity_flash=""' in set_cookie_header(shown, "parity_flash")  # consumed
    # The action's address opened directly does nothing and leads to the project.
    opened = await client.get(f"/projects/{ids['dev']}/keys")
    assert opened.status_code == 303
    assert opened.headers["location"] == f"/projects/{ids['dev']}"
    # Reloading shows the key's display form only, and creates nothing.
    again = await client.get(f"/projects/{ids['dev']}")
    assert match[1] not in again.text
    assert f"nm_dev_sk_…{match[1][-4:]}" in again.text
    assert await count_keys(db, ids["dev"]) == 1

    # The flash cookie replayed by hand (a copy kept from before it was consumed) shows nothing.
    replay = await client.get(
        f"/projects/{ids['dev']}",
        headers={"Cookie": f"{flash.split(';')[0]}; {cookie_header(client)}"},
    )
    assert match[1] not in replay.text


def cookie_header(client: httpx.AsyncClient) -> str:
    return "; ".join(f"{c.name}={c.value}" for c in client.cookies.jar if c.name != "parity_flash")


async def test_another_users_flash_is_not_shown(client: httpx.AsyncClient) -> None:
    await sign_in(client, "ada@example.com", "correct horse")
    token = csrf_token(await client.get("/projects"))
    project = await create_project(client, token, "lab", "dev")
    created = await client.post(f"{project}/keys", data={"kind": "sk", CSRF_FIELD: token})
    flash = set_cookie_header(created, "parity_flash").split(";")[0]
    client.cookies.clear()
    await sign_in(client, "bob@example.com", "another pass")
    # Bob cannot see the project at all; on his own page the stolen flash is not his either.
    mine = await create_project(client, csrf_token(await client.get("/projects")), "own", "dev")
    page = await client.get(mine, headers={"Cookie": f"{flash}; {cookie_header(client)}"})
    assert page.status_code == 200
    assert 'id="new-key"' not in page.text


async def test_destructive_actions_need_confirmation_in_every_environment(
    client: httpx.AsyncClient,
) -> None:
    await sign_in(client, "ada@example.com", "correct horse")
    token = csrf_token(await client.get("/projects"))
    # A name that Python's repr would mangle: it must be shown exactly as typed.
    name = "C:\\deploy\\prod"
    project = await create_project(client, token, name, "prod")
    await client.post(f"{project}/keys", data={"kind": "sk", CSRF_FIELD: token})
    [key] = (await client.get(f"/api/v1{project}/keys")).json()

    unconfirmed = await client.post(f"{project}/keys/{key['id']}/revoke", data={CSRF_FIELD: token})
    assert unconfirmed.status_code == 303
    page = (await client.get(project)).text
    assert "type the project name exactly as shown: C:\\deploy\\prod" in page
    assert "C:\\\\deploy" not in page
    assert 'Type the project name <strong class="project-name">C:\\deploy\\prod</strong>' in page
    mistyped = await client.post(
        f"{project}/delete", data={"confirm_name": "c:\\deploy\\prod", CSRF_FIELD: token}
    )
    assert mistyped.status_code == 303
    assert (await client.get(f"/api/v1/keys/{key['id']}")).json()["status"] == "active"

    confirmed = await client.post(
        f"{project}/keys/{key['id']}/revoke", data={"confirm_name": name, CSRF_FIELD: token}
    )
    assert confirmed.status_code == 303
    assert (await client.get(f"/api/v1/keys/{key['id']}")).json()["status"] == "revoked"
    deleted = await client.post(f"{project}/delete", data={"confirm_name": name, CSRF_FIELD: token})
    assert deleted.headers["location"] == "/projects"
    assert f"Deleted the project {name}." in (await client.get("/projects")).text
    assert (await client.get(project)).status_code == 404

    # Dev and staging: one click is not enough either; a ticked box is.
    for environment in ("dev", "staging"):
        other = await create_project(client, token, f"{environment} one", environment)
        page = (await client.get(other)).text
        assert 'name="confirm" value="yes" required' in page
        assert "confirm_name" not in page
        await client.post(f"{other}/delete", data={CSRF_FIELD: token})
        assert "needs confirmation: tick the box" in (await client.get(other)).text
        gone = await client.post(f"{other}/delete", data={"confirm": "yes", CSRF_FIELD: token})
        assert gone.headers["location"] == "/projects"
        assert (await client.get(other)).status_code == 404


async def test_environment_change_from_the_project_page(client: httpx.AsyncClient) -> None:
    await sign_in(client, "ada@example.com", "correct horse")
    token = csrf_token(await client.get("/projects"))
    project = await create_project(client, token, "lab", "dev")
    moved = await client.post(
        f"{project}/environment", data={"environment": "staging", CSRF_FIELD: token}
    )
    assert moved.status_code == 303
    page = (await client.get(project)).text
    assert "The project is now in Staging." in page
    assert 'badge-staging" data-environment="staging">Staging<' in page

    await client.post(f"{project}/keys", data={"kind": "sk", CSRF_FIELD: token})
    locked = await client.post(
        f"{project}/environment", data={"environment": "prod", CSRF_FIELD: token}
    )
    assert locked.status_code == 303
    assert locked.headers["location"].endswith("#environment")
    page = (await client.get(project)).text
    # The database's own words (PE002): how many keys, and what to do.
    assert "1 active" in page
    assert "Hint:</strong> Revoke the project&#39;s active keys first" in page
    assert 'badge-staging" data-environment="staging">Staging<' in page


async def test_another_users_project_page_is_not_found(client: httpx.AsyncClient) -> None:
    await sign_in(client, "ada@example.com", "correct horse")
    token = csrf_token(await client.get("/projects"))
    project = await create_project(client, token, "mine")
    client.cookies.clear()
    await sign_in(client, "bob@example.com", "another pass")
    token = csrf_token(await client.get("/projects"))
    assert (await client.get(project)).status_code == 404
    assert (await client.get(f"{project}/deliveries")).status_code == 404
    for action in ("keys", "delete", "test-event", "webhooks", "environment"):
        response = await client.post(
            f"{project}/{action}",
            data={"confirm_name": "mine", "url": "https://x.test/", CSRF_FIELD: token},
        )
        assert response.status_code == 404, action
    assert "mine" not in (await client.get("/projects")).text


async def test_form_input_postgres_cannot_store_is_a_clear_error(
    client: httpx.AsyncClient,
) -> None:
    await sign_in(client, "ada@example.com", "correct horse")
    token = csrf_token(await client.get("/projects"))
    response = await client.post(
        "/projects", data={"name": "a\x00b", "environment": "dev", CSRF_FIELD: token}
    )
    assert response.status_code == 303
    page = await client.get("/projects")
    assert "NUL" in page.text
    assert "a\x00b" not in page.text


async def test_usage_against_the_hard_cap_and_the_rate_limit(
    client: httpx.AsyncClient, db: Database
) -> None:
    await sign_in(client, "ada@example.com", "correct horse")
    token = csrf_token(await client.get("/projects"))
    prod = (await create_project(client, token, "shop", "prod")).rsplit("/", 1)[1]
    dev = (await create_project(client, token, "lab", "dev")).rsplit("/", 1)[1]
    async with db.as_service() as conn:
        await conn.execute(
            "update public.projects set request_cap = 1000, rate_limit = 50 where id = any(%s)",
            ([prod, dev],),
        )
        for project, requests in ((prod, 820), (dev, 1500)):
            await conn.execute(
                "insert into public.usage_counters"
                " (project_id, window_start, requests, request_cap)"
                " values (%s, to_timestamp(floor(extract(epoch from now()) / 86400) * 86400),"
                " %s, 1000),"
                # An older window must not count.
                " (%s, to_timestamp(floor(extract(epoch from now()) / 86400) * 86400 - 86400),"
                " 999999, 1000)",
                (project, requests, project),
            )
    page = (await client.get(f"/projects/{prod}")).text
    assert 'id="usage-cap" data-requests="820" data-limit="1000"' in page
    assert "820 of 1,000 requests (82%)" in page
    assert "82% of the hard cap." in page
    assert "suspended automatically" in page
    assert 'width="271"' in page  # 82% of the 330-unit bar
    assert 'data-limit="50"' in page  # prod: the base limit as it is

    page = (await client.get(f"/projects/{dev}")).text
    assert "1,500 of 1,000 requests (150%)" in page
    assert "Warning: over the hard cap (150% of the hard cap)." in page
    assert "Development projects are not suspended" in page
    assert 'data-limit="500"' in page  # dev: 10x the base limit
    assert 'width="330"' in page  # a full bar, not past its track


async def test_webhooks_delivery_log_counts_and_suspension_on_the_project_page(
    client: httpx.AsyncClient, db: Database
) -> None:
    logged: list[str] = []
    sink = logger.add(logged.append, level="TRACE")
    await sign_in(client, "ada@example.com", "correct horse")
    token = csrf_token(await client.get("/projects"))
    project = await create_project(client, token, "lab", "dev")
    pid = project.rsplit("/", 1)[1]

    created = await client.post(
        f"{project}/webhooks",
        data={"url": "https://example.com/hook", "event_types": "webhook.test", CSRF_FIELD: token},
    )
    assert created.status_code == 303
    assert "whsec_" not in created.headers["location"]
    shown = await client.get(project)
    secret = re.search(r'id="new-endpoint-value">(whsec_[A-Za-z0-9+/=]+)<', shown.text)
    assert secret is not None
    page = await client.get(project)
    assert secret[1] not in page.text
    assert "https://example.com/hook" in page.text

    sent = await client.post(f"{project}/test-event", data={CSRF_FIELD: token})
    assert sent.status_code == 303
    assert sent.headers["location"] == f"{project}#deliveries"
    page = await client.get(project)
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
    # The fragment the page polls has the new state on its own.
    fragment = await client.get(f"{project}/deliveries")
    assert fragment.status_code == 200
    assert "<html" not in fragment.text
    assert 'data-status="exhausted"' in fragment.text
    assert "503 in 31 ms" in fragment.text
    assert " UTC</time>" in fragment.text

    page = await client.get(project)
    assert "#1" in page.text and "503 in 31 ms" in page.text
    assert 'data-succeeded="0" data-failed="1"' in page.text
    assert "1 failed attempt" in page.text
    assert "Suspended since" in page.text and "cap of 10 passed" in page.text
    redelivered = await client.post(
        f"{project}/deliveries/{delivery_id}/redeliver", data={CSRF_FIELD: token}
    )
    assert redelivered.status_code == 303
    detail = (await client.get(f"/api/v1/deliveries/{delivery_id}")).json()
    assert detail["delivery"]["status"] == "pending"
    # Repeating the same POST is refused with a reason, and changes nothing.
    await client.post(f"{project}/deliveries/{delivery_id}/redeliver", data={CSRF_FIELD: token})
    assert "already pending" in (await client.get(project)).text

    logger.remove(sink)
    assert not any(secret[1] in line for line in logged)


async def test_favicon(client: httpx.AsyncClient) -> None:
    icon = await client.get("/favicon.ico")
    assert icon.status_code == 200
    assert icon.headers["content-type"] == "image/x-icon"
    assert icon.content[:4] == b"\x00\x00\x01\x00"  # an ICO header
    assert '<link rel="icon" href="/favicon.ico"' in (await client.get("/signin")).text


async def test_rotating_a_key_shows_the_new_secret_once(
    client: httpx.AsyncClient, db: Database
) -> None:
    await sign_in(client, "ada@example.com", "correct horse")
    token = csrf_token(await client.get("/projects"))
    project = await create_project(client, token, "lab", "dev")
    await client.post(f"{project}/keys", data={"kind": "sk", CSRF_FIELD: token})
    first = TOKEN_IN_PAGE.search((await client.get(project)).text)
    assert first is not None
    [key] = (await client.get(f"/api/v1{project}/keys")).json()
    rotated = await client.post(
        f"{project}/keys/{key['id']}/rotate", data={"grace_hours": "1", CSRF_FIELD: token}
    )
    assert rotated.status_code == 303
    second = TOKEN_IN_PAGE.search((await client.get(project)).text)
    assert second is not None and second[1] != first[1]
    assert second[1] not in (await client.get(project)).text
    assert await count_keys(db, project.rsplit("/", 1)[1]) == 2


async def test_a_flash_opens_once_for_its_page_and_user_only(db: Database) -> None:
    box = FlashBox("a-secret-of-at-least-thirty-two-characters")
    user = uuid4()
    sealed = box.seal(Flash(target="/projects/a", user_id=str(user), secret="nm_dev_sk_x"))
    assert "nm_dev_sk_x" not in sealed
    assert await box.take(db, sealed, path="/projects/b", user_id=user) is None
    assert await box.take(db, sealed, path="/projects/a", user_id=uuid4()) is None
    tampered = sealed[:40] + ("B" if sealed[40] != "B" else "C") + sealed[41:]
    assert await box.take(db, tampered, path="/projects/a", user_id=user) is None
    other = FlashBox("another-secret-of-at-least-thirty-two-chars")
    assert await other.take(db, sealed, path="/projects/a", user_id=user) is None
    opened = await box.take(db, sealed, path="/projects/a", user_id=user)
    assert opened is not None and opened.secret == "nm_dev_sk_x"
    assert "nm_dev_sk_x" not in repr(opened)
    assert await box.take(db, sealed, path="/projects/a", user_id=user) is None  # once
    # Once for every replica: another process with the same secret refuses it too.
    replica = FlashBox("a-secret-of-at-least-thirty-two-characters")
    assert replica.read(sealed, path="/projects/a", user_id=user) is not None
    assert await replica.take(db, sealed, path="/projects/a", user_id=user) is None
    # What the database keeps: the random id and when it stops mattering, never the secret.
    async with db.as_service() as conn:
        cur = await conn.execute(
            "select flash_id, expires_at - shown_at as kept from private.console_flashes_shown"
        )
        [row] = await cur.fetchall()
    assert row["flash_id"] == opened.nonce
    assert timedelta(seconds=100) < row["kept"] <= timedelta(seconds=FLASH_TTL_SECONDS)


async def test_a_refusal_echoing_long_input_still_arrives(client: httpx.AsyncClient) -> None:
    await sign_in(client, "ada@example.com", "correct horse")
    token = csrf_token(await client.get("/projects"))
    project = await create_project(client, token, "lab", "dev")
    refused = await client.post(
        f"{project}/webhooks",
        data={"url": "https://example.com/h", "event_types": "Bad" * 2000, CSRF_FIELD: token},
    )
    assert len(set_cookie_header(refused, "parity_flash")) < 4000
    assert "invalid event type" in (await client.get(project)).text
