"""The audit trail through the management API: a page at a time with a `before` cursor, an
action filter, bounded limits, the JSON-lines download, the request's context recorded, and
nothing of another user's."""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.console.conftest import SignInAs
from tests.console.test_api import create_project


async def _page(
    client: httpx.AsyncClient, headers: dict[str, str], project_id: str, **params: Any
) -> dict[str, Any]:
    response = await client.get(
        f"/api/v1/projects/{project_id}/audit", params=params, headers=headers
    )
    assert response.status_code == 200, response.text
    page: dict[str, Any] = response.json()
    return page


async def test_the_trail_pages_newest_first_with_a_cursor(
    client: httpx.AsyncClient, sign_in_as: SignInAs
) -> None:
    alice = await sign_in_as("alice@example.com")
    headers = {**alice.headers, "User-Agent": "audit-test/1.0"}
    project = await create_project(client, headers, "shop", "dev")
    pid = project["id"]
    for n in range(6):
        response = await client.post(
            f"/api/v1/projects/{pid}/keys", json={"kind": "sk", "name": f"k{n}"}, headers=headers
        )
        assert response.status_code == 201, response.text
    key_id = response.json()["key"]["id"]
    assert (await client.post(f"/api/v1/keys/{key_id}/revoke", headers=headers)).is_success

    seen: list[dict[str, Any]] = []
    page = await _page(client, headers, pid, limit=3)
    while True:
        assert len(page["entries"]) <= 3
        seen += page["entries"]
        if page["next_before"] is None:
            break
        page = await _page(client, headers, pid, limit=3, before=page["next_before"])
    assert [e["action"] for e in seen] == [
        "api_key.revoked",
        *["api_key.issued"] * 6,
        "project.created",
    ]
    assert len({e["id"] for e in seen}) == 8
    assert [(e["at"], e["id"]) for e in seen] == sorted(
        ((e["at"], e["id"]) for e in seen), reverse=True
    )
    revoked = seen[0]
    assert revoked["target_id"] == key_id and revoked["description"] == "revoked an API key"
    assert (revoked["actor_type"], revoked["actor_id"]) == ("user", str(alice.user.id))
    assert revoked["user_agent"] == "audit-test/1.0" and revoked["client_address"]
    assert revoked["changes"]["status"] == {"before": "active", "after": "revoked"}

    only = await _page(client, headers, pid, action="api_key.revoked")
    assert [e["id"] for e in only["entries"]] == [revoked["id"]]
    assert only["next_before"] is None

    # Bad input: a clear 422, for limits out of bounds and unknown actions; an unknown cursor 404.
    missing = await client.get(
        f"/api/v1/projects/{pid}/audit", params={"before": 10**12}, headers=headers
    )
    assert missing.status_code == 404 and "no audit entry" in missing.json()["error"]["message"]
    for params in ({"limit": 0}, {"limit": 101}, {"action": "key.stolen"}, {"before": 0}):
        response = await client.get(f"/api/v1/projects/{pid}/audit", params=params, headers=headers)
        assert response.status_code == 422, (params, response.text)
        assert response.json()["error"]["code"]


async def test_the_download_is_every_entry_as_json_lines(
    client: httpx.AsyncClient, sign_in_as: SignInAs
) -> None:
    alice = await sign_in_as("alice@example.com")
    project = await create_project(client, alice.headers, "shop", "dev")
    pid = project["id"]
    for n in range(105):  # more than one internal page of 100
        response = await client.patch(
            f"/api/v1/projects/{pid}", json={"name": f"shop {n}"}, headers=alice.headers
        )
        assert response.status_code == 200, response.text
    response = await client.get(f"/api/v1/projects/{pid}/audit.jsonl", headers=alice.headers)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/jsonl")
    assert "attachment" in response.headers["content-disposition"]
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert len(lines) == 106 and len({line["id"] for line in lines}) == 106
    assert lines[0]["changes"]["name"] == {"before": "shop 103", "after": "shop 104"}
    assert lines[-1]["action"] == "project.created"


async def test_strangers_get_404_and_deleted_projects_stay_readable(
    client: httpx.AsyncClient, sign_in_as: SignInAs
) -> None:
    alice = await sign_in_as("alice@example.com")
    mallory = await sign_in_as("mallory@example.com")
    project = await create_project(client, alice.headers, "shop", "prod")
    pid = project["id"]
    for path in (f"/api/v1/projects/{pid}/audit", f"/api/v1/projects/{pid}/audit.jsonl"):
        response = await client.get(path, headers=mallory.headers)
        assert response.status_code == 404, response.text
    deleted = await client.delete(f"/api/v1/projects/{pid}", headers=alice.headers)
    assert deleted.status_code == 204
    page = await _page(client, alice.headers, pid)
    assert [e["action"] for e in page["entries"]] == ["project.deleted", "project.created"]
    assert (
        await client.get(f"/api/v1/projects/{pid}/audit", headers=mallory.headers)
    ).status_code == 404
