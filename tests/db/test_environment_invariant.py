"""US-002, property-based: whatever sequence of inserts, updates, revocations and environment
changes runs, no active API key ever has an environment different from its project's, and every
statement that keeps the invariant (and the forward-only key lifecycle) is accepted."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ops import database

ENVIRONMENTS = st.sampled_from(["prod", "dev", "staging"])
INDEX = st.integers(min_value=0, max_value=5)

OPERATIONS = st.one_of(
    st.tuples(st.just("create_project"), ENVIRONMENTS),
    st.tuples(st.just("create_key"), INDEX, ENVIRONMENTS),
    st.tuples(st.just("set_key_environment"), INDEX, ENVIRONMENTS),
    st.tuples(st.just("move_key"), INDEX, INDEX),
    st.tuples(st.just("revoke_key"), INDEX),
    st.tuples(st.just("reactivate_key"), INDEX),
    st.tuples(st.just("set_project_environment"), INDEX, ENVIRONMENTS),
)


@dataclass
class Model:
    """What the database should hold: the oracle for which statements must succeed."""

    projects: dict[Any, str] = field(default_factory=dict)
    keys: dict[Any, tuple[Any, str, bool]] = field(default_factory=dict)  # project, env, active

    def active_keys(self, project: Any) -> int:
        return sum(1 for p, _, active in self.keys.values() if p == project and active)


@pytest.fixture(scope="module")
def invariant_db(admin_url: str, template_db: str) -> Iterator[str]:
    with database.scratch_database(admin_url, "parity_invariant", template=template_db) as url:
        yield url


def violations(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute(
        "select count(*) from public.api_keys k join public.projects p on p.id = k.project_id"
        " where k.status = 'active' and k.environment <> p.environment"
    ).fetchone()
    assert row is not None
    return int(row[0])


def pick(items: dict[Any, Any], index: int) -> Any | None:
    ids = list(items)
    return ids[index % len(ids)] if ids else None


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(steps=st.lists(OPERATIONS, min_size=1, max_size=25))
@pytest.mark.slow(12)
def test_no_active_key_ever_mismatches_its_project(
    invariant_db: str, steps: list[tuple[Any, ...]]
) -> None:
    model = Model()
    with psycopg.connect(invariant_db, autocommit=True) as conn:
        conn.execute("truncate auth.users cascade")
        owner_row = conn.execute("insert into auth.users default values returning id").fetchone()
        assert owner_row is not None
        owner = owner_row[0]
        for step in steps:
            run_step(conn, model, owner, step)
            assert violations(conn) == 0, f"invariant broken after {step}"


def run_step(
    conn: psycopg.Connection[Any], model: Model, owner: Any, step: tuple[Any, ...]
) -> None:
    op = step[0]
    expect_ok = True
    statement: str
    params: tuple[Any, ...]
    if op == "create_project":
        statement = "insert into public.projects (owner_id, name, environment) values (%s, 'p', %s)"
        statement += " returning id"
        params = (owner, step[1])
    elif op == "create_key":
        project = pick(model.projects, step[1])
        if project is None:
            return
        expect_ok = model.projects[project] == step[2]
        statement = (
            "insert into public.api_keys (project_id, kind, environment, prefix, last_four,"
            " key_hash) values (%s, 'sk', %s, %s, 'abcd', %s) returning id"
        )
        label = "live" if step[2] == "prod" else step[2]
        params = (project, step[2], f"nm_{label}_sk_", secrets.token_bytes(32))
    elif op in {"set_key_environment", "move_key", "revoke_key", "reactivate_key"}:
        key = pick(model.keys, step[1])
        if key is None:
            return
        project, env, active = model.keys[key]
        # A key's environment and project never change, and revocation is final (PE004): only
        # statements that leave them as they are go through.
        if op == "set_key_environment":
            expect_ok = env == step[2]
            statement, params = (
                "update public.api_keys set environment = %s where id = %s",
                (
                    step[2],
                    key,
                ),
            )
            new = (project, step[2], active)
        elif op == "move_key":
            target = pick(model.projects, step[2])
            assert target is not None
            expect_ok = target == project
            statement, params = (
                "update public.api_keys set project_id = %s where id = %s",
                (
                    target,
                    key,
                ),
            )
            new = (target, env, active)
        elif op == "revoke_key":
            # revoked_at is the database's to fill, once.
            statement = "update public.api_keys set status = 'revoked' where id = %s"
            params = (key,)
            new = (project, env, False)
        else:
            expect_ok = active
            statement = (
                "update public.api_keys set status = 'active', revoked_at = null where id = %s"
            )
            params = (key,)
            new = (project, env, True)
    else:
        project = pick(model.projects, step[1])
        if project is None:
            return
        expect_ok = model.projects[project] == step[2] or model.active_keys(project) == 0
        statement = "update public.projects set environment = %s where id = %s"
        params = (step[2], project)

    try:
        cur = conn.execute(statement, params)
    except psycopg.Error as exc:
        # Only our triggers may refuse (PE001 key mismatch, PE002 project with active keys, PE004
        # a key's lifecycle moving backwards or its identity changing).
        assert exc.sqlstate in {"PE001", "PE002", "PE004"}, exc
        assert not expect_ok, f"{step} was refused: {exc}"
        return
    assert expect_ok, f"{step} was accepted"
    if op == "create_project":
        row = cur.fetchone()
        assert row is not None
        model.projects[row[0]] = step[1]
    elif op == "create_key":
        row = cur.fetchone()
        assert row is not None
        model.keys[row[0]] = (pick(model.projects, step[1]), step[2], True)
    elif op == "set_project_environment":
        model.projects[pick(model.projects, step[1])] = step[2]
    else:
        model.keys[pick(model.keys, step[1])] = new
