"""The token a client presents says its environment and kind (`nm_dev_pk_...`); its key's row says
them too. The row is what is trusted, and a token that disagrees with it was not issued for it: the
gateway refuses it (401) whatever way the row came to disagree, triggers bypassed included."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from shared.environment import Environment
from shared.keys import KeyKind, generate_token, key_prefix
from tests.gateway.conftest import (
    IssueKey,
    StartGateway,
    Upstream,
    bearer,
    edit_as_superuser,
    register_token,
)
from tests.gateway.test_errors import assert_error, call

MISMATCH = "does not match its record"


@pytest.mark.parametrize(
    ("token_environment", "token_kind", "row_environment", "row_kind"),
    [
        (Environment.PROD, KeyKind.SECRET, Environment.DEV, KeyKind.SECRET),
        (Environment.DEV, KeyKind.PUBLISHABLE, Environment.DEV, KeyKind.SECRET),
        (Environment.STAGING, KeyKind.SECRET, Environment.PROD, KeyKind.PUBLISHABLE),
        (Environment.DEV, KeyKind.SECRET, Environment.DEV, KeyKind.SECRET),  # agreeing: served
    ],
)
async def test_a_row_disagreeing_with_its_token_is_refused(
    start_gateway: StartGateway,
    http: aiohttp.ClientSession,
    issue_key: IssueKey,
    database_url: str,
    upstream: Upstream,
    token_environment: Environment,
    token_kind: KeyKind,
    row_environment: Environment,
    row_kind: KeyKind,
) -> None:
    gateway = await start_gateway()
    # The project matches the row, so only the token disagrees (no environment mismatch).
    project = (await issue_key(row_environment.value)).project
    token = generate_token(token_environment, token_kind)
    register_token(token.token)
    # Written as the superuser around every rule (replica mode skips ordinary triggers), with the
    # token's hash under a row that is consistent in itself: its prefix names the row's
    # environment and kind, as the table's CHECK demands, so only the token disagrees.
    await edit_as_superuser(
        database_url,
        ("set local session_replication_role = replica", ()),
        (
            "insert into public.api_keys"
            " (project_id, kind, environment, prefix, last_four, key_hash)"
            " values (%s, %s, %s, %s, %s, %s)",
            (
                project.id,
                row_kind.value,
                row_environment.value,
                key_prefix(row_environment, row_kind),
                token.last_four,
                token.hash,
            ),
        ),
    )
    forwarded = len(upstream.requests)
    for _ in range(2):  # the first answer comes from the database, the second from the cache
        status, body, headers = await call(http, "GET", gateway.url, headers=bearer(token.token))
        if (token_environment, token_kind) == (row_environment, row_kind):
            assert status == 200
        else:
            assert MISMATCH in assert_error(status, body, 401, "INVALID_API_KEY")
            assert "RateLimit" not in headers  # not an identified key: no budget shown
    if (token_environment, token_kind) != (row_environment, row_kind):
        assert len(upstream.requests) == forwarded


async def test_a_cached_key_whose_kind_is_changed_by_hand_is_refused(
    start_gateway: StartGateway,
    http: aiohttp.ClientSession,
    issue_key: IssueKey,
    database_url: str,
) -> None:
    """A kind changed in the database reaches a gateway that cached the key (the change
    notifies), even when written in replica mode."""
    gateway = await start_gateway()
    seeded = await issue_key("prod", "pk")
    status, _, _ = await call(http, "GET", gateway.url, headers=bearer(seeded.token))
    assert status == 200
    await edit_as_superuser(
        database_url,
        ("set local session_replication_role = replica", ()),
        (
            "update public.api_keys set kind = 'sk', prefix = %s where id = %s",
            (key_prefix(Environment.PROD, KeyKind.SECRET), seeded.key_id),
        ),
    )
    for _ in range(40):  # the notification arrives within moments
        status, body, _ = await call(http, "GET", gateway.url, headers=bearer(seeded.token))
        if status != 200:
            assert MISMATCH in assert_error(status, body, 401, "INVALID_API_KEY")
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the changed kind never reached the gateway")
