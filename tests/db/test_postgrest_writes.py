"""Every write a client can send through Supabase's APIs, tried as PostgREST sends it: every
table in `public` x insert/update/delete x every column, as anon, as the owner and as a stranger.
Forbidden writes are refused with a clear error and change nothing; the owner's legitimate writes
(create a project, rename, revoke a key, set or shorten an expiry, disable and enable an endpoint,
issue a key, redeliver) work. The cases come from the catalog and tests/db/expectations.py; a
column without an expectation fails, and removing a rule makes the generated cases fail."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from ops import database
from shared.keys import hash_token, parse_token
from tests.db.expectations import FUNCTIONS, TABLES
from tests.db.postgrest import Suite, cases_for, catalog_columns, postgrest_suite, rpc_cases


@pytest.fixture(scope="module")
def boundary_db(admin_url: str, template_db: str) -> Iterator[str]:
    with database.scratch_database(admin_url, "parity_boundary", template=template_db) as url:
        yield url


@pytest.fixture(scope="module")
def suite(boundary_db: str) -> Iterator[Suite]:
    with postgrest_suite(boundary_db) as seeded:
        yield seeded


def test_every_public_column_has_a_declared_expectation(boundary_db: str) -> None:
    with psycopg.connect(boundary_db) as conn:
        catalog = catalog_columns(conn)
    undeclared = [
        f'{table}.{column}: add `"{column}": Col(<value>),` to TABLES["{table}"]'
        for table, columns in catalog.items()
        for column in columns
        if column not in TABLES.get(table, _NO_TABLE).columns
    ]
    stale = [
        f"{table}.{column}"
        for table, spec in TABLES.items()
        for column in spec.columns
        if column not in catalog.get(table, {})
    ]
    assert not undeclared, "columns in public without a declared expectation:\n" + "\n".join(
        undeclared
    )
    assert not stale, f"declared, but not in the catalog: {stale}"


def test_functions_in_public_are_executable_only_as_declared(boundary_db: str) -> None:
    with psycopg.connect(boundary_db) as conn:
        rows = conn.execute(
            "select p.proname, r.rolname from pg_proc p"
            " join pg_namespace n on n.oid = p.pronamespace"
            " cross join pg_roles r"
            " where n.nspname = 'public' and r.rolname in ('anon', 'authenticated')"
            "   and has_function_privilege(r.oid, p.oid, 'execute')"
        ).fetchall()
    executable: dict[str, set[str]] = {}
    for function, role in rows:
        executable.setdefault(function, set()).add(role)
    assert executable == FUNCTIONS


def test_api_roles_cannot_truncate_or_hang_triggers_on_public_tables(boundary_db: str) -> None:
    with psycopg.connect(boundary_db) as conn:
        rows = conn.execute(
            "select c.relname, r.rolname, p.privilege from pg_class c"
            " join pg_namespace n on n.oid = c.relnamespace"
            " cross join pg_roles r cross join unnest(array['TRUNCATE', 'REFERENCES', 'TRIGGER'])"
            "   as p(privilege)"
            " where n.nspname = 'public' and c.relkind in ('r', 'p')"
            "   and r.rolname in ('anon', 'authenticated')"
            "   and has_table_privilege(r.oid, c.oid, p.privilege)"
        ).fetchall()
    assert rows == []


@pytest.mark.parametrize("table", sorted(TABLES))
def test_writes_as_postgrest_sends_them(suite: Suite, table: str) -> None:
    cases = cases_for(table)
    failures = [failure for case in cases if (failure := suite.judge(case)) is not None]
    assert not failures, f"{len(failures)} of {len(cases)} cases:\n" + "\n".join(failures)


def test_select_star_works_for_owners_where_every_column_is_readable(suite: Suite) -> None:
    """PostgREST's `select=*`: the README names the columns to ask for where it fails."""
    outcomes: dict[str, tuple[str | None, int]] = {}
    for table in TABLES:
        for actor in ("owner", "anon"):
            with suite.api.transaction(force_rollback=True):
                role, claims = suite.claims(actor)
                suite.api.execute(
                    "select set_config('role', %s, true),"
                    " set_config('request.jwt.claims', %s, true)",
                    (role, claims),
                )
                try:
                    with suite.api.transaction():
                        rows = suite.api.execute(
                            sql.SQL("select * from {}").format(sql.Identifier("public", table))
                        ).fetchall()
                        outcomes[f"{actor} {table}"] = (None, len(rows))
                except psycopg.Error as exc:
                    outcomes[f"{actor} {table}"] = (exc.sqlstate, 0)
    for table, spec in TABLES.items():
        assert outcomes[f"anon {table}"] == ("42501", 0), table
        state, count = outcomes[f"owner {table}"]
        if spec.read == "all":
            assert state is None and count > 0, table  # the owner's own rows
        else:
            assert state == "42501", table


def test_functions_as_postgrest_calls_them(suite: Suite) -> None:
    failures = [failure for case in rpc_cases() if (failure := suite.judge(case)) is not None]
    assert not failures, "\n".join(failures)


def test_a_token_issued_through_the_api_authenticates_as_what_it_says(suite: Suite) -> None:
    suite.api.execute("begin")
    try:
        suite.api.execute(
            "select set_config('role', 'authenticated', true),"
            " set_config('request.jwt.claims', %s, true)",
            (f'{{"sub": "{suite.ids["owner"]}", "role": "authenticated"}}',),
        )
        issued = suite.api.execute(
            "select i.key_id, i.token from generate_series(1, 50) as n,"
            " lateral public.issue_api_key(%s, 'pk', n::text) as i",
            (suite.ids["project"],),
        ).fetchall()
        tokens = dict(issued)
        rows = [
            (tokens[key_id], *rest)
            for key_id, *rest in suite.api.execute(
                "select id, kind::text, environment::text, prefix, last_four"
                " from public.api_keys where id = any(%s)",
                (list(tokens),),
            ).fetchall()
        ]
        suite.api.execute("select set_config('role', 'service_role', true)")
        for token, kind, environment, prefix, last_four in rows:
            parsed = parse_token(token)  # the checksum made in SQL is the one Python checks
            assert (parsed.kind.value, parsed.environment.value) == (kind, environment)
            assert (parsed.prefix, token[-4:]) == (prefix, last_four)
            stored = suite.api.execute(
                "select count(*) from public.api_keys where key_hash = %s", (hash_token(token),)
            ).fetchone()
            assert stored == (1,)
        assert len({row[0] for row in rows}) == 50
    finally:
        suite.api.execute("rollback")


# Removing a rule makes the generated cases fail ----------------------------------------------

MUTATIONS: dict[str, tuple[str, str, str]] = {
    # name: (statement that removes a rule, table whose cases must catch it, what must be named)
    "owners insert key rows": (
        "grant insert on public.api_keys to authenticated;"
        " create policy anyone on public.api_keys for insert to authenticated with check (true)",
        "api_keys",
        "owner: insert api_keys.key_hash",
    ),
    "revocation is not final": (
        "drop trigger api_keys_enforce_lifecycle on public.api_keys",
        "api_keys",
        "owner: update api_keys.status on key_revoked",
    ),
    "owners write delivery status": (
        "grant update (status) on public.webhook_deliveries to authenticated;"
        " create policy anyone on public.webhook_deliveries for update to authenticated"
        " using (true)",
        "webhook_deliveries",
        "owner: update webhook_deliveries.status",
    ),
    "owners enable what an operator disabled": (
        "drop trigger webhook_endpoints_enforce_disabling on public.webhook_endpoints",
        "webhook_endpoints",
        "owner: update webhook_endpoints.enabled on endpoint_by_operator",
    ),
    "anon reads and writes projects": (
        "grant all on public.projects to anon;"
        " create policy everyone on public.projects to anon using (true) with check (true)",
        "projects",
        "anon: update projects.status",
    ),
    "owners delete audit entries": (
        "grant delete on public.audit_log to authenticated;"
        " create policy anyone on public.audit_log for delete to authenticated using (true)",
        "audit_log",
        "owner: delete audit_log",
    ),
    "strangers see every project": (
        "create policy everyone on public.projects to authenticated using (true)",
        "projects",
        "stranger: update projects.name",
    ),
}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_the_generated_cases_catch_a_removed_rule(
    admin_url: str, template_db: str, mutation: str
) -> None:
    statement, table, named = MUTATIONS[mutation]
    with database.scratch_database(admin_url, "parity_mutant", template=template_db) as url:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(statement)
        with postgrest_suite(url) as mutant:
            failures = [f for case in cases_for(table) if (f := mutant.judge(case)) is not None]
    assert any(failure.startswith(named) for failure in failures), failures


def test_a_new_column_without_an_expectation_fails(admin_url: str, template_db: str) -> None:
    with database.scratch_database(admin_url, "parity_mutant", template=template_db) as url:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("alter table public.projects add column plan text")
        with pytest.raises(AssertionError, match=r"projects\.plan: add `\"plan\": Col"):
            test_every_public_column_has_a_declared_expectation(url)


class _NoTable:
    columns: dict[str, Any] = {}


_NO_TABLE = _NoTable()
