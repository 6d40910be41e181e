"""Apps, the parity report and promotion through the management API, over HTTP on loopback,
against real Postgres: the report of a seeded app lists exactly the seeded drift; a dry run
changes nothing; applying makes every promotable drift vanish, in one transaction (a failure
injected midway leaves everything as it was); stale fingerprints, prod without the typed name,
strangers and a second prod project are refused, and nothing secret crosses environments."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row

from shared.environment import get_environment_config
from shared.parity import POLICY_FIELDS
from tests.console.conftest import SignedIn, SignInAs


@pytest.fixture
async def http(served_console: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=served_console, timeout=30) as client:
        yield client


def table_fingerprints(database_url: str) -> dict[str, str]:
    """Each public table's row count and a hash of its rows."""
    with psycopg.connect(database_url) as conn:
        tables = [
            row[0]
            for row in conn.execute(
                "select tablename from pg_tables where schemaname = 'public' order by 1"
            ).fetchall()
        ]
        found = {}
        for table in tables:
            row = conn.execute(
                sql.SQL(
                    "select count(*) || ':' || md5(coalesce(string_agg(r::text, '|'"
                    " order by r::text), '')) from {} as r"
                ).format(sql.Identifier("public", table))
            ).fetchone()
            assert row is not None
            found[table] = row[0]
    return found


class Seeded:
    """An app with three environments; dev ahead of staging, staging ahead of nothing."""

    def __init__(self, http: httpx.AsyncClient, user: SignedIn, database_url: str) -> None:
        self.http = http
        self.user = user
        self.database_url = database_url
        self.app: dict[str, Any] = {}

    @property
    def env(self) -> dict[str, str]:
        environments: dict[str, str] = self.app["environments"]
        return environments

    async def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return await self.http.request(method, path, headers=self.user.headers, **kwargs)

    async def endpoint(self, environment: str, name: str, url: str, **fields: Any) -> None:
        response = await self.call(
            "POST",
            f"/api/v1/projects/{self.env[environment]}/webhook-endpoints",
            json={"name": name, "url": url, **fields},
        )
        assert response.status_code == 201, response.text
        assert response.json()["endpoint"]["name"] == name

    async def report(self, source: str, target: str) -> list[dict[str, Any]]:
        response = await self.call(
            "GET", f"/api/v1/apps/{self.app['id']}/parity", params={"from": source, "to": target}
        )
        assert response.status_code == 200, response.text
        differences: list[dict[str, Any]] = response.json()["differences"]
        return differences

    async def promote(self, **body: Any) -> httpx.Response:
        return await self.call("POST", f"/api/v1/apps/{self.app['id']}/promotions", json=body)


@pytest.fixture
async def seeded(http: httpx.AsyncClient, sign_in_as: SignInAs, database_url: str) -> Seeded:
    s = Seeded(http, await sign_in_as("alice@example.com"), database_url)
    created = await s.call("POST", "/api/v1/apps", json={"name": "shop", "create_projects": True})
    assert created.status_code == 201, created.text
    s.app = created.json()
    assert set(s.env) == {"prod", "staging", "dev"} and all(s.env.values())
    await s.endpoint(
        "dev",
        "orders",
        "https://dev.example.com/orders",
        event_types=["order.created", "order.paid"],
        description="Orders",
    )
    await s.endpoint("dev", "billing", "https://dev.example.com/billing", description="Bills")
    await s.endpoint(
        "staging",
        "orders",
        "https://staging.example.com/orders",
        event_types=["order.created"],
        description="Orders",
    )
    await s.endpoint("staging", "legacy", "https://staging.example.com/legacy")
    key = await s.call("POST", f"/api/v1/projects/{s.env['dev']}/keys", json={"kind": "sk"})
    assert key.status_code == 201
    with psycopg.connect(database_url, autocommit=True) as admin:  # the platform sets limits
        admin.execute(
            "update public.projects set rate_limit = 5000, request_cap = 777 where id = %s",
            (s.env["dev"],),
        )
    return s


def by_field(differences: list[dict[str, Any]]) -> dict[str, tuple[str, Any, Any, bool]]:
    return {d["field"]: (d["class"], d["from"], d["to"], d["promotable"]) for d in differences}


def expected_policy(source: str, target: str) -> dict[str, tuple[str, Any, Any, bool]]:
    a, b = get_environment_config(source), get_environment_config(target)
    return {
        f"policy.{name}": ("policy", getattr(a, name), getattr(b, name), False)
        for name in POLICY_FIELDS
        if getattr(a, name) != getattr(b, name)
    }


async def test_the_report_lists_exactly_the_seeded_drift_and_policy_as_policy(
    seeded: Seeded,
) -> None:
    found = by_field(await seeded.report("dev", "staging"))
    assert found == {
        "policy.rate_limit_multiplier": ("policy", 10, 5, False),
        "policy.max_webhook_retries": ("policy", None, 5, False),
        "rate_limit": ("drift", 5000, None, True),
        "request_cap": ("drift", 777, None, True),
        "keys.sk": ("drift", 1, 0, False),
        "endpoints.billing": (
            "drift",
            {
                "url": "https://dev.example.com/billing",
                "event_types": [],
                "description": "Bills",
                "enabled": True,
            },
            None,
            True,
        ),
        "endpoints.legacy": (
            "drift",
            None,
            {
                "url": "https://staging.example.com/legacy",
                "event_types": [],
                "description": "",
                "enabled": True,
            },
            False,
        ),
        "endpoints.orders.event_types": (
            "drift",
            ["order.created", "order.paid"],
            ["order.created"],
            True,
        ),
        "endpoints.orders.url": (
            "environment-specific",
            "https://dev.example.com/orders",
            "https://staging.example.com/orders",
            False,
        ),
    }
    # Policy entries come from the environment policy, and dev against prod shows all of them.
    to_prod = by_field(await seeded.report("dev", "prod"))
    assert {k: v for k, v in to_prod.items() if v[0] == "policy"} == expected_policy("dev", "prod")
    assert {"policy.auto_suspend_enabled", "policy.log_level"} <= set(to_prod)
    # Backwards, nothing is promotable.
    assert not any(d["promotable"] for d in await seeded.report("staging", "dev"))


async def test_a_dry_run_changes_nothing(seeded: Seeded) -> None:
    before = table_fingerprints(seeded.database_url)
    response = await seeded.promote(
        **{"from": "dev", "to": "staging", "dry_run": True, "include_limits": True}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["applied"] is False and body["secrets"] == {}
    assert [(c["action"], c.get("endpoint")) for c in body["plan"]] == [
        ("copy_limits", None),
        ("create_endpoint", "billing"),
        ("update_endpoint", "orders"),
    ]
    assert body["plan"][1]["url"] is None  # not given yet: required to apply
    assert table_fingerprints(seeded.database_url) == before


async def test_promotion_forward_makes_every_promotable_drift_vanish(seeded: Seeded) -> None:
    dry = await seeded.promote(
        **{"from": "dev", "to": "staging", "include_limits": True, "carry_urls": True}
    )
    applied = await seeded.promote(
        **{
            "from": "dev",
            "to": "staging",
            "include_limits": True,
            "dry_run": False,
            "fingerprint": dry.json()["fingerprint"],
            "urls": {"billing": "https://staging.example.com/billing"},
        }
    )
    assert applied.status_code == 200, applied.text
    body = applied.json()
    assert body["applied"] is True and set(body["secrets"]) == {"billing"}
    remaining = by_field(await seeded.report("dev", "staging"))
    assert not [f for f, d in remaining.items() if d[3]], remaining
    assert set(remaining) == {
        *expected_policy("dev", "staging"),
        "keys.sk",
        "endpoints.legacy",
        "endpoints.orders.url",
        "endpoints.billing.url",
    }
    assert remaining["endpoints.billing.url"][2] == "https://staging.example.com/billing"

    # Staging on to prod, endpoints carried with the source's URLs, with the typed name.
    dry = await seeded.promote(**{"from": "staging", "to": "prod", "carry_urls": True})
    plan_body = dry.json()
    confirmed = await seeded.promote(
        **{
            "from": "staging",
            "to": "prod",
            "dry_run": False,
            "carry_urls": True,
            "fingerprint": plan_body["fingerprint"],
            "confirm_name": "shop-prod",
        }
    )
    assert confirmed.status_code == 200, confirmed.text
    assert set(confirmed.json()["secrets"]) == {"billing", "legacy", "orders"}
    # The limits were not asked for this time: they are the only promotable drift left.
    to_prod = by_field(await seeded.report("staging", "prod"))
    assert {f for f, d in to_prod.items() if d[3]} == {"rate_limit", "request_cap"}

    # Nothing secret crossed: every endpoint's secret and every key's hash is its own.
    with psycopg.connect(seeded.database_url) as admin:
        secrets = [
            row[0]
            for row in admin.execute(
                "select secret from public.webhook_endpoints where project_id = any(%s)",
                (list(seeded.env.values()),),
            ).fetchall()
        ]
        keys = admin.execute(
            "select p.environment::text, k.key_hash from public.api_keys k"
            " join public.projects p on p.id = k.project_id where p.id = any(%s)",
            (list(seeded.env.values()),),
        ).fetchall()
    assert len(secrets) == 2 + 3 + 3 and len(set(secrets)) == len(secrets)
    assert [env for env, _ in keys] == ["dev"]  # no key was issued, copied or moved
    shown = {*body["secrets"].values(), *confirmed.json()["secrets"].values()}
    assert shown <= set(secrets)


async def test_a_stale_fingerprint_is_refused_and_changes_nothing(seeded: Seeded) -> None:
    dry = (await seeded.promote(**{"from": "dev", "to": "staging", "carry_urls": True})).json()
    # The source moves on after the review: a description changes.
    with psycopg.connect(seeded.database_url, autocommit=True) as admin:
        admin.execute(
            "update public.webhook_endpoints set description = 'Bills v2' where project_id = %s"
            " and name = 'billing'",
            (seeded.env["dev"],),
        )
    before = table_fingerprints(seeded.database_url)
    stale = await seeded.promote(
        **{
            "from": "dev",
            "to": "staging",
            "carry_urls": True,
            "dry_run": False,
            "fingerprint": dry["fingerprint"],
        }
    )
    assert stale.status_code == 409, stale.text
    assert stale.json()["error"]["code"] == "STALE_FINGERPRINT"
    assert table_fingerprints(seeded.database_url) == before


INJECT = """
create sequence public.inject_seq;
create function public.inject_failure() returns trigger
language plpgsql security definer set search_path = '' as $$
begin
    if nextval('public.inject_seq') = 2 then
        raise exception 'injected failure on the second endpoint created';
    end if;
    return new;
end $$;
create trigger inject_failure before insert on public.webhook_endpoints
    for each row execute function public.inject_failure();
"""


async def test_a_failure_midway_leaves_everything_as_it_was(seeded: Seeded) -> None:
    await seeded.endpoint("dev", "shipping", "https://dev.example.com/shipping")
    dry = await seeded.promote(
        **{"from": "dev", "to": "staging", "carry_urls": True, "include_limits": True}
    )
    assert [c["action"] for c in dry.json()["plan"]].count("create_endpoint") == 2
    with psycopg.connect(seeded.database_url, autocommit=True) as admin:
        admin.execute(INJECT)
    before = table_fingerprints(seeded.database_url)
    failed = await seeded.promote(
        **{
            "from": "dev",
            "to": "staging",
            "carry_urls": True,
            "include_limits": True,
            "dry_run": False,
            "fingerprint": dry.json()["fingerprint"],
        }
    )
    assert failed.status_code == 500, failed.text
    # The limits were copied and one endpoint created before the failure: all rolled back.
    assert table_fingerprints(seeded.database_url) == before


async def test_prod_needs_the_typed_name(seeded: Seeded) -> None:
    dry = (await seeded.promote(**{"from": "dev", "to": "prod", "carry_urls": True})).json()
    before = table_fingerprints(seeded.database_url)
    for confirm in (None, "shop", "SHOP-PROD"):
        body = {
            "from": "dev",
            "to": "prod",
            "carry_urls": True,
            "dry_run": False,
            "fingerprint": dry["fingerprint"],
        }
        if confirm is not None:
            body["confirm_name"] = confirm
        refused = await seeded.promote(**body)
        assert refused.status_code == 422, refused.text
        assert refused.json()["error"]["code"] == "CONFIRMATION_REQUIRED"
        assert "shop-prod" in refused.json()["error"]["message"]
    assert table_fingerprints(seeded.database_url) == before


async def test_promotion_goes_forward_only(seeded: Seeded) -> None:
    before = table_fingerprints(seeded.database_url)
    for source, target in (
        ("prod", "staging"),
        ("staging", "dev"),
        ("prod", "dev"),
        ("dev", "dev"),
    ):
        refused = await seeded.promote(**{"from": source, "to": target})
        assert refused.status_code == 422, (source, target, refused.text)
    assert table_fingerprints(seeded.database_url) == before


async def test_a_stranger_can_neither_see_link_nor_promote(
    seeded: Seeded, sign_in_as: SignInAs
) -> None:
    mallory = await sign_in_as("mallory@example.com")
    theirs = await seeded.http.post(
        "/api/v1/projects", json={"name": "m", "environment": "dev"}, headers=mallory.headers
    )
    their_app = await seeded.http.post("/api/v1/apps", json={"name": "m"}, headers=mallory.headers)
    before = table_fingerprints(seeded.database_url)
    app = seeded.app["id"]
    attempts = [
        ("GET", f"/api/v1/apps/{app}", None),
        ("GET", f"/api/v1/apps/{app}/parity?from=dev&to=staging", None),
        ("PUT", f"/api/v1/apps/{app}/environments/dev", {"project_id": theirs.json()["id"]}),
        (
            "PUT",
            f"/api/v1/apps/{their_app.json()['id']}/environments/dev",
            {"project_id": seeded.env["dev"]},
        ),
        ("DELETE", f"/api/v1/apps/{app}/environments/dev", None),
        ("POST", f"/api/v1/apps/{app}/promotions", {"from": "dev", "to": "staging"}),
    ]
    for method, path, body in attempts:
        response = await seeded.http.request(method, path, json=body, headers=mallory.headers)
        assert response.status_code == 404, (method, path, response.text)
    listed = await seeded.http.get("/api/v1/apps", headers=mallory.headers)
    assert [a["name"] for a in listed.json()] == ["m"]
    assert table_fingerprints(seeded.database_url) == before


async def test_a_second_prod_project_is_refused_and_links_follow_environments(
    seeded: Seeded,
) -> None:
    other = await seeded.call("POST", "/api/v1/projects", json={"name": "prod 2"})
    app = seeded.app["id"]
    second = await seeded.call(
        "PUT", f"/api/v1/apps/{app}/environments/prod", json={"project_id": other.json()["id"]}
    )
    assert second.status_code == 409, second.text
    assert "already has a prod project" in second.json()["error"]["message"]
    wrong_slot = await seeded.call(
        "PUT", f"/api/v1/apps/{app}/environments/dev", json={"project_id": other.json()["id"]}
    )
    assert wrong_slot.status_code == 409
    assert "can fill only the prod slot" in wrong_slot.json()["error"]["message"]
    # Relinking the project already there is a no-op; unlink, then the other fits.
    same = await seeded.call(
        "PUT", f"/api/v1/apps/{app}/environments/prod", json={"project_id": seeded.env["prod"]}
    )
    assert same.status_code == 200 and same.json()["environments"] == seeded.env
    unlinked = await seeded.call("DELETE", f"/api/v1/apps/{app}/environments/prod")
    assert unlinked.json()["environments"]["prod"] is None
    relinked = await seeded.call(
        "PUT", f"/api/v1/apps/{app}/environments/prod", json={"project_id": other.json()["id"]}
    )
    assert relinked.status_code == 200
    assert relinked.json()["environments"]["prod"] == other.json()["id"]


def promotion_entries(database_url: str) -> list[dict[str, Any]]:
    with psycopg.connect(database_url, row_factory=dict_row) as admin:
        return admin.execute(
            "select * from public.audit_log where action = 'promotion.applied' order by id"
        ).fetchall()


async def test_every_applied_promotion_is_recorded_once_with_its_plan(seeded: Seeded) -> None:
    app = seeded.app["id"]
    body = {"from": "dev", "to": "staging", "include_limits": True, "carry_urls": True}
    dry = await seeded.promote(**body)
    assert dry.status_code == 200
    assert promotion_entries(seeded.database_url) == []  # a dry run records nothing

    applied = await seeded.promote(**body, dry_run=False, fingerprint=dry.json()["fingerprint"])
    assert applied.status_code == 200, applied.text
    [entry] = promotion_entries(seeded.database_url)
    assert entry["actor_type"] == "user" and entry["actor_id"] == seeded.user.user.id
    assert (entry["target_type"], str(entry["target_id"])) == ("app", app)
    assert str(entry["project_id"]) == seeded.env["staging"]
    assert entry["project_environment"] == "staging" and entry["project_name"] == "shop-staging"
    changes = entry["changes"]
    # Exactly the plan reviewed in the dry run, URLs as applied.
    assert changes["plan"] == applied.json()["plan"] == dry.json()["plan"]
    assert changes["fingerprint"] == dry.json()["fingerprint"]
    assert changes["app"] == {"id": app, "name": "shop"}
    assert changes["from"] == {
        "environment": "dev",
        "project_id": seeded.env["dev"],
        "project_name": "shop-dev",
    }
    assert changes["to"]["project_id"] == seeded.env["staging"]
    # Never a secret: the new endpoint's signing secret is nowhere in the entry.
    [secret] = applied.json()["secrets"].values()
    assert secret not in json.dumps(changes, default=str)
    # The changes' own entries, from the triggers, share the promotion's transaction.
    with psycopg.connect(seeded.database_url, row_factory=dict_row) as admin:
        together = admin.execute(
            "select action from public.audit_log where correlation_id = %s order by id",
            (entry["correlation_id"],),
        ).fetchall()
    assert [row["action"] for row in together] == [
        "project.limits_changed",
        "webhook_endpoint.created",
        "webhook_endpoint.updated",
        "promotion.applied",
    ]

    # A stale fingerprint (the plan already applied) and a refused prod promotion add none.
    stale = await seeded.promote(**body, dry_run=False, fingerprint=dry.json()["fingerprint"])
    assert stale.status_code == 409
    to_prod = await seeded.promote(**{"from": "staging", "to": "prod", "carry_urls": True})
    unconfirmed = await seeded.promote(
        **{"from": "staging", "to": "prod", "carry_urls": True, "dry_run": False},
        fingerprint=to_prod.json()["fingerprint"],
    )
    assert unconfirmed.status_code == 422
    assert len(promotion_entries(seeded.database_url)) == 1
    confirmed = await seeded.promote(
        **{"from": "staging", "to": "prod", "carry_urls": True, "dry_run": False},
        fingerprint=to_prod.json()["fingerprint"],
        confirm_name="shop-prod",
    )
    assert confirmed.status_code == 200, confirmed.text
    entries = promotion_entries(seeded.database_url)
    assert len(entries) == 2 and str(entries[1]["project_id"]) == seeded.env["prod"]
    assert entries[1]["changes"]["plan"] == confirmed.json()["plan"]
    # The owner reads them through the API, in each target's trail.
    trail = await seeded.call(
        "GET",
        f"/api/v1/projects/{seeded.env['prod']}/audit",
        params={"action": "promotion.applied"},
    )
    assert trail.status_code == 200, trail.text
    assert [e["action"] for e in trail.json()["entries"]] == ["promotion.applied"]


async def test_a_failed_apply_records_no_promotion(seeded: Seeded) -> None:
    await seeded.endpoint("dev", "shipping", "https://dev.example.com/shipping")
    dry = await seeded.promote(**{"from": "dev", "to": "staging", "carry_urls": True})
    with psycopg.connect(seeded.database_url, autocommit=True) as admin:
        admin.execute(INJECT)
    failed = await seeded.promote(
        **{"from": "dev", "to": "staging", "carry_urls": True, "dry_run": False},
        fingerprint=dry.json()["fingerprint"],
    )
    assert failed.status_code == 500, failed.text
    assert promotion_entries(seeded.database_url) == []
