"""The operator command line (`parity keys ...`) and the demo `make run` seeds, end to end."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from uuid import UUID

import aiohttp
import pytest
from aiohttp import web

from ops.demo import seed_demo
from ops.demo_upstream import make_app
from shared import apikeys, projects
from shared.db import Database
from shared.errors import InvalidInput
from shared.keys import TOKEN_PATTERN
from tests.conftest import MakeUser
from tests.gateway.conftest import (
    REPO_ROOT,
    bearer,
    gateway_settings,
    platform_settings,
    register_token,
    run_gateway,
)


def parity(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ops", "keys", *args],
        cwd=REPO_ROOT,
        env={**os.environ, "DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def tokens_in(text: str) -> list[str]:
    found = [match.group(0) for match in TOKEN_PATTERN.finditer(text)]
    for token in found:
        register_token(token)
    return found


async def test_keys_command_creates_lists_rotates_and_revokes(
    db: Database, make_user: MakeUser, database_url: str
) -> None:
    owner = await make_user("ops@example.com")
    async with db.as_service() as conn:
        project = await projects.create_project(
            conn, name="ops", environment="staging", owner_id=owner.id
        )

    created = parity(database_url, "create", "--project", str(project.id), "--kind", "pk")
    assert created.returncode == 0, created.stderr
    [token] = tokens_in(created.stdout)
    assert token.startswith("nm_staging_pk_")
    key_id = created.stdout.split()[0]

    listed = parity(database_url, "list", "--project", str(project.id))
    assert listed.returncode == 0
    assert tokens_in(listed.stdout) == []  # shown once: never again
    assert f"nm_staging_pk_…{token[-4:]}" in listed.stdout and "active" in listed.stdout

    rotated = parity(database_url, "rotate", key_id, "--grace-seconds", "0")
    assert rotated.returncode == 0, rotated.stderr
    [new_token] = tokens_in(rotated.stdout)
    assert new_token != token and new_token.startswith("nm_staging_pk_")
    assert f"{key_id}  nm_staging_pk_…{token[-4:]}  pk  staging  revoked" in rotated.stdout

    again = parity(database_url, "rotate", key_id)
    assert again.returncode == 1 and "is revoked: issue a new key instead" in again.stderr
    new_id = rotated.stdout.splitlines()[1].split()[0]
    revoked = parity(database_url, "revoke", new_id)
    assert revoked.returncode == 0 and "revoked" in revoked.stdout

    bad = parity(database_url, "create", "--project", str(UUID(int=7)))
    assert bad.returncode == 1 and "not found" in bad.stderr
    assert tokens_in(bad.stdout + bad.stderr) == []
    negative = parity(
        database_url, "create", "--project", str(project.id), "--expires-in-days", "-1"
    )
    assert negative.returncode == 2 and "must be more than 0" in negative.stderr


async def test_bad_key_input_is_refused_and_changes_nothing(
    db: Database, make_user: MakeUser
) -> None:
    owner = await make_user("input@example.com")
    async with db.as_service() as conn:
        project = await projects.create_project(conn, name="p", owner_id=owner.id)
    for kind, expires_at, message in [
        ("xk", None, "invalid key kind 'xk'"),
        ("sk", datetime.now(UTC) - timedelta(minutes=1), "expiry must be in the future"),
    ]:
        with pytest.raises(InvalidInput, match=message):
            async with db.as_service() as conn:
                await apikeys.create_key(conn, project.id, kind, expires_at=expires_at)
    async with db.as_service() as conn:
        issued = await apikeys.create_key(conn, project.id, "sk")
        register_token(issued.token)
        with pytest.raises(InvalidInput, match="grace period must not be negative"):
            await apikeys.rotate_key(conn, issued.key.id, grace=timedelta(seconds=-1))
        assert [key.id for key in await apikeys.list_keys(conn, project.id)] == [issued.key.id]


@pytest.fixture
async def demo_upstream_url() -> AsyncIterator[str]:
    runner = web.AppRunner(make_app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def test_demo_seed_is_repeatable_and_its_keys_work_through_the_gateway(
    db: Database, database_url: str, demo_upstream_url: str
) -> None:
    first = await seed_demo(db)
    second = await seed_demo(db)
    for demo in (*first, *second):
        register_token(demo.token)
    assert [d.environment.value for d in second] == ["prod", "dev", "staging"]
    assert [d.project_id for d in first] == [d.project_id for d in second]  # projects reused
    assert "token='<redacted>'" in repr(second[0])

    async with (
        run_gateway(
            platform_settings(database_url), gateway_settings(upstream_url=demo_upstream_url)
        ) as gateway,
        aiohttp.ClientSession() as http,
    ):
        for demo in second:
            assert demo.curl(gateway.url).endswith(f"{gateway.url}/hello")
            async with http.get(f"{gateway.url}/hello", headers=bearer(demo.token)) as response:
                assert response.status == 200
                echoed = await response.json()
            assert echoed["path"] == "/hello"
            assert echoed["identity"]["x-parity-environment"] == demo.environment.value
            assert echoed["identity"]["x-parity-project-id"] == str(demo.project_id)
        for stale in first:  # the previous run's keys were revoked
            async with http.get(f"{gateway.url}/hello", headers=bearer(stale.token)) as response:
                assert response.status == 401
