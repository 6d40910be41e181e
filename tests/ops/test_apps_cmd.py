"""`parity apps diff APP FROM TO [--json]` as an operator runs it: the report of a seeded app by
id or by name, as text (drift marked) and as JSON; an unknown or ambiguous app is one message."""

from __future__ import annotations

import json

from shared import apps, webhooks
from shared.db import Database
from shared.environment import Environment
from tests.conftest import MakeUser
from tests.ops.test_status import parity


async def test_apps_diff_shows_the_report(
    db: Database, database_url: str, make_user: MakeUser
) -> None:
    owner = await make_user("ops@example.com")
    async with db.as_service() as conn:
        app = await apps.create_app(conn, "shop", create_projects=True, owner_id=owner.id)
        dev = app.environments[Environment.DEV]
        assert dev is not None
        await webhooks.create_endpoint(
            conn, dev, "https://dev.example.com/o", name="orders", event_types=["order.created"]
        )
        await apps.create_app(conn, "twin", owner_id=owner.id)
        await apps.create_app(conn, "twin", owner_id=owner.id)

    as_json = parity(database_url, "apps", "diff", str(app.id), "dev", "prod", "--json")
    assert as_json.returncode == 0, as_json.stderr
    found = {d["field"]: d for d in json.loads(as_json.stdout)["differences"]}
    assert found["endpoints.orders"]["class"] == "drift"
    assert found["endpoints.orders"]["to"] is None
    assert found["policy.auto_suspend_enabled"] == {
        "class": "policy",
        "field": "policy.auto_suspend_enabled",
        "from": False,
        "to": True,
        "promotable": False,
    }

    text = parity(database_url, "apps", "diff", "shop", "dev", "prod")
    assert text.returncode == 0, text.stderr
    assert text.stdout.startswith(f"shop ({app.id}): dev -> prod")
    assert any(
        line.startswith("! drift") and "endpoints.orders" in line and "(promotable)" in line
        for line in text.stdout.splitlines()
    ), text.stdout

    missing = parity(database_url, "apps", "diff", "nothing", "dev", "prod")
    assert (missing.returncode, missing.stdout) == (1, "")
    assert "no app has the id or name 'nothing'" in missing.stderr
    twins = parity(database_url, "apps", "diff", "twin", "dev", "prod")
    assert twins.returncode == 1 and "2 apps are named 'twin'" in twins.stderr
