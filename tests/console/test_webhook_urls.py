"""Webhook URLs are parsed (shared/webhook_urls.py), the same way through the API and the
dashboard's form: receivers on any port, IPv6 literals and international host names are taken
(and stored as the worker will request them); what is refused says what to change, and nothing
is stored."""

from __future__ import annotations

import html
import re

import httpx
import pytest

from console.context import CSRF_FIELD
from shared.db import Database
from shared.webhook_urls import MAX_URL_LENGTH, URL_PATTERN, parse_webhook_url
from tests.console.conftest import SignInAs
from tests.console.test_api import create_project
from tests.console.test_dashboard import create_project as create_project_page
from tests.console.test_dashboard import csrf_token, sign_in

# (typed, stored)
ACCEPTED = [
    ("https://hooks.example.com:10443/in", "https://hooks.example.com:10443/in"),
    ("https://hooks.example.com:65535/in", "https://hooks.example.com:65535/in"),
    ("https://[2001:db8::10]:8443/in", "https://[2001:db8::10]:8443/in"),
    ("https://bücher.example/in?q=1", "https://xn--bcher-kva.example/in?q=1"),
    ("https://xn--bcher-kva.example/in", "https://xn--bcher-kva.example/in"),
    ("HTTP://Hooks.Example.COM:8080/In", "http://hooks.example.com:8080/In"),
]

# (typed, words the refusal must contain)
REFUSED = [
    ("https://user:secret@hooks.example.com/in", "user name and password"),
    ("https://hooks.example.com/a path", "no spaces"),
    ("https://hooks example.com/in", "no spaces"),
    ("ftp://hooks.example.com/in", "ftp: URLs are not delivered to"),
    ("https://hooks.example.com:0/in", "from 1 to 65535"),
    ("https://hooks.example.com:65536/in", "from 1 to 65535"),
    ("https://hooks.example.com/in#top", "#fragment"),
    ("hooks.example.com/in", "must start with https://"),
    ("https://[2001:db8::zz]/in", "not a valid IPv6 address"),
    ("https://hooks..example.com/in", "not a valid host name"),
    ("https://hooks.example.com/100%", "%25"),
    ("https://" + "a" * MAX_URL_LENGTH, f"at most {MAX_URL_LENGTH} characters"),
]


def test_the_parser_and_the_stated_grammar_agree() -> None:
    grammar = re.compile(URL_PATTERN)
    for typed, stored in ACCEPTED:
        assert parse_webhook_url(typed).url == stored
        assert grammar.fullmatch(typed), typed
        assert grammar.fullmatch(stored), stored
    assert parse_webhook_url("https://bücher.example/in").display == "https://bücher.example/in"
    for typed, _ in REFUSED:  # the length is the schema's maxLength
        assert grammar.fullmatch(typed) is None or len(typed) > MAX_URL_LENGTH, typed[:80]


async def test_the_api_takes_every_port_ipv6_and_international_names(
    client: httpx.AsyncClient, sign_in_as: SignInAs, db: Database
) -> None:
    alice = await sign_in_as("alice@example.com")
    project = await create_project(client, alice.headers, "p", "dev")
    url = f"/api/v1/projects/{project['id']}/webhook-endpoints"
    for typed, stored in ACCEPTED:
        created = await client.post(url, json={"url": typed}, headers=alice.headers)
        assert created.status_code == 201, (typed, created.text)
        assert created.json()["endpoint"]["url"] == stored
    listed = (await client.get(url, headers=alice.headers)).json()
    assert [e["url"] for e in listed] == [stored for _, stored in ACCEPTED]
    idn = next(e for e in listed if "xn--" in e["url"])
    assert idn["display_url"] == "https://bücher.example/in?q=1"
    async with db.as_service() as conn:
        cur = await conn.execute(
            "select url from public.webhook_endpoints where project_id = %s order by created_at",
            (project["id"],),
        )
        assert [row["url"] for row in await cur.fetchall()] == [s for _, s in ACCEPTED]


@pytest.mark.parametrize(("typed", "words"), REFUSED)
async def test_the_api_refuses_with_a_message_saying_what_to_change(
    client: httpx.AsyncClient, sign_in_as: SignInAs, db: Database, typed: str, words: str
) -> None:
    alice = await sign_in_as("alice@example.com")
    project = await create_project(client, alice.headers, "p", "dev")
    url = f"/api/v1/projects/{project['id']}/webhook-endpoints"
    refused = await client.post(url, json={"url": typed}, headers=alice.headers)
    assert refused.status_code == 422, refused.text
    error = refused.json()["error"]
    assert words in error["message"], error
    assert [f["field"] for f in error["fields"]] == ["url"]
    assert (await client.get(url, headers=alice.headers)).json() == []


async def test_the_schema_states_what_is_accepted(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()["components"]["schemas"]
    typed = schema["EndpointCreate"]["properties"]["url"]
    assert typed["format"] == "iri"
    assert typed["pattern"] == URL_PATTERN
    assert typed["maxLength"] == MAX_URL_LENGTH
    assert "65535" in typed["description"]
    assert schema["EndpointOut"]["properties"]["url"]["format"] == "uri"


async def test_the_form_takes_the_same_urls_and_shows_both_forms(
    client: httpx.AsyncClient,
) -> None:
    await sign_in(client, "ada@example.com", "correct horse")
    token = csrf_token(await client.get("/projects"))
    project = await create_project_page(client, token, "lab", "dev")
    for typed, _ in ACCEPTED:
        # A pasted URL's surrounding spaces are trimmed by the form.
        posted = await client.post(
            f"{project}/webhooks", data={"url": f" {typed} ", CSRF_FIELD: token}
        )
        assert posted.status_code == 303
        shown = await client.get(project)
        assert 'id="new-endpoint-value"' in shown.text, typed
    page = html.unescape((await client.get(project)).text)
    for _, stored in ACCEPTED:
        assert stored in page
    # The international name as a person reads it, and as it is requested.
    assert "<code>https://bücher.example/in?q=1</code>" in page
    assert "https://xn--bcher-kva.example/in?q=1</code>" in page


async def test_the_form_refuses_with_the_same_messages(client: httpx.AsyncClient) -> None:
    await sign_in(client, "ada@example.com", "correct horse")
    token = csrf_token(await client.get("/projects"))
    project = await create_project_page(client, token, "lab", "dev")
    for typed, words in REFUSED[:7]:
        posted = await client.post(f"{project}/webhooks", data={"url": typed, CSRF_FIELD: token})
        assert posted.status_code == 303
        page = html.unescape((await client.get(project)).text)
        assert words in page, typed
        assert 'id="new-endpoint-value"' not in page
    assert 'id="endpoint-list"' not in (await client.get(project)).text
