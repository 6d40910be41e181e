"""Fixtures every test can use: real Postgres databases, users, and the CI rule that nothing skips.

Set `PARITY_REQUIRE_SERVICES=1` (CI does) to turn every skip into a failure: a test that would skip
for a missing service or browser must not pass silently there.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator
from dataclasses import dataclass
from uuid import UUID

import psycopg
import pytest

from ops import database
from shared.db import Database

# The secret scan over everything the suite logs (in every xdist worker), the migrated template
# database (`template_db`, one for all xdist workers), and pytester for testing the scan itself.
pytest_plugins = ("tests.parallel", "tests.logscan", "pytester")

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
    """Longest first: xdist hands tests out in collection order, so a test of 100 s started last
    would be the run's tail. `@pytest.mark.slow(SECONDS)` says roughly how long a test takes; the
    sort is stable, so the rest keep their order (and every xdist worker collects the same one)."""
    items.sort(key=lambda item: -expected_seconds(item))


def expected_seconds(item: pytest.Item) -> float:
    mark = item.get_closest_marker("slow")
    if mark is None:
        return 0.0
    return float(mark.args[0]) if mark.args else 10.0


@pytest.fixture(scope="session")
def admin_url() -> str:
    """A connection to the server's maintenance database, for creating test databases."""
    return database.server_url(
        os.environ.get("TEST_DATABASE_URL"), database.DATA_DIR / "test-postgres"
    )


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
