"""US-001 through the real Supabase CLI: a database that already holds projects is migrated, and
its projects read prod; the environment column refuses anything but the three environments."""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from bench.migrations import Lookups, busy_push, load, summary
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


HELPER_DEFINED_IN = ENVIRONMENTS
HELPER_LANDED_AFTER = "20261001000000"
"""The last migration written before private.with_lock_retries existed."""


def helper_definition(text: str) -> str:
    start = text.index("create or replace function private.lock_retries_total()")
    end = text.index("revoke all on function private.lock_retries_total()", start)
    return text[start:end]


def test_later_migrations_using_the_lock_retries_define_them_first() -> None:
    """A database that applied the environments migration before the helper was added to it does
    not have it: a later migration that calls it creates it first, exactly as defined there."""
    paths = sorted((database.SUPABASE_DIR / "migrations").glob("*.sql"))
    (original,) = [p for p in paths if p.name.startswith(HELPER_DEFINED_IN)]
    definition = helper_definition(original.read_text())
    later = [p for p in paths if p.name.split("_", 1)[0] > HELPER_LANDED_AFTER]
    for path in later:
        text = path.read_text()
        if "select private.with_lock_retries(" not in text:
            continue
        assert definition in text, f"{path.name} calls the lock retries without defining them"
        assert text.index(definition) < text.index("select private.with_lock_retries("), path.name


_DOLLAR_QUOTED = re.compile(r"(\$[a-z_]*\$).*?\1", re.S)
_LINE_COMMENT = re.compile(r"--[^\n]*")
_CREATES_TABLE = re.compile(r"^create table (?:if not exists )?(\w+\.\w+)")
# Statements whose lock conflicts with reads or writes of an existing table, when not given to
# private.with_lock_retries: ALTER TABLE (but VALIDATE CONSTRAINT and storage parameters, under
# SHARE UPDATE EXCLUSIVE), triggers, policies, a plain index build, a foreign key to it, LOCK.
_LOCKS_TABLE = [
    re.compile(r"^alter table (?:only )?(?:if exists )?(\w+\.\w+) (?!validate constraint|set \()"),
    re.compile(
        r"^(?:create (?:or replace )?|drop )(?:constraint )?trigger .*? on (\w+\.\w+)", re.S
    ),
    re.compile(r"^(?:create|drop|alter) policy .*? on (\w+\.\w+)", re.S),
    re.compile(r"^create (?:unique )?index (?!concurrently).*? on (?:only )?(\w+\.\w+)", re.S),
    re.compile(r"\breferences (\w+\.\w+)"),
    re.compile(r"^lock (?:table )?(\w+\.\w+)"),
]


def test_lock_taking_statements_on_tables_in_use_go_through_the_lock_retries() -> None:
    """Outside private.with_lock_retries, no migration after the pre-environment one takes a
    lock that reads or writes of an existing table wait for (auth.users included). Written as
    our migrations are: schema-qualified names, lower case; a new table is free until the
    migration that created it has been applied."""
    in_use = {"auth.users"}
    unwrapped: list[str] = []
    for path in sorted((database.SUPABASE_DIR / "migrations").glob("*.sql")):
        text = _LINE_COMMENT.sub("", _DOLLAR_QUOTED.sub("$$", path.read_text().lower()))
        statements = [" ".join(part.split()) for part in text.split(";")]
        created = {m.group(1) for st in statements if (m := _CREATES_TABLE.match(st))}
        if not path.name.startswith(PRE_ENVIRONMENT):
            for statement in statements:
                for pattern in _LOCKS_TABLE:
                    match = pattern.search(statement)
                    if match and match.group(1) in in_use:
                        unwrapped.append(f"{path.name}: {statement[:80]}")
        in_use |= created
    assert unwrapped == [], "\n".join(unwrapped)


def schema_of(url: str) -> list[str]:
    """What the migrations define, one line per column, constraint, trigger, policy, function,
    type and table grant in the platform's schemas: equal lists, equal schemas."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            """
            with ns as (select oid from pg_namespace where nspname in ('public', 'private'))
            select format('column %s.%s %s not null=%s default=%s', a.attrelid::regclass,
                          a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                          pg_get_expr(d.adbin, d.adrelid))
              from pg_attribute a join pg_class c on c.oid = a.attrelid
              left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
             where c.relnamespace in (select oid from ns) and a.attnum > 0
               and not a.attisdropped
            union all
            select format('relation %s %s acl=%s rls=%s', oid::regclass, relkind, relacl,
                          relrowsecurity)
              from pg_class where relnamespace in (select oid from ns)
            union all
            select format('constraint %s %s', conrelid::regclass, pg_get_constraintdef(oid))
              from pg_constraint where connamespace in (select oid from ns)
            union all
            select format('trigger %s %s', tgname, tgenabled) from pg_trigger
             where not tgisinternal
               and tgrelid in (select oid from pg_class where relnamespace in (select oid from ns))
            union all
            select format('policy %s %s', polrelid::regclass, polname) from pg_policy
            union all
            select format('function %s', oid::regprocedure) from pg_proc
             where pronamespace in (select oid from ns)
            union all
            select format('type %s', oid::regtype) from pg_type
             where typnamespace in (select oid from ns) and typtype in ('e', 'd', 'c')
            """
        ).fetchall()
    return sorted(row[0] for row in rows)


BUSY_PROJECTS = 30_000
"""Projects (two keys each) of the busy test: enough that lookups go through the index as in
production, few enough to load in seconds. The ALTERs rewrite nothing, so what a lookup waits for
is the lock, whatever the size (`python -m bench migrations` pushes 1,000,000)."""


@pytest.mark.slow(16)
def test_a_push_behind_a_long_read_waits_without_stalling_lookups(
    empty_database: str, tmp_path: Path
) -> None:
    """A report that read api_keys keeps its transaction open while every later migration is
    pushed, until 8 s after the push first waits behind it: each lock-taking step tries with a
    short lock timeout and steps aside, so a key lookup every 50 ms never waits a second, and the
    push goes through once the report ends."""
    database.push_migrations(empty_database, workdir=workdir_with(tmp_path, [PRE_ENVIRONMENT]))
    load(empty_database, BUSY_PROJECTS)
    # The report stays open until 8 s after the push first queues behind it, however long the
    # CLI takes to get there; a lookup every 50 ms all along.
    busy = busy_push(empty_database, 2 * BUSY_PROJECTS, pause=0.05, hold=8.0)

    assert f"Applying migration {ENVIRONMENTS}" in busy.output
    assert database.applied_migrations(empty_database) == all_versions()
    # The push waited behind the report for 8 s, and went through once it ended.
    assert busy.held_back >= 8.0
    assert busy.after_release > 0
    latencies = busy.lookups.latencies
    assert busy.lookups.failures == []
    # No lookup waited a second, and they ran all along the push (about 20 a second).
    assert max(latencies) < 1.0, summary(latencies)
    assert len(latencies) >= 10 * busy.seconds, len(latencies)


def test_a_push_that_cannot_get_its_locks_in_time_names_the_blocker_and_applies_nothing(
    empty_database: str, tmp_path: Path
) -> None:
    """With the read held past the total, the push gives up: its message names the session in
    the way (pid and application_name), and nothing of the migrations is applied."""
    database.push_migrations(empty_database, workdir=workdir_with(tmp_path, [PRE_ENVIRONMENT]))
    load(empty_database, 1_000)
    before = schema_of(empty_database)
    probe = Lookups(empty_database, 2_000, pause=0.05)
    probe.start()
    with psycopg.connect(empty_database, application_name="nightly-report") as reader:
        pid = reader.info.backend_pid
        reader.execute("select count(*) from public.api_keys")  # ACCESS SHARE, held
        started = time.monotonic()
        with pytest.raises(database.ProvisioningError) as failure:
            database.push_migrations(empty_database, lock_retries_total="3s")
        elapsed = time.monotonic() - started
        reader.rollback()
    probe.stop.set()
    probe.join()

    message = str(failure.value)
    assert "could not take the locks this migration needs within 3.0 s" in message, message
    assert f"blocked by pid {pid} (application_name 'nightly-report')" in message, message
    assert f"pid {pid}, application_name 'nightly-report', user postgres" in message, message
    assert "AccessShareLock on public.api_keys" in message, message
    assert "Nothing of this migration was applied" in message, message
    assert elapsed >= 3.0, elapsed
    assert database.applied_migrations(empty_database) == [PRE_ENVIRONMENT]
    assert schema_of(empty_database) == before
    assert probe.failures == []
    assert max(probe.latencies) < 1.0, summary(probe.latencies)

    # With the report gone, the same push goes through.
    database.push_migrations(empty_database)
    assert database.applied_migrations(empty_database) == all_versions()


ENDPOINT_QUEUES = "20261001000000"


def test_the_concurrent_index_builds_give_up_after_the_total_and_can_be_pushed_again(
    empty_database: str, tmp_path: Path
) -> None:
    """The per-endpoint queue indexes are built concurrently, outside the migration's transaction:
    behind a lock they wait for as long as the lock retries' total, give up with nothing recorded,
    and the next push builds them, valid, whatever a failed build left behind."""
    earlier = [v for v in all_versions() if v < ENDPOINT_QUEUES]
    database.push_migrations(empty_database, workdir=workdir_with(tmp_path, earlier))
    with psycopg.connect(empty_database) as holder:
        # What a long maintenance command (a manual VACUUM, ANALYZE) holds: it lets reads and
        # writes through, and only a concurrent index build (or another such command) waits.
        holder.execute("lock table public.webhook_deliveries in share update exclusive mode")
        started = time.monotonic()
        with pytest.raises(database.ProvisioningError, match="lock timeout"):
            database.push_migrations(empty_database, lock_retries_total="3s")
        elapsed = time.monotonic() - started
        holder.rollback()
    assert 3 <= elapsed < 120, elapsed
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
