"""The management API against real Postgres: what a user may see and do, and how bad input is
refused. Requests go through the whole ASGI app (auth, RLS as the user, error mapping)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook

from shared import deliveries, users
from shared.db import Database
from shared.keys import parse_token
from tests.console.conftest import SignInAs


async def create_project(
    client: httpx.AsyncClient, headers: dict[str, str], name: str, environment: str | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {"name": name}
    if environment is not None:
        body["environment"] = environment
    response = await client.post("/api/v1/projects", json=body, headers=headers)
    assert response.status_code == 201, response.text
    project: dict[str, Any] = response.json()
    return project


async def test_requests_without_a_valid_session_are_refused(
    client: httpx.AsyncClient, sign_in_as: SignInAs
) -> None:
    assert (await client.get("/api/v1/projects")).status_code == 401
    bad = {"Authorization": "Bearer not-a-jwt"}
    response = await client.get("/api/v1/projects", headers=bad)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "UNAUTHENTICATED"
    alice = await sign_in_as("alice@example.com")
    tampered = {"Authorization": alice.headers["Authorization"][:-2] + "xx"}
    assert (await client.get("/api/v1/projects", headers=tampered)).status_code == 401
    me = await client.get("/api/v1/me", headers=alice.headers)
    assert me.json() == {"user_id": str(alice.user.id), "email": "alice@example.com"}


async def test_projects_default_to_prod_and_keep_their_environment(
    client: httpx.AsyncClient, sign_in_as: SignInAs
) -> None:
    alice = await sign_in_as("alice@example.com")
    shop = await create_project(client, alice.headers, "shop")
    lab = await create_project(client, alice.headers, "lab", "dev")
    qa = await create_project(client, alice.headers, "qa", "staging")
    assert (shop["environment"], lab["environment"], qa["environment"]) == (
        "prod",
        "dev",
        "staging",
    )

    listed = (await client.get("/api/v1/projects", headers=alice.headers)).json()
    assert {p["name"]: p["environment"] for p in listed} == {
        "shop": "prod",
        "lab": "dev",
        "qa": "staging",
    }
    renamed = await client.patch(
        f"/api/v1/projects/{lab['id']}", json={"name": "lab 2"}, headers=alice.headers
    )
    assert renamed.status_code == 200
    assert renamed.json()["name"] == "lab 2"
    assert renamed.json()["environment"] == "dev"

    deleted = await client.delete(f"/api/v1/projects/{qa['id']}", headers=alice.headers)
    assert deleted.status_code == 204
    gone = await client.get(f"/api/v1/projects/{qa['id']}", headers=alice.headers)
    assert gone.status_code == 404


@pytest.mark.parametrize(
    ("environment", "prefix"),
    [("dev", "nm_dev_"), ("staging", "nm_staging_"), ("prod", "nm_live_")],
)
async def test_key_prefixes_follow_the_project_environment(
    client: httpx.AsyncClient, sign_in_as: SignInAs, environment: str, prefix: str
) -> None:
    alice = await sign_in_as("alice@example.com")
    project = await create_project(client, alice.headers, "p", environment)
    for kind in ("sk", "pk"):
        response = await client.post(
            f"/api/v1/projects/{project['id']}/keys", json={"kind": kind}, headers=alice.headers
        )
        assert response.status_code == 201
        assert response.headers["cache-control"] == "no-store"
        issued = response.json()
        assert issued["token"].startswith(f"{prefix}{kind}_")
        assert parse_token(issued["token"]).environment.value == environment
        assert issued["key"]["prefix"] == f"{prefix}{kind}_"
        assert issued["key"]["last_four"] == issued["token"][-4:]
        assert issued["key"]["environment"] == environment

    # The token is shown once: nothing that lists or reads keys carries it again.
    listed = await client.get(f"/api/v1/projects/{project['id']}/keys", headers=alice.headers)
    assert listed.status_code == 200
    assert len(listed.json()) == 2
    assert issued["token"] not in listed.text
    one = await client.get(f"/api/v1/keys/{issued['key']['id']}", headers=alice.headers)
    assert issued["token"] not in one.text
    assert set(one.json()) >= {"display", "status", "last_used_at", "kind"}


async def test_keys_are_revoked_and_rotated_with_a_grace_period(
    client: httpx.AsyncClient, sign_in_as: SignInAs
) -> None:
    alice = await sign_in_as("alice@example.com")
    project = await create_project(client, alice.headers, "p", "dev")
    keys_url = f"/api/v1/projects/{project['id']}/keys"
    first = (await client.post(keys_url, json={"name": "ci"}, headers=alice.headers)).json()

    rotated = await client.post(
        f"/api/v1/keys/{first['key']['id']}/rotate",
        json={"grace_seconds": 3600},
        headers=alice.headers,
    )
    assert rotated.status_code == 201
    replacement = rotated.json()
    assert replacement["token"] != first["token"]
    assert replacement["key"]["name"] == "ci"
    old = (await client.get(f"/api/v1/keys/{first['key']['id']}", headers=alice.headers)).json()
    assert old["status"] == "active"
    assert old["expires_at"] is not None

    revoked = await client.post(
        f"/api/v1/keys/{replacement['key']['id']}/revoke", headers=alice.headers
    )
    assert revoked.status_code == 200
    assert revoked.json()["status"] == "revoked"
    again = await client.post(
        f"/api/v1/keys/{replacement['key']['id']}/rotate", json={}, headers=alice.headers
    )
    assert again.status_code == 409
    assert "revoked" in again.json()["error"]["message"]


async def test_invalid_environment_and_malformed_bodies_get_clear_422s(
    client: httpx.AsyncClient, sign_in_as: SignInAs
) -> None:
    alice = await sign_in_as("alice@example.com")
    response = await client.post(
        "/api/v1/projects", json={"name": "x", "environment": "production"}, headers=alice.headers
    )
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "INVALID_INPUT"
    assert "environment" in error["message"]
    assert "'prod', 'dev' or 'staging'" in error["message"]
    assert error["fields"][0]["field"] == "environment"

    cases: list[tuple[Any, str]] = [
        ({"environment": "dev"}, "name: Field required"),
        ({"name": ""}, "name: String should have at least 1 character"),
        ({"name": "   "}, "name: Value error, must have a visible character"),
        ({"name": "x" * 101}, "name: String should have at most 100 characters"),
        ({"name": "a\x00b"}, "no NUL characters"),
        ({"name": "x", "owner_id": "00000000-0000-0000-0000-000000000000"}, "owner_id"),
        ([1, 2], "Input should be a valid dictionary"),
    ]
    for body, expected in cases:
        response = await client.post("/api/v1/projects", json=body, headers=alice.headers)
        assert response.status_code == 422, body
        assert expected in response.json()["error"]["message"], (body, response.text)

    broken = await client.post(
        "/api/v1/projects",
        content=b"{not json",
        headers={**alice.headers, "Content-Type": "application/json"},
    )
    assert broken.status_code == 422
    assert "JSON" in broken.json()["error"]["message"]
    bad_id = await client.get("/api/v1/projects/not-a-uuid", headers=alice.headers)
    assert bad_id.status_code == 422
    assert bad_id.json()["error"]["fields"][0]["field"] == "project_id"

    # Nothing was created by any of them.
    assert (await client.get("/api/v1/projects", headers=alice.headers)).json() == []


async def test_environment_cannot_change_under_active_keys(
    client: httpx.AsyncClient, sign_in_as: SignInAs
) -> None:
    alice = await sign_in_as("alice@example.com")
    project = await create_project(client, alice.headers, "p")
    await client.post(f"/api/v1/projects/{project['id']}/keys", json={}, headers=alice.headers)
    response = await client.patch(
        f"/api/v1/projects/{project['id']}", json={"environment": "dev"}, headers=alice.headers
    )
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "ENVIRONMENT_LOCKED"
    assert "revoke" in response.json()["error"]["hint"].lower()
    still = (await client.get(f"/api/v1/projects/{project['id']}", headers=alice.headers)).json()
    assert still["environment"] == "prod"


async def test_webhook_endpoints_secret_once_test_event_and_redelivery(
    client: httpx.AsyncClient, sign_in_as: SignInAs, db: Database
) -> None:
    alice = await sign_in_as("alice@example.com")
    project = await create_project(client, alice.headers, "p", "staging")
    url = f"/api/v1/projects/{project['id']}/webhook-endpoints"

    for bad_url in ("ftp://example.com/x", "example.com/hook", "http://"):
        refused = await client.post(url, json={"url": bad_url}, headers=alice.headers)
        assert refused.status_code == 422, bad_url
        assert "webhook URL" in refused.json()["error"]["message"]

    created = await client.post(
        url, json={"url": "https://example.com/hook", "description": "ci"}, headers=alice.headers
    )
    assert created.status_code == 201
    secret = created.json()["secret"]
    assert secret.startswith("whsec_")
    Webhook(secret)  # the standardwebhooks library accepts it as it is
    endpoint = created.json()["endpoint"]
    listed = await client.get(url, headers=alice.headers)
    assert [e["id"] for e in listed.json()] == [endpoint["id"]]
    assert secret not in listed.text

    sent = await client.post(
        f"/api/v1/projects/{project['id']}/test-event", json={}, headers=alice.headers
    )
    assert sent.status_code == 201
    assert sent.json()["deliveries"] == 1
    logged = await client.get(f"/api/v1/projects/{project['id']}/deliveries", headers=alice.headers)
    [delivery] = logged.json()
    assert (delivery["event_type"], delivery["status"]) == ("webhook.test", "pending")

    # A pending delivery cannot be redelivered; once the worker gave up on it, it can.
    pending = await client.post(
        f"/api/v1/deliveries/{delivery['id']}/redeliver", headers=alice.headers
    )
    assert pending.status_code == 409
    async with db.as_service() as conn:
        await conn.execute(
            "insert into public.webhook_attempts"
            " (delivery_id, attempt_number, started_at, duration_ms, status_code)"
            " values (%s, 1, now(), 12, 500)",
            (delivery["id"],),
        )
        await conn.execute(
            "update public.webhook_deliveries set status = 'exhausted', attempts = 1,"
            " last_status_code = 500, completed_at = now() where id = %s",
            (delivery["id"],),
        )
    detail = await client.get(f"/api/v1/deliveries/{delivery['id']}", headers=alice.headers)
    assert [a["status_code"] for a in detail.json()["attempts"]] == [500]
    again = await client.post(
        f"/api/v1/deliveries/{delivery['id']}/redeliver", headers=alice.headers
    )
    assert again.status_code == 200
    assert again.json()["delivery"]["status"] == "pending"
    assert again.json()["delivery"]["attempts"] == 1

    disabled = await client.post(
        f"/api/v1/webhook-endpoints/{endpoint['id']}/disable", headers=alice.headers
    )
    assert disabled.json()["enabled"] is False
    quiet = await client.post(
        f"/api/v1/projects/{project['id']}/test-event", json={}, headers=alice.headers
    )
    assert quiet.json()["deliveries"] == 0
    assert (
        await client.delete(f"/api/v1/webhook-endpoints/{endpoint['id']}", headers=alice.headers)
    ).status_code == 204
    assert (await client.get(url, headers=alice.headers)).json() == []


async def test_a_project_past_its_endpoint_limit_gets_a_409_and_nothing_is_created(
    client: httpx.AsyncClient, sign_in_as: SignInAs
) -> None:
    alice = await sign_in_as("alice@example.com")
    project = await create_project(client, alice.headers, "p")
    url = f"/api/v1/projects/{project['id']}/webhook-endpoints"
    for n in range(50):  # the default limit (private.platform_limits)
        created = await client.post(
            url, json={"url": f"https://example.com/{n}"}, headers=alice.headers
        )
        assert created.status_code == 201, created.text

    refused = await client.post(url, json={"url": "https://example.com/x"}, headers=alice.headers)
    assert refused.status_code == 409
    error = refused.json()["error"]
    assert error["code"] == "LIMIT_REACHED"
    assert error["message"] == (
        f"project {project['id']} already has 50 webhook endpoints,"
        " the most a project may have (50)"
    )
    assert "Delete an endpoint" in error["hint"]
    assert "secret" not in refused.json()
    listed = (await client.get(url, headers=alice.headers)).json()
    assert len(listed) == 50 and "https://example.com/x" not in {e["url"] for e in listed}


async def test_suspension_state_shows_reason_and_history(
    client: httpx.AsyncClient, sign_in_as: SignInAs, db: Database
) -> None:
    alice = await sign_in_as("alice@example.com")
    project = await create_project(client, alice.headers, "p")
    url = f"/api/v1/projects/{project['id']}/suspension"
    assert (await client.get(url, headers=alice.headers)).json() == {
        "suspended": False,
        "current": None,
        "history": [],
    }
    async with db.as_service() as conn:
        await conn.execute(
            "insert into public.suspensions (project_id, reason, requests, request_cap)"
            " values (%s, 'hard cap exceeded', 1200, 1000)",
            (project["id"],),
        )
    state = (await client.get(url, headers=alice.headers)).json()
    assert state["suspended"] is True
    assert state["current"]["reason"] == "hard cap exceeded"
    assert state["current"]["requests"] == 1200


async def test_other_users_rows_are_invisible_and_untouchable(
    client: httpx.AsyncClient, sign_in_as: SignInAs, db: Database
) -> None:
    alice = await sign_in_as("alice@example.com")
    bob = await sign_in_as("bob@example.com")
    project = await create_project(client, alice.headers, "alice's", "dev")
    pid = project["id"]
    key = (await client.post(f"/api/v1/projects/{pid}/keys", json={}, headers=alice.headers)).json()
    endpoint = (
        await client.post(
            f"/api/v1/projects/{pid}/webhook-endpoints",
            json={"url": "https://example.com/a"},
            headers=alice.headers,
        )
    ).json()["endpoint"]
    await client.post(f"/api/v1/projects/{pid}/test-event", json={}, headers=alice.headers)
    async with db.as_service() as conn:
        [delivery] = await deliveries.list_deliveries(conn, project_id=pid)
        await conn.execute(
            "update public.webhook_deliveries set status = 'exhausted', completed_at = now()"
            " where id = %s",
            (delivery.id,),
        )
    missing = "00000000-0000-4000-8000-000000000000"

    attempts = [
        ("GET", f"/api/v1/projects/{pid}", None),
        ("PATCH", f"/api/v1/projects/{pid}", {"name": "bob's now"}),
        ("DELETE", f"/api/v1/projects/{pid}", None),
        ("GET", f"/api/v1/projects/{pid}/suspension", None),
        ("GET", f"/api/v1/projects/{pid}/keys", None),
        ("POST", f"/api/v1/projects/{pid}/keys", {}),
        ("GET", f"/api/v1/keys/{key['key']['id']}", None),
        ("POST", f"/api/v1/keys/{key['key']['id']}/revoke", None),
        ("POST", f"/api/v1/keys/{key['key']['id']}/rotate", {}),
        ("GET", f"/api/v1/projects/{pid}/webhook-endpoints", None),
        ("POST", f"/api/v1/projects/{pid}/webhook-endpoints", {"url": "https://evil.test/"}),
        ("POST", f"/api/v1/webhook-endpoints/{endpoint['id']}/disable", None),
        ("DELETE", f"/api/v1/webhook-endpoints/{endpoint['id']}", None),
        ("POST", f"/api/v1/projects/{pid}/test-event", {}),
        ("GET", f"/api/v1/projects/{pid}/deliveries", None),
        ("GET", f"/api/v1/deliveries/{delivery.id}", None),
        ("POST", f"/api/v1/deliveries/{delivery.id}/redeliver", None),
    ]
    for method, path, body in attempts:
        response = await client.request(method, path, json=body, headers=bob.headers)
        assert response.status_code == 404, (method, path, response.text)
        # The same answer as for something that never existed: nothing to learn from it.
        ghost = await client.request(
            method, path.replace(pid, missing), json=body, headers=bob.headers
        )
        if "/projects/" in path:
            assert ghost.status_code == 404
            assert ghost.json()["error"]["code"] == response.json()["error"]["code"]

    assert (await client.get("/api/v1/projects", headers=bob.headers)).json() == []
    # And nothing of Alice's changed.
    mine = (await client.get(f"/api/v1/projects/{pid}", headers=alice.headers)).json()
    assert mine["name"] == "alice's"
    still = (await client.get(f"/api/v1/keys/{key['key']['id']}", headers=alice.headers)).json()
    assert still["status"] == "active"
    assert still["expires_at"] is None
    endpoints = await client.get(f"/api/v1/projects/{pid}/webhook-endpoints", headers=alice.headers)
    assert [(e["id"], e["enabled"]) for e in endpoints.json()] == [(endpoint["id"], True)]
    logged = await client.get(f"/api/v1/projects/{pid}/deliveries", headers=alice.headers)
    assert [(d["id"], d["status"]) for d in logged.json()] == [(str(delivery.id), "exhausted")]


async def test_openapi_is_served(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    assert "/api/v1/projects" in schema["paths"]
    assert "/api/v1/keys/{key_id}/rotate" in schema["paths"]
    assert not any(path.startswith("/projects") for path in schema["paths"])


async def test_api_clients_sign_in_for_a_bearer_token(
    client: httpx.AsyncClient, db: Database
) -> None:
    url = "/api/v1/auth/token"
    first = await client.post(url, json={"email": "Ada@example.com", "password": "correct horse"})
    assert first.status_code == 200
    assert first.headers["cache-control"] == "no-store"
    headers = {"Authorization": f"Bearer {first.json()['access_token']}"}
    me = (await client.get("/api/v1/me", headers=headers)).json()
    assert me["email"] == "ada@example.com"
    wrong = await client.post(url, json={"email": "ada@example.com", "password": "not it at all"})
    assert wrong.status_code == 401
    assert wrong.json()["error"]["message"] == "wrong email or password"
    for body in ({"email": "ada@example.com", "password": "short"}, {"email": "nope"}):
        assert (await client.post(url, json=body)).status_code == 422

    # An operator-seeded user (no password yet) sets one at the first sign-in.
    async with db.as_service() as conn:
        seeded = await users.ensure_user(conn, "demo@example.com")
        assert (await users.ensure_user(conn, "DEMO@example.com")).id == seeded.id
    claimed = await client.post(url, json={"email": "demo@example.com", "password": "demo-pass"})
    assert claimed.status_code == 200
    again = await client.post(url, json={"email": "demo@example.com", "password": "other-pass"})
    assert again.status_code == 401
    async with db.as_service() as conn:
        cur = await conn.execute(
            "select encrypted_password from auth.users where email = 'demo@example.com'"
        )
        row = await cur.fetchone()
    assert row is not None
    assert row["encrypted_password"].startswith("scrypt$")
    assert "demo-pass" not in row["encrypted_password"]


async def test_framework_errors_use_the_api_error_shape(
    client: httpx.AsyncClient, sign_in_as: SignInAs
) -> None:
    alice = await sign_in_as("alice@example.com")
    unknown = await client.get("/api/v1/nothing-here", headers=alice.headers)
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "NOT_FOUND"
    wrong_method = await client.put("/api/v1/projects", headers=alice.headers)
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["code"] == "METHOD_NOT_ALLOWED"
    assert "GET" in wrong_method.headers["allow"]
    page = await client.get("/no-such-page")
    assert page.status_code == 404
    assert "Back to your projects" in page.text
