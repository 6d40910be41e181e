"""US-010 and US-002 as properties: prefixes per environment and kind, checksums that catch any
single-character change, and no key acting outside its own environment."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import uuid4

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.app import Gateway, authenticate, authorize
from shared import projects
from shared.apikeys import Credential
from shared.db import Database
from shared.environment import Environment
from shared.errors import EnvironmentMismatch, InvalidApiKey
from shared.keys import BASE62, KeyKind, generate_token, parse_token
from tests.conftest import MakeUser
from tests.gateway.conftest import (
    edit_as_superuser,
    gateway_settings,
    platform_settings,
    register_token,
)

EXPECTED_PREFIX = {
    (Environment.PROD, KeyKind.PUBLISHABLE): "nm_live_pk_",
    (Environment.PROD, KeyKind.SECRET): "nm_live_sk_",
    (Environment.DEV, KeyKind.PUBLISHABLE): "nm_dev_pk_",
    (Environment.DEV, KeyKind.SECRET): "nm_dev_sk_",
    (Environment.STAGING, KeyKind.PUBLISHABLE): "nm_staging_pk_",
    (Environment.STAGING, KeyKind.SECRET): "nm_staging_sk_",
}
environments = st.sampled_from(list(Environment))
kinds = st.sampled_from(list(KeyKind))


@given(environments, kinds)
def test_prefix_follows_environment_and_kind(environment: Environment, kind: KeyKind) -> None:
    token = generate_token(environment, kind)
    prefix = EXPECTED_PREFIX[(environment, kind)]
    assert token.token.startswith(prefix)
    assert len(token.token) - len(prefix) >= 30 + 4  # 30+ random characters and a checksum
    parsed = parse_token(token.token)
    assert (parsed.environment, parsed.kind) == (environment, kind)


@given(environments, kinds, st.data())
def test_any_single_character_change_fails(
    environment: Environment, kind: KeyKind, data: st.DataObject
) -> None:
    token = generate_token(environment, kind).token
    position = data.draw(st.integers(0, len(token) - 1), label="position")
    replacement = data.draw(
        st.sampled_from(BASE62 + "_-.").filter(lambda c: c != token[position]), label="char"
    )
    changed = token[:position] + replacement + token[position + 1 :]
    with pytest.raises(InvalidApiKey):
        # A changed prefix may still be a valid prefix: then the checksum catches it.
        parse_token(changed)


def credential(key_environment: Environment, project_environment: Environment) -> Credential:
    return Credential(
        key_id=uuid4(),
        project_id=uuid4(),
        kind=KeyKind.SECRET,
        key_environment=key_environment,
        key_status="active",
        expires_at=None,
        prefix="nm_x_sk_",
        last_four="abcd",
        project_environment=project_environment,
        project_status="active",
        rate_limit=None,
        request_cap=None,
    )


@given(environments, environments, st.sampled_from(["GET", "POST", "DELETE"]))
def test_a_key_never_authenticates_against_a_project_of_another_environment(
    key_environment: Environment, project_environment: Environment, method: str
) -> None:
    """Whatever rows the database holds (triggers bypassed included), the gateway's decision
    refuses a key whose environment is not its project's: a dev key never acts on prod."""
    decided = credential(key_environment, project_environment)
    if key_environment is project_environment:
        authorize(authenticate(decided, datetime.now(UTC)), method)
    else:
        with pytest.raises(EnvironmentMismatch, match=f"{key_environment.value} key"):
            authorize(authenticate(decided, datetime.now(UTC)), method)


@pytest.mark.parametrize("project_environment", list(Environment))
@pytest.mark.parametrize("key_environment", list(Environment))
async def test_every_pairing_against_real_rows(
    key_environment: Environment,
    project_environment: Environment,
    db: Database,
    make_user: MakeUser,
    database_url: str,
) -> None:
    """The whole (finite) domain against the database: a key row of one environment on a project
    of another (written around the trigger, as only an operator could) never gets through the
    gateway's decision, and a matching one does."""
    owner = await make_user("pairs@example.com")
    async with db.as_service() as conn:
        project = await projects.create_project(
            conn, name="p", environment=project_environment, owner_id=owner.id
        )
    token = generate_token(key_environment, KeyKind.SECRET)
    register_token(token.token)
    await edit_as_superuser(
        database_url,
        ("alter table public.api_keys disable trigger api_keys_enforce_environment", ()),
        (
            "insert into public.api_keys"
            " (project_id, kind, environment, prefix, last_four, key_hash)"
            " values (%s, 'sk', %s, %s, %s, %s)",
            (project.id, key_environment.value, token.prefix, token.last_four, token.hash),
        ),
        ("alter table public.api_keys enable trigger api_keys_enforce_environment", ()),
    )
    gateway = Gateway(platform_settings(database_url), gateway_settings())
    await gateway.db.open()
    try:
        if key_environment is project_environment:
            credential, _ = await gateway.decide(token.token, "POST")
            assert credential.project_id == project.id
        else:
            with pytest.raises(EnvironmentMismatch):
                await gateway.decide(token.token, "POST")
    finally:
        await gateway.db.close()
