"""The dashboard's app pages over HTTP (the console served on loopback, real Postgres): an app
made with its three projects, an endpoint added in dev seen as drift, promoted forward with the
plan shown first and its signing secret shown once; another user's app is not found; bad input
(an unknown environment, a backward promotion, a stale plan, prod without the typed name) is
refused with a clear message and changes nothing."""

from __future__ import annotations

import html
import re
from collections.abc import AsyncIterator

import httpx
import pytest

from console.context import CSRF_FIELD
from tests.console.test_apps_api import table_fingerprints
from tests.console.test_dashboard import csrf_token, sign_in

SECRETS_SHOWN = re.compile(r'data-secret-for="([a-z0-9-]+)">(whsec_[A-Za-z0-9+/=]+)<')
FINGERPRINT = re.compile(r'name="fingerprint" value="([0-9a-f]{64})"')


@pytest.fixture
async def http(served_console: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=served_console, timeout=30) as client:
        yield client


async def new_app(http: httpx.AsyncClient, name: str = "shop") -> str:
    """An app with its three projects, made through the Apps page; its path."""
    token = csrf_token(await http.get("/apps"))
    created = await http.post(
        "/apps", data={"name": name, "create_projects": "yes", CSRF_FIELD: token}
    )
    assert created.status_code == 303, created.text
    location: str = created.headers["location"]
    assert re.fullmatch(r"/apps/[0-9a-f-]{36}", location), location
    return location


def project_ids(page: str) -> dict[str, str]:
    """The projects of each environment column of an app page."""
    found = {}
    for env in ("dev", "staging", "prod"):
        column = page.split(f'id="env-{env}"', 1)[1].split('class="env-column"', 1)[0]
        match = re.search(r'href="/projects/([0-9a-f-]{36})"', column)
        assert match is not None, env
        found[env] = match[1]
    return found


def report_rows(page: str) -> dict[str, tuple[str, str]]:
    """The parity report's rows: field to (class, promotable)."""
    return {
        field: (klass, promotable)
        for klass, field, promotable in re.findall(
            r'data-class="([a-z-]+)" data-field="([^"]+)" data-promotable="(yes|no)"', page
        )
    }


async def add_endpoint(http: httpx.AsyncClient, project: str, name: str, url: str) -> None:
    token = csrf_token(await http.get(f"/projects/{project}"))
    added = await http.post(
        f"/projects/{project}/webhooks",
        data={"name": name, "url": url, "event_types": "order.created", CSRF_FIELD: token},
    )
    assert added.status_code == 303
    shown = (await http.get(f"/projects/{project}")).text
    assert f'data-endpoint-name="{name}"' in shown
    assert f"{name} (" in shown  # the secret box names the endpoint


async def plan(http: httpx.AsyncClient, app: str, source: str, target: str) -> tuple[str, str]:
    page = await http.get(f"{app}/promote", params={"from": source, "to": target})
    assert page.status_code == 200, page.text
    match = FINGERPRINT.search(page.text)
    assert match is not None
    return page.text, match[1]


async def test_an_endpoint_added_in_dev_is_drift_and_is_promoted_forward(
    http: httpx.AsyncClient, database_url: str
) -> None:
    await sign_in(http, "ada@example.com", "correct horse")
    app = await new_app(http)
    page = (await http.get(app)).text
    for env, label in (("dev", "Development"), ("staging", "Staging"), ("prod", "Production")):
        assert f'data-environment="{env}">{label}</span>' in page
    ids = project_ids(page)
    # Each project's page leads to its app, and the Apps list to the app.
    assert f'href="{app}"' in (await http.get(f"/projects/{ids['staging']}")).text
    assert f'href="{app}"' in (await http.get("/apps")).text

    await add_endpoint(http, ids["dev"], "orders", "https://dev.example.com/orders")
    rows = report_rows((await http.get(app, params={"from": "dev", "to": "staging"})).text)
    assert rows["endpoints.orders"] == ("drift", "yes")
    assert rows["policy.rate_limit_multiplier"] == ("policy", "no")

    # The plan first: a dry run that changes nothing.
    before = table_fingerprints(database_url)
    shown, fingerprint = await plan(http, app, "dev", "staging")
    assert 'data-action="create_endpoint" data-endpoint="orders"' in shown
    assert 'name="confirm_name"' not in shown  # staging needs no typed name
    assert table_fingerprints(database_url) == before
    applied = await http.post(
        f"{app}/promote",
        data={
            "from": "dev",
            "to": "staging",
            "fingerprint": fingerprint,
            "url.orders": "https://staging.example.com/orders",
            CSRF_FIELD: csrf_token(await http.get(app)),
        },
    )
    assert applied.status_code == 303, applied.text
    assert applied.headers["location"] == f"{app}?from=dev&to=staging#promote"
    after = await http.get(f"{app}?from=dev&to=staging")
    assert "Promoted 1 change from Development to Staging." in after.text
    [(name, secret)] = SECRETS_SHOWN.findall(after.text)
    assert name == "orders"
    again = (await http.get(f"{app}?from=dev&to=staging")).text
    assert secret not in again  # shown once
    assert not [f for f, (_, promotable) in report_rows(again).items() if promotable == "yes"]
    assert report_rows(again)["endpoints.orders.url"] == ("environment-specific", "no")

    # Into prod: the typed name is asked for, and checked.
    shown, fingerprint = await plan(http, app, "staging", "prod")
    assert 'name="confirm_name"' in shown and "shop-prod" in shown
    body = {
        "from": "staging",
        "to": "prod",
        "fingerprint": fingerprint,
        "carry_urls": "yes",
        CSRF_FIELD: csrf_token(await http.get(app)),
    }
    before = table_fingerprints(database_url)
    refused = await http.post(f"{app}/promote", data={**body, "confirm_name": "shop"})
    assert refused.headers["location"] == f"{app}/promote?from=staging&to=prod#apply"
    assert "type the name of the prod project" in (await http.get(refused.headers["location"])).text
    assert table_fingerprints(database_url) == before
    done = await http.post(f"{app}/promote", data={**body, "confirm_name": "shop-prod"})
    assert done.status_code == 303
    shown_prod = (await http.get(done.headers["location"])).text
    assert [n for n, _ in SECRETS_SHOWN.findall(shown_prod)] == ["orders"]
    rows = report_rows(shown_prod)
    assert not [f for f, (_, promotable) in rows.items() if promotable == "yes"]
    assert not [f for f in rows if f.startswith("endpoints.")]  # staging's URL carried over


async def test_another_users_app_is_not_found(
    http: httpx.AsyncClient, served_console: str, database_url: str
) -> None:
    await sign_in(http, "ada@example.com", "correct horse")
    app = await new_app(http)
    ids = project_ids((await http.get(app)).text)
    async with httpx.AsyncClient(base_url=served_console, timeout=30) as bob:
        await sign_in(bob, "bob@example.com", "correct horse")
        token = csrf_token(await bob.get("/apps"))
        theirs = await new_app(bob, "bobs")
        before = table_fingerprints(database_url)
        for method, path, data in [
            ("GET", app, None),
            ("GET", f"{app}?from=dev&to=staging", None),
            ("GET", f"{app}/promote?from=dev&to=staging", None),
            ("POST", f"{app}/promote", {"from": "dev", "to": "staging", "fingerprint": "0"}),
            ("POST", f"{app}/environments/dev/unlink", {}),
            ("POST", f"{theirs}/environments/dev", {"project_id": ids["dev"]}),
        ]:
            response = await bob.request(
                method, path, data=None if data is None else {**data, CSRF_FIELD: token}
            )
            # Their own app with another's project in it too: that project is not found.
            assert response.status_code == 404, (method, path, response.text)
            assert "Something went wrong (404)" in response.text
        assert "shop" not in (await bob.get("/apps")).text
        assert table_fingerprints(database_url) == before


async def test_bad_input_is_refused_clearly_and_changes_nothing(
    http: httpx.AsyncClient, database_url: str
) -> None:
    await sign_in(http, "ada@example.com", "correct horse")
    app = await new_app(http)
    ids = project_ids((await http.get(app)).text)
    await add_endpoint(http, ids["dev"], "orders", "https://dev.example.com/orders")
    _, fingerprint = await plan(http, app, "dev", "staging")
    token = csrf_token(await http.get(app))
    before = table_fingerprints(database_url)

    unknown = await http.get(app, params={"from": "qa", "to": "prod"})
    assert unknown.status_code == 422
    assert "from:" in unknown.text and "&#39;dev&#39;" in unknown.text
    same = await http.get(app, params={"from": "dev", "to": "dev"})
    assert same.status_code == 422
    assert "compare two different environments" in same.text
    backward = await http.get(f"{app}/promote", params={"from": "prod", "to": "staging"})
    assert backward.status_code == 422
    assert "promotion goes forward only" in html.unescape(backward.text)

    async def refusal(data: dict[str, str]) -> str:
        response = await http.post(f"{app}/promote", data={**data, CSRF_FIELD: token})
        assert response.status_code == 303, response.text
        return html.unescape((await http.get(response.headers["location"])).text)

    assert "promotion goes forward only" in await refusal(
        {"from": "staging", "to": "dev", "fingerprint": fingerprint}
    )
    unnamed = await http.post(
        f"{app}/promote", data={"from": "qa", "to": "prod", CSRF_FIELD: token}
    )
    assert unnamed.status_code == 422 and "choose environments" in unnamed.text
    assert "no URL for the endpoints this promotion creates" in await refusal(
        {"from": "dev", "to": "staging", "fingerprint": fingerprint}
    )
    assert table_fingerprints(database_url) == before

    # The plan goes stale: dev changes after it was shown.
    await add_endpoint(http, ids["dev"], "billing", "https://dev.example.com/billing")
    before = table_fingerprints(database_url)
    stale = await refusal(
        {"from": "dev", "to": "staging", "fingerprint": fingerprint, "carry_urls": "yes"}
    )
    assert "Either environment changed since the dry run" in stale
    # The page it lands on is the plan made afresh, billing included.
    assert 'data-endpoint="billing"' in stale
    assert table_fingerprints(database_url) == before
