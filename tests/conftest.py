"""Fixtures every test can use: real Postgres databases, users, and the CI rule that nothing skips.

Set `PARITY_REQUIRE_SERVICES=1` (CI does) to turn every skip into a failure: a test that would skip
for a missing service or browser must not pass silently there.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit
from uuid import UUID

import psycopg
import pytest
from loguru import logger

from ops import database
from shared.db import Database
from tests.logscan import SCAN_TEST, SUITE_RECORDS, SuiteRecords

REQUIRE_SERVICES = os.environ.get("PARITY_REQUIRE_SERVICES") == "1"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if REQUIRE_SERVICES and report.skipped:
        report.outcome = "failed"
        report.longrepr = f"skipped, but PARITY_REQUIRE_SERVICES=1 forbids skips: {report.longrepr}"
    return report


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The secret scan reads what every other test logged, so it runs last.
    items.sort(key=lambda item: item.name == SCAN_TEST)


@pytest.fixture(scope="session", autouse=True)
def suite_records() -> Iterator[SuiteRecords]:
    """Captures every loguru record of the session, serialised with its extra fields."""
    sink = logger.add(
        lambda message: SUITE_RECORDS.add_line(str(message)), level="DEBUG", serialize=True
    )
    try:
        yield SUITE_RECORDS
    finally:
        logger.remove(sink)


@pytest.fixture(scope="session")
def admin_url() -> str:
    """A connection to the server's maintenance database, for creating test databases."""
    return database.server_url(
        os.environ.get("TEST_DATABASE_URL"), database.DATA_DIR / "test-postgres"
    )


@pytest.fixture(scope="session")
def template_db(admin_url: str) -> Iterator[str]:
    """Migrated once per session with the real Supabase CLI."""
    with database.scratch_database(admin_url, "parity_template") as url:
        yield urlsplit(url).path.lstrip("/")


@pytest.fixture
def database_url(admin_url: str, template_db: str) -> Iterator[str]:
    """A fresh, fully migrated database for one test."""
    with database.scratch_database(admin_url, "parity_test", template=template_db) as url:
        yield url


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    async with Database(database_url, min_size=1, max_size=4) as database:
        yield database


@dataclass(frozen=True)
class User:
    id: UUID
    email: str


MakeUser = Callable[[str], Awaitable[User]]


@pytest.fixture
def make_user(database_url: str) -> MakeUser:
    """Create a row in auth.users, as Supabase Auth would on sign-up."""

    async def make(email: str) -> User:
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            cur = await conn.execute(
                "insert into auth.users (email) values (%s) returning id", (email,)
            )
            row = await cur.fetchone()
            assert row is not None
            return User(id=row[0], email=email)

    return make
