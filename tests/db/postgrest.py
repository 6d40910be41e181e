"""Writes as PostgREST sends them, generated from the catalog and the declared expectations.

A non-superuser LOGIN role stands in for Supabase's `authenticator` (granted anon, authenticated
and service_role, NOINHERIT). Each case runs in its own transaction as PostgREST runs a request:
`set_config('role', ...)` and `set_config('request.jwt.claims', ...)`, then the INSERT, UPDATE or
DELETE PostgREST generates (a `pgrst_source` CTE over `json_to_record` of the request body). If the
statement succeeds, the transaction switches to service_role and fingerprints every public table
before rolling back, so a write that affected no row is also shown to have changed nothing.
"""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from tests.db.expectations import TABLES, Op, Ref

Actor = Literal["anon", "owner", "stranger"]
ACTORS: tuple[Actor, ...] = ("anon", "owner", "stranger")

# The fixture rows the expectations name, with the table each lives in.
ROW_TABLES = {
    "project": "projects",
    "project_spare": "projects",
    "key": "api_keys",
    "key_never_expires": "api_keys",
    "key_revoked": "api_keys",
    "usage": "usage_counters",
    "suspension": "suspensions",
    "event": "events",
    "endpoint": "webhook_endpoints",
    "endpoint_by_owner": "webhook_endpoints",
    "endpoint_by_receiver": "webhook_endpoints",
    "endpoint_by_operator": "webhook_endpoints",
    "delivery": "webhook_deliveries",
    "delivery_of_disabled": "webhook_deliveries",
    "attempt": "webhook_attempts",
    "heartbeat": "worker_heartbeats",
    "audit_entry": "audit_log",
    "app": "apps",
    "app_spare": "apps",
    "app_link": "app_environments",
}

_SEED = """
with owner as (insert into auth.users (email) values ('owner@example.com') returning id),
     stranger as (insert into auth.users (email) values ('stranger@example.com') returning id)
select (select id from owner), (select id from stranger)
"""


@dataclass
class Outcome:
    sqlstate: str | None
    message: str
    count: int
    changed: set[str]


@dataclass(frozen=True)
class Case:
    actor: Actor
    op: Op | Literal["delete", "rpc"]
    table: str
    column: str | None
    body: dict[str, Any]
    target: str | None  # fixture row for update/delete/rpc
    allowed: bool
    sqlstate: str | None = None  # the refusal expected from the owner; None: any clear one

    def __str__(self) -> str:
        what = f"{self.op} {self.table}" + (f".{self.column}" if self.column else "")
        where = f" on {self.target}" if self.target else ""
        return f"{self.actor}: {what}{where} {json.dumps(self.body, default=str)}"


@dataclass
class Suite:
    """A seeded database and a PostgREST-like connection to it."""

    api: psycopg.Connection[Any]
    ids: dict[str, Any]
    keys: dict[str, dict[str, Any]]  # fixture row -> its primary key
    types: dict[tuple[str, str], str]
    tables: list[str]
    baseline: dict[str, str] = field(default_factory=dict)

    def resolve(self, value: Any) -> Any:
        return str(self.ids[value.row]) if isinstance(value, Ref) else value

    # Statements ------------------------------------------------------------------------------

    def _source(self, table: str, body: dict[str, Any]) -> sql.Composed:
        """PostgREST's request body as a row: `pgrst_body`, read from parameter `%s` (json)."""
        columns = sql.SQL(", ").join(sql.Identifier(c) for c in body)
        record = sql.SQL(", ").join(
            sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(self.types[(table, c)]))
            for c in body
        )
        return sql.SQL(
            "(select %s::json as json_data) as pgrst_payload,"
            " lateral (select {} from json_to_record(pgrst_payload.json_data) as _({}))"
            " as pgrst_body"
        ).format(columns, record)

    def _where(self, table: str, target: str) -> tuple[sql.Composable, list[Any]]:
        key = self.keys[target]
        where = sql.SQL(" and ").join(
            sql.SQL("{}.{}.{} = %s").format(
                sql.Identifier("public"), sql.Identifier(table), sql.Identifier(c)
            )
            for c in key
        )
        return where, list(key.values())

    def statement(self, case: Case) -> tuple[sql.Composed, list[Any]]:
        table = sql.Identifier("public", case.table)
        body = {c: self.resolve(v) for c, v in case.body.items()}
        payload = json.dumps(body, default=str)
        if case.op == "rpc":
            args = sql.SQL(", ").join(
                sql.SQL("{} := (%s::json ->> {})::{}").format(
                    sql.Identifier(c), sql.Literal(c), sql.SQL(self.types[(case.table, c)])
                )
                for c in body
            )
            query = sql.SQL(
                "with pgrst_source as (select pgrst_call from {}({}) as pgrst_call)"
                " select count(*) from pgrst_source"
            ).format(table, args)
            return query, [payload] * len(body)
        if case.op == "insert":
            query = sql.SQL(
                "with pgrst_source as (insert into {} ({}) select {} from {} returning 1)"
                " select count(*) from pgrst_source"
            ).format(
                table,
                sql.SQL(", ").join(sql.Identifier(c) for c in body),
                sql.SQL(", ").join(sql.Identifier("pgrst_body", c) for c in body),
                self._source(case.table, body),
            )
            return query, [payload]
        assert case.target is not None
        where, params = self._where(case.table, case.target)
        if case.op == "delete":
            query = sql.SQL(
                "with pgrst_source as (delete from {} where {} returning 1)"
                " select count(*) from pgrst_source"
            ).format(table, where)
            return query, params
        query = sql.SQL(
            "with pgrst_source as (update {} set {} from {} where {} returning 1)"
            " select count(*) from pgrst_source"
        ).format(
            table,
            sql.SQL(", ").join(
                sql.SQL("{} = {}").format(sql.Identifier(c), sql.Identifier("pgrst_body", c))
                for c in body
            ),
            self._source(case.table, body),
            where,
        )
        return query, [payload, *params]

    # Running ---------------------------------------------------------------------------------

    def claims(self, actor: Actor) -> tuple[str, str]:
        """The role and request.jwt.claims PostgREST sets for `actor`."""
        if actor == "anon":
            return "anon", json.dumps({"role": "anon"})
        user = self.ids["owner" if actor == "owner" else "stranger"]
        return "authenticated", json.dumps({"sub": str(user), "role": "authenticated"})

    def fingerprints(self) -> dict[str, str]:
        parts = [
            sql.SQL(
                "select {} as t, md5(coalesce(string_agg(r::text, '|' order by r::text), ''))"
                " from {} as r"
            ).format(sql.Literal(t), sql.Identifier("public", t))
            for t in self.tables
        ]
        rows = self.api.execute(sql.SQL(" union all ").join(parts)).fetchall()
        return {row[0]: row[1] for row in rows}

    def run(self, case: Case) -> Outcome:
        role, claims = self.claims(case.actor)
        query, params = self.statement(case)
        with self.api.transaction(force_rollback=True):
            self.api.execute(
                "select set_config('role', %s, true), set_config('request.jwt.claims', %s, true)",
                (role, claims),
            )
            try:
                with self.api.transaction():
                    row = self.api.execute(query, params).fetchone()
            except psycopg.Error as exc:
                return Outcome(exc.sqlstate, exc.diag.message_primary or "", 0, set())
            self.api.execute("select set_config('role', 'service_role', true)")
            now = self.fingerprints()
        changed = {t for t, h in now.items() if self.baseline.get(t) != h}
        return Outcome(None, "", int(row[0]) if row else 0, changed)

    def judge(self, case: Case) -> str | None:
        """None when the case went as declared, else what went wrong."""
        out = self.run(case)
        if case.allowed:
            if out.sqlstate is not None:
                return f"{case}: refused ({out.sqlstate} {out.message}), but it is allowed"
            if out.count < 1 or (case.op != "rpc" and case.table not in out.changed):
                return f"{case}: allowed, but it changed nothing"
            return None
        if out.sqlstate is None:
            if case.actor == "stranger" and out.count == 0 and not out.changed:
                return None  # row level security: the owner's rows are not there for a stranger
            return f"{case}: accepted ({out.count} rows, changed {sorted(out.changed)})"
        if not out.message:
            return f"{case}: refused without a message ({out.sqlstate})"
        expected = case.sqlstate or "42501"
        if out.sqlstate != expected:
            return f"{case}: refused with {out.sqlstate} {out.message}, expected {expected}"
        return None


def cases_for(table: str) -> list[Case]:
    """Every declared column x insert/update, every actor; delete for every actor."""
    spec = TABLES[table]
    found: list[Case] = []
    for column, col in spec.columns.items():
        insert_body = {**spec.insert, column: col.insert_value}
        update_body = {column: col.value}
        for actor in ACTORS:
            owner = actor == "owner"
            found.append(
                Case(actor, "insert", table, column, insert_body, None,
                     allowed=owner and bool(spec.insert) and col.insert, sqlstate=col.refusal)
            )  # fmt: skip
            found.append(
                Case(actor, "update", table, column, update_body, col.target or spec.target,
                     allowed=owner and col.update, sqlstate=col.refusal)
            )  # fmt: skip
        for write in col.writes:
            body = (
                {**spec.insert, column: write.value}
                if write.op == "insert"
                else {column: write.value}
            )
            target = None if write.op == "insert" else (write.target or spec.target)
            found.append(
                Case("owner", write.op, table, column, body, target,
                     allowed=write.sqlstate is None, sqlstate=write.sqlstate)
            )  # fmt: skip
    for actor in ACTORS:
        found.append(
            Case(actor, "delete", table, None, {}, spec.target,
                 allowed=actor == "owner" and spec.delete)
        )  # fmt: skip
    return found


def rpc_cases() -> list[Case]:
    """The functions in `public`, called as PostgREST's /rpc calls them."""
    issue = {"project_id": Ref("project"), "kind": "sk"}
    again = {"delivery_id": Ref("delivery")}
    refused = {"delivery_id": Ref("delivery_of_disabled")}
    forward = {"source_project_id": Ref("project"), "target_project_id": Ref("project_staging")}
    backward = {"source_project_id": Ref("project_staging"), "target_project_id": Ref("project")}
    unlinked = {
        "source_project_id": Ref("project_spare"),
        "target_project_id": Ref("project_staging"),
    }
    return [
        Case("owner", "rpc", "issue_api_key", None, issue, None, allowed=True),
        Case("stranger", "rpc", "issue_api_key", None, issue, None, False, "P0002"),
        Case("anon", "rpc", "issue_api_key", None, issue, None, False, "42501"),
        Case("owner", "rpc", "redeliver_webhook", None, again, None, allowed=True),
        Case("owner", "rpc", "redeliver_webhook", None, refused, None, False, "PE005"),
        Case("stranger", "rpc", "redeliver_webhook", None, again, None, False, "P0002"),
        Case("anon", "rpc", "redeliver_webhook", None, again, None, False, "42501"),
        Case("owner", "rpc", "promote_project_limits", None, forward, None, allowed=True),
        Case("owner", "rpc", "promote_project_limits", None, backward, None, False, "PE009"),
        Case("owner", "rpc", "promote_project_limits", None, unlinked, None, False, "PE009"),
        Case("stranger", "rpc", "promote_project_limits", None, forward, None, False, "P0002"),
        Case("anon", "rpc", "promote_project_limits", None, forward, None, False, "42501"),
    ]


# Building a suite ------------------------------------------------------------------------------


def _seed(admin: psycopg.Connection[Any]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    def one(query: str, params: tuple[Any, ...] = ()) -> Any:
        row = admin.execute(query, params).fetchone()
        assert row is not None
        return row[0]

    owner, stranger = admin.execute(_SEED).fetchone() or (None, None)
    ids: dict[str, Any] = {"owner": owner, "stranger": stranger}
    project_sql = (
        "insert into public.projects (owner_id, name, environment) values (%s, %s, 'dev')"
        " returning id"
    )
    ids["project"] = one(project_sql, (owner, "shop"))
    ids["project_spare"] = one(project_sql, (owner, "spare"))
    ids["stranger_project"] = one(project_sql, (stranger, "theirs"))
    ids["project_staging"] = one(
        "insert into public.projects (owner_id, name, environment) values (%s, %s, 'staging')"
        " returning id",
        (owner, "shop staging"),
    )
    app_sql = "insert into public.apps (owner_id, name) values (%s, %s) returning id"
    ids["app"] = one(app_sql, (owner, "shop"))
    ids["app_spare"] = one(app_sql, (owner, "spare"))
    ids["stranger_app"] = one(app_sql, (stranger, "theirs"))
    admin.execute(
        "insert into public.app_environments (app_id, environment, project_id)"
        " values (%s, 'dev', %s), (%s, 'staging', %s)",
        (ids["app"], ids["project"], ids["app"], ids["project_staging"]),
    )
    issue = "select key_id from public.issue_api_key(%s, %s, %s, %s)"
    # Expires between expectations.SOON and expectations.LATER.
    ids["key"] = one(
        issue, (ids["project"], "sk", "expiring", datetime.now(UTC) + timedelta(days=7))
    )
    ids["key_never_expires"] = one(issue, (ids["project"], "pk", "forever", None))
    ids["key_revoked"] = one(issue, (ids["project"], "sk", "old", None))
    admin.execute(
        "update public.api_keys set status = 'revoked', revoked_at = now() where id = %s",
        (ids["key_revoked"],),
    )
    endpoint_sql = (
        "insert into public.webhook_endpoints (project_id, url, secret)"
        " values (%s, %s, 'whsec_YQ==') returning id"
    )
    for name in ("endpoint", "endpoint_by_owner", "endpoint_by_receiver", "endpoint_by_operator"):
        ids[name] = one(endpoint_sql, (ids["project"], f"https://example.com/{name}"))
    ids["event"] = one(
        "insert into public.events (project_id, type) values (%s, 'project.created') returning id",
        (ids["project"],),
    )
    for name, by in (("owner", "owner"), ("receiver", "receiver"), ("operator", "operator")):
        admin.execute(
            "update public.webhook_endpoints set enabled = false, disabled_by = %s,"
            " disabled_reason = %s where id = %s",
            (by, f"disabled by {by}", ids[f"endpoint_by_{name}"]),
        )
    delivery_sql = "select id from public.webhook_deliveries where endpoint_id = %s"
    ids["delivery"] = one(delivery_sql, (ids["endpoint"],))
    ids["delivery_of_disabled"] = one(delivery_sql, (ids["endpoint_by_owner"],))
    admin.execute(
        "update public.webhook_deliveries set status = 'exhausted', attempts = 4,"
        " completed_at = now() where id = %s",
        (ids["delivery"],),
    )
    ids["attempt"] = one(
        "insert into public.webhook_attempts (delivery_id, attempt_number, started_at,"
        " duration_ms, status_code) values (%s, 1, now(), 5, 500) returning id",
        (ids["delivery"],),
    )
    window = "2026-01-01T00:00:00+00:00"
    admin.execute(
        "insert into public.usage_counters (project_id, window_start, requests, request_cap)"
        " values (%s, %s, 10, 100)",
        (ids["project"], window),
    )
    ids["suspension"] = one(
        "insert into public.suspensions (project_id, reason) values (%s, 'cap') returning id",
        (ids["project"],),
    )
    admin.execute(
        "insert into public.worker_heartbeats (worker_id, hostname, pid, started_at)"
        " values ('w1', 'host', 1, now())"
    )
    # The project's creation, written by the audit trail's trigger.
    ids["audit_entry"] = one(
        "select min(id) from public.audit_log where target_id = %s", (ids["project"],)
    )
    keys = {name: {"id": ids[name]} for name in ROW_TABLES if name in ids}
    keys["usage"] = {"project_id": ids["project"], "window_start": window}
    keys["heartbeat"] = {"worker_id": "w1"}
    keys["app_link"] = {"app_id": ids["app"], "environment": "dev"}
    return ids, keys


def catalog_columns(conn: psycopg.Connection[Any]) -> dict[str, dict[str, str]]:
    """Every column of every relation PostgREST serves from `public`, with its type."""
    rows = conn.execute(
        "select c.relname, a.attname, format_type(a.atttypid, a.atttypmod)"
        "  from pg_class c join pg_namespace n on n.oid = c.relnamespace"
        "  join pg_attribute a on a.attrelid = c.oid"
        " where n.nspname = 'public' and c.relkind in ('r', 'p', 'v', 'm', 'f')"
        "   and a.attnum > 0 and not a.attisdropped"
        " order by c.relname, a.attnum"
    ).fetchall()
    found: dict[str, dict[str, str]] = {}
    for table, column, type_ in rows:
        found.setdefault(table, {})[column] = type_
    return found


def _function_types(conn: psycopg.Connection[Any]) -> dict[tuple[str, str], str]:
    rows = conn.execute(
        "select p.proname, a.name, format_type(a.type, null)"
        "  from pg_proc p join pg_namespace n on n.oid = p.pronamespace,"
        "       unnest(p.proargnames[1:p.pronargs], p.proargtypes::oid[]) as a(name, type)"
        " where n.nspname = 'public'"
    ).fetchall()
    return {(fn, arg): type_ for fn, arg, type_ in rows}


@contextlib.contextmanager
def authenticator(database_url: str) -> Iterator[str]:
    """A URL of `database_url` for a fresh role like Supabase's `authenticator`: a non-superuser
    LOGIN role granted anon, authenticated and service_role, NOINHERIT (it has only what the role
    it switches to has). Dropped afterwards."""
    role = f"authenticator_{secrets.token_hex(4)}"
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute(
            sql.SQL("create role {} login noinherit nosuperuser").format(sql.Identifier(role))
        )
        admin.execute(
            sql.SQL("grant anon, authenticated, service_role to {}").format(sql.Identifier(role))
        )
        try:
            yield make_conninfo(database_url, user=role)
        finally:
            admin.execute(sql.SQL("drop role if exists {}").format(sql.Identifier(role)))


@contextlib.contextmanager
def postgrest_suite(database_url: str) -> Iterator[Suite]:
    """Seed `database_url` and connect to it as a fresh authenticator role."""
    with (
        authenticator(database_url) as api_url,
        psycopg.connect(database_url, autocommit=True) as admin,
    ):
        ids, keys = _seed(admin)
        columns = catalog_columns(admin)
        types = {(t, c): ty for t, cols in columns.items() for c, ty in cols.items()}
        types.update(_function_types(admin))
        with psycopg.connect(api_url, autocommit=True) as api:
            suite = Suite(api, ids, keys, types, sorted(columns))
            with api.transaction(force_rollback=True):
                api.execute("select set_config('role', 'service_role', true)")
                suite.baseline = suite.fingerprints()
            yield suite
