"""US-001 through the real Supabase CLI: a database that already holds projects is migrated, and
its projects read prod; the environment column refuses anything but the three environments."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from ops import database

PRE_ENVIRONMENT = "20260101000000"
ENVIRONMENTS = "20260201000000"


@pytest.fixture
def empty_database(admin_url: str) -> Iterator[str]:
    name = database.unique_name("parity_migrate")
    url = database.create_database(admin_url, name)
    try:
        database.bootstrap(url)
        yield url
    finally:
        database.drop_database(admin_url, name)


def workdir_with(tmp_path: Path, versions: list[str]) -> Path:
    """A Supabase project folder holding only the migrations whose versions are listed."""
    migrations = tmp_path / "supabase" / "migrations"
    migrations.mkdir(parents=True)
    shutil.copy(database.SUPABASE_DIR / "config.toml", tmp_path / "supabase" / "config.toml")
    for path in sorted((database.SUPABASE_DIR / "migrations").glob("*.sql")):
        if path.name.split("_", 1)[0] in versions:
            shutil.copy(path, migrations / path.name)
    return tmp_path


def all_versions() -> list[str]:
    return sorted(
        p.name.split("_", 1)[0] for p in (database.SUPABASE_DIR / "migrations").glob("*.sql")
    )


def test_existing_projects_are_migrated_to_prod(empty_database: str, tmp_path: Path) -> None:
    output = database.push_migrations(
        empty_database, workdir=workdir_with(tmp_path, [PRE_ENVIRONMENT])
    )
    assert f"Applying migration {PRE_ENVIRONMENT}" in output
    assert database.applied_migrations(empty_database) == [PRE_ENVIRONMENT]

    with psycopg.connect(empty_database, autocommit=True) as conn:
        user = conn.execute(
            "insert into auth.users (email) values ('old@example.com') returning id"
        )
        owner = user.fetchone()
        assert owner is not None
        old = conn.execute(
            "insert into public.projects (owner_id, name)"
            " select %s, 'legacy ' || n from generate_series(1, 3) n returning id",
            (owner[0],),
        ).fetchall()
        conn.execute(
            "insert into public.api_keys (project_id, kind, prefix, last_four, key_hash)"
            " values (%s, 'sk', 'nm_live_sk_', 'abcd', sha256('legacy'::bytea))",
            (old[0][0],),
        )

    output = database.push_migrations(empty_database)
    assert f"Applying migration {ENVIRONMENTS}" in output
    assert database.applied_migrations(empty_database) == all_versions()

    with psycopg.connect(empty_database, autocommit=True) as conn:
        environments = conn.execute(
            "select environment::text from public.projects where id = any(%s)",
            ([row[0] for row in old],),
        ).fetchall()
        assert [row[0] for row in environments] == ["prod"] * 3
        key_env = conn.execute("select environment::text from public.api_keys").fetchall()
        assert key_env == [("prod",)]
        # A project inserted without an environment gets prod.
        fresh = conn.execute(
            "insert into public.projects (owner_id, name) values (%s, 'new')"
            " returning environment::text",
            (owner[0],),
        ).fetchone()
        assert fresh == ("prod",)


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        ("production", psycopg.errors.InvalidTextRepresentation, 'enum environment: "production"'),
        ("", psycopg.errors.InvalidTextRepresentation, 'enum environment: ""'),
        (None, psycopg.errors.NotNullViolation, 'column "environment"'),
    ],
)
def test_invalid_environments_are_rejected(
    database_url: str, value: str | None, error: type[Exception], message: str
) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        owner = conn.execute("insert into auth.users (email) values ('a@b.c') returning id")
        row = owner.fetchone()
        assert row is not None
        with pytest.raises(error, match=message):
            conn.execute(
                "insert into public.projects (owner_id, name, environment) values (%s, 'x', %s)",
                (row[0], value),
            )
        assert conn.execute("select count(*) from public.projects").fetchone() == (0,)
        conn.execute(
            "insert into public.projects (owner_id, name, environment) values (%s, 'ok', 'dev')",
            (row[0],),
        )
        with pytest.raises(error, match=message):
            conn.execute("update public.projects set environment = %s", (value,))
        assert conn.execute("select environment::text from public.projects").fetchall() == [
            ("dev",)
        ]


def test_second_push_applies_nothing_and_list_shows_everything(database_url: str) -> None:
    before = database.applied_migrations(database_url)
    output = database.push_migrations(database_url)
    assert "Remote database is up to date" in output
    assert "Applying migration" not in output
    assert database.applied_migrations(database_url) == before == all_versions()

    listing = database.list_migrations(database_url)
    for version in all_versions():
        # Each row shows the version on both sides: local and applied remotely.
        assert listing.count(version) >= 2, listing


HEADER = """-- Fail fast instead of queueing live traffic behind this migration's locks.
set lock_timeout = '5s';
set statement_timeout = '15min';
"""


def test_every_migration_starts_with_the_timeouts() -> None:
    paths = sorted((database.SUPABASE_DIR / "migrations").glob("*.sql"))
    assert paths
    missing = [p.name for p in paths if not p.read_text().startswith(HEADER)]
    assert missing == [], f"migrations without the lock and statement timeout header: {missing}"


def test_a_push_behind_an_open_transaction_fails_fast(empty_database: str, tmp_path: Path) -> None:
    """A long transaction holds a lock the environments migration needs: the push gives up after
    its lock_timeout instead of queueing every later query behind it, and applies nothing."""
    database.push_migrations(empty_database, workdir=workdir_with(tmp_path, [PRE_ENVIRONMENT]))
    with psycopg.connect(empty_database) as reader:
        reader.execute("select count(*) from public.projects")  # ACCESS SHARE, held: no commit
        started = time.monotonic()
        with pytest.raises(database.ProvisioningError, match="lock timeout"):
            database.push_migrations(empty_database)
        elapsed = time.monotonic() - started
        # Once the push gave up, nothing is left queued behind it: others read at once.
        with psycopg.connect(empty_database, autocommit=True) as other:
            assert other.execute("select count(*) from public.projects").fetchone() == (0,)
        reader.rollback()
    assert 5 <= elapsed < 120, elapsed
    assert database.applied_migrations(empty_database) == [PRE_ENVIRONMENT]
    database.push_migrations(empty_database)
    assert database.applied_migrations(empty_database) == all_versions()


ENDPOINT_QUEUES = "20261001000000"


def test_the_concurrent_index_builds_give_up_fast_and_can_be_pushed_again(
    empty_database: str, tmp_path: Path
) -> None:
    """The per-endpoint queue indexes are built concurrently, outside the migration's transaction:
    behind a lock they give up after the lock timeout with nothing recorded, and the next push
    builds them, valid, whatever a failed build left behind."""
    earlier = [v for v in all_versions() if v < ENDPOINT_QUEUES]
    database.push_migrations(empty_database, workdir=workdir_with(tmp_path, earlier))
    with psycopg.connect(empty_database) as holder:
        # What a long maintenance command (a manual VACUUM, ANALYZE) holds: it lets reads and
        # writes through, and only a concurrent index build (or another such command) waits.
        holder.execute("lock table public.webhook_deliveries in share update exclusive mode")
        started = time.monotonic()
        with pytest.raises(database.ProvisioningError, match="lock timeout"):
            database.push_migrations(empty_database)
        elapsed = time.monotonic() - started
        holder.rollback()
    assert 5 <= elapsed < 120, elapsed
    assert ENDPOINT_QUEUES not in database.applied_migrations(empty_database)
    with psycopg.connect(empty_database, autocommit=True) as conn:
        # What a build that failed midway leaves behind: an invalid index of that name.
        conn.execute("create index webhook_deliveries_endpoint_queue_idx on public.events (type)")
        conn.execute(
            "update pg_index set indisvalid = false"
            " where indexrelid = 'public.webhook_deliveries_endpoint_queue_idx'::regclass"
        )
    database.push_migrations(empty_database)
    assert database.applied_migrations(empty_database) == all_versions()
    with psycopg.connect(empty_database, autocommit=True) as conn:
        rows = conn.execute(
            "select indexrelid::regclass::text, indisvalid from pg_index"
            " where indrelid = 'public.webhook_deliveries'::regclass"
            " and indexrelid::regclass::text in"
            " ('webhook_deliveries_endpoint_queue_idx', 'webhook_deliveries_leased_idx')"
        ).fetchall()
    assert sorted(rows) == [
        ("webhook_deliveries_endpoint_queue_idx", True),
        ("webhook_deliveries_leased_idx", True),
    ]


WEBHOOK_URLS = "20261101000000"


def test_the_url_check_is_validated_apart_and_the_migration_can_be_pushed_again(
    empty_database: str, tmp_path: Path
) -> None:
    """The webhook URL check is added NOT VALID, then validated after the concurrent index build,
    in a transaction of its own. A stored URL it refuses (a password in it, written before the
    check existed) fails the push at the validation, naming the constraint, with nothing recorded;
    once the row is corrected the same migration is pushed again from the start."""
    earlier = [v for v in all_versions() if v < WEBHOOK_URLS]
    database.push_migrations(empty_database, workdir=workdir_with(tmp_path, earlier))
    with psycopg.connect(empty_database, autocommit=True) as conn:
        owner = conn.execute(
            "insert into auth.users (email) values ('old@example.com') returning id"
        ).fetchone()
        project = conn.execute(
            "insert into public.projects (owner_id, name) values (%s, 'old') returning id",
            owner,
        ).fetchone()
        assert project is not None
        endpoint = conn.execute(
            "insert into public.webhook_endpoints (project_id, url, secret)"
            " values (%s, 'https://user:pw@hooks.example.com:10443/in', 'whsec_b2xk')"
            " returning id",
            project,
        ).fetchone()
    with pytest.raises(database.ProvisioningError, match="webhook_endpoints_url_is_a_webhook_url"):
        database.push_migrations(empty_database)
    assert WEBHOOK_URLS not in database.applied_migrations(empty_database)
    with psycopg.connect(empty_database, autocommit=True) as conn:
        conn.execute(
            "update public.webhook_endpoints set url = 'https://hooks.example.com:10443/in'"
            " where id = %s",
            endpoint,
        )
    database.push_migrations(empty_database)
    assert database.applied_migrations(empty_database) == all_versions()
    with psycopg.connect(empty_database, autocommit=True) as conn:
        assert conn.execute(
            "select convalidated from pg_constraint"
            " where conname = 'webhook_endpoints_url_is_a_webhook_url'"
        ).fetchone() == (True,)
        assert conn.execute(
            "select indisvalid from pg_index"
            " where indexrelid = 'public.webhook_deliveries_exhausted_idx'::regclass"
        ).fetchone() == (True,)


def test_the_delivery_queue_is_vacuumed_as_a_queue_table(database_url: str) -> None:
    # Every delivery is updated two or three times, none of them HOT: the default (20% of a
    # table that only grows) leaves dead entries at the head of each endpoint's queue for minutes.
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute(
            "select c.relname, o.option_name, o.option_value"
            " from pg_class c cross join pg_options_to_table(c.reloptions) o"
            " where c.relnamespace = 'public'::regnamespace and o.option_name like 'autovacuum%'"
            " order by 1, 2"
        ).fetchall()
    assert rows == [
        ("webhook_deliveries", "autovacuum_analyze_scale_factor", "0.02"),
        ("webhook_deliveries", "autovacuum_vacuum_insert_scale_factor", "0.01"),
        ("webhook_deliveries", "autovacuum_vacuum_scale_factor", "0.01"),
        ("webhook_deliveries", "autovacuum_vacuum_threshold", "1000"),
    ]
