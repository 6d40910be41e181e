"""The audit trail, as Postgres writes it: every action performed as PostgREST performs it (a
non-superuser login role, `set_config` of role, claims and request headers) leaves exactly one
entry with its actor, target and changes; the platform's actions name the worker, an operator or
the platform; nobody rewrites an entry; owners read their own (deleted projects included),
strangers and anon nothing; the retention job deletes only old entries; no secret gets in."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from shared import apikeys, audit, projects, suspensions, webhooks
from shared.db import Database
from shared.errors import PermissionDenied
from shared.keys import KeyKind, hash_token
from tests.conftest import MakeUser
from tests.db.expectations import LATER, SOON
from tests.db.postgrest import Actor, Case, Suite, postgrest_suite
from worker import queue
from worker.app import purge_audit_trail
from worker.settings import WorkerSettings

HEADERS = {"x-forwarded-for": "203.0.113.7, 10.0.0.1", "user-agent": "curl/8.5.0"}


@pytest.fixture
def suite(database_url: str) -> Iterator[Suite]:
    with postgrest_suite(database_url) as seeded:
        yield seeded


def _entries_after(database_url: str, last_id: int) -> list[dict[str, Any]]:
    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        return conn.execute(
            "select * from public.audit_log where id > %s order by id", (last_id,)
        ).fetchall()


def _last_id(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("select coalesce(max(id), 0) from public.audit_log").fetchone()
        assert row is not None
        return int(row[0])


def _send(
    suite: Suite, actor: Actor | str, op: str, table: str, body: dict[str, Any], target: str | None
) -> None:
    """One request as PostgREST sends it, committed. `actor` service_role: the platform."""
    case = Case(
        "owner" if actor == "service_role" else actor,  # type: ignore[arg-type]
        op,  # type: ignore[arg-type]
        table,
        None,
        body,
        target,
        allowed=True,
    )
    query, params = suite.statement(case)
    role, claims = ("service_role", "{}") if actor == "service_role" else suite.claims(case.actor)
    with suite.api.transaction():
        suite.api.execute(
            "select set_config('role', %s, true), set_config('request.jwt.claims', %s, true),"
            " set_config('request.headers', %s, true)",
            (role, claims, json.dumps(HEADERS)),
        )
        suite.api.execute(query, params)


# (actor, op, table, body, target row) -> (action, target row or None for a new row, changes)
OWNER_ACTIONS: list[tuple[str, str, dict[str, Any], str | None, str, dict[str, Any] | None]] = [
    ("insert", "projects", {"owner_id": "@owner", "name": "new", "environment": "staging"}, None,
     "project.created",
     {"name": {"before": None, "after": "new"}, "environment": {"before": None, "after": "staging"},
      "status": {"before": None, "after": "active"}}),
    ("update", "projects", {"name": "renamed"}, "project_spare", "project.renamed",
     {"name": {"before": "spare", "after": "renamed"}}),
    ("update", "projects", {"environment": "prod"}, "project_spare",
     "project.environment_changed", {"environment": {"before": "dev", "after": "prod"}}),
    ("rpc", "issue_api_key", {"project_id": "@project", "kind": "pk", "name": "ci"}, None,
     "api_key.issued", None),
    ("update", "api_keys", {"status": "revoked"}, "key", "api_key.revoked", None),
    ("update", "api_keys", {"expires_at": SOON}, "key_never_expires", "api_key.expiry_changed",
     None),
    ("update", "api_keys", {"name": "renamed"}, "key_never_expires", "api_key.renamed",
     {"name": {"before": "forever", "after": "renamed"}}),
    ("delete", "api_keys", {}, "key_revoked", "api_key.deleted", None),
    ("insert", "webhook_endpoints",
     {"project_id": "@project", "url": "https://example.com/new", "secret": "whsec_bmV3"}, None,
     "webhook_endpoint.created", None),
    ("rpc", "redeliver_webhook", {"delivery_id": "@delivery"}, None, "webhook.redelivered",
     {"status": {"before": "exhausted", "after": "pending"},
      "attempts": {"before": 4, "after": 4}}),
    ("update", "webhook_endpoints", {"url": "https://example.com/moved"}, "endpoint",
     "webhook_endpoint.updated",
     {"url": {"before": "https://example.com/endpoint", "after": "https://example.com/moved"}}),
    ("update", "webhook_endpoints", {"name": "orders"}, "endpoint", "webhook_endpoint.updated",
     None),
    ("update", "webhook_endpoints", {"enabled": False}, "endpoint", "webhook_endpoint.disabled",
     {"enabled": {"before": True, "after": False},
      "disabled_by": {"before": None, "after": "owner"}}),
    ("update", "webhook_endpoints", {"enabled": True}, "endpoint_by_receiver",
     "webhook_endpoint.enabled",
     {"enabled": {"before": False, "after": True},
      "disabled_by": {"before": "receiver", "after": None},
      "disabled_reason": {"before": "disabled by receiver", "after": None}}),
    ("delete", "webhook_endpoints", {}, "endpoint_by_owner", "webhook_endpoint.deleted", None),
    ("delete", "projects", {}, "project_spare", "project.deleted", None),
]  # fmt: skip


def _resolve(suite: Suite, body: dict[str, Any]) -> dict[str, Any]:
    return {
        k: str(suite.ids[v[1:]]) if isinstance(v, str) and v.startswith("@") else v
        for k, v in body.items()
    }


def test_every_owner_action_through_postgrest_leaves_one_entry(
    suite: Suite, database_url: str
) -> None:
    owner = suite.ids["owner"]
    for op, table, body, target, action, changes in OWNER_ACTIONS:
        before = _last_id(database_url)
        _send(suite, "owner", op, table, _resolve(suite, body), target)
        entries = _entries_after(database_url, before)
        assert [e["action"] for e in entries] == [action], (action, entries)
        entry = entries[0]
        assert (entry["actor_type"], entry["actor_id"], entry["owner_id"]) == ("user", owner, owner)
        assert (entry["client_address"], entry["user_agent"]) == ("203.0.113.7", "curl/8.5.0")
        noun = action.split(".")[0]
        assert entry["target_type"] == ("webhook_delivery" if noun == "webhook" else noun)
        if target is not None:
            assert entry["target_id"] == suite.ids[target], action
        if changes is not None:
            assert entry["changes"] == changes, action
        if table == "projects" and op == "insert":
            assert entry["project_name"] == "new" and entry["project_environment"] == "staging"

    # The other actions' changes, which hold times and generated values.
    by_action = {e["action"]: e for e in _entries_after(database_url, 0)}
    issued = by_action["api_key.issued"]
    assert issued["changes"]["kind"] == {"before": None, "after": "pk"}
    assert issued["changes"]["prefix"] == {"before": None, "after": "nm_dev_pk_"}
    assert issued["changes"]["status"] == {"before": None, "after": "active"}
    revoked = by_action["api_key.revoked"]
    assert set(revoked["changes"]) == {"status", "revoked_at"}
    assert revoked["changes"]["status"] == {"before": "active", "after": "revoked"}
    expiry = by_action["api_key.expiry_changed"]["changes"]["expires_at"]
    assert expiry["before"] is None and expiry["after"] is not None
    created = by_action["webhook_endpoint.created"]["changes"]
    assert created["url"] == {"before": None, "after": "https://example.com/new"}
    assert created["name"]["before"] is None and created["name"]["after"]  # named from its URL
    renamed = _entries_after(database_url, 0)
    named = [e for e in renamed if e["changes"].get("name", {}).get("after") == "orders"]
    assert [e["action"] for e in named] == ["webhook_endpoint.updated"]
    assert set(named[0]["changes"]) == {"name"}
    assert "secret" not in json.dumps(created)
    deleted = by_action["project.deleted"]
    assert deleted["changes"]["name"] == {"before": "renamed", "after": None}
    assert deleted["project_name"] == "renamed"


def test_writes_that_change_nothing_audited_leave_nothing(suite: Suite, database_url: str) -> None:
    before = _last_id(database_url)
    # A stranger's writes reach no row; the owner renames to the same name; last_used_at.
    _send(suite, "stranger", "update", "projects", {"name": "mine"}, "project")
    _send(suite, "stranger", "delete", "webhook_endpoints", {}, "endpoint")
    _send(suite, "owner", "update", "projects", {"name": "shop"}, "project")
    _send(suite, "service_role", "update", "api_keys", {"last_used_at": LATER}, "key")
    assert _entries_after(database_url, before) == []


def test_platform_writes_name_the_platform(suite: Suite, database_url: str) -> None:
    before = _last_id(database_url)
    _send(suite, "service_role", "update", "projects", {"rate_limit": 50}, "project")
    (entry,) = _entries_after(database_url, before)
    assert entry["action"] == "project.limits_changed"
    assert (entry["actor_type"], entry["actor_id"]) == ("platform", None)
    assert entry["changes"] == {"rate_limit": {"before": None, "after": 50}}


async def test_the_worker_suspending_and_an_operator_lifting_name_themselves(
    database_url: str, make_user: MakeUser
) -> None:
    owner = await make_user("owner@example.com")
    async with (
        Database(database_url, actor="worker") as worker_db,
        Database(database_url, actor="operator") as operator_db,
    ):
        async with worker_db.as_user(owner.id) as conn:
            project = await projects.create_project(conn, name="shop", environment="prod")
        window = datetime(2026, 1, 1, tzinfo=UTC)
        async with worker_db.as_service() as conn:
            await suspensions.suspend_many(
                conn, [suspensions.Violation(project.id, window, 120, 100)], reason="hard cap"
            )
        async with operator_db.as_service() as conn:
            await suspensions.lift(conn, project.id, lifted_by="alice", reason="paid")
        async with worker_db.as_user(owner.id) as conn:
            page = await audit.list_entries(conn, project.id)
    lifted, suspended, created = page.entries
    assert (created.action, created.actor_type, created.actor_id) == (
        "project.created",
        "user",
        owner.id,
    )
    assert (suspended.action, suspended.actor_type, suspended.actor_id) == (
        "project.suspended",
        "worker",
        None,
    )
    assert suspended.changes["status"] == {"before": "active", "after": "suspended"}
    assert suspended.changes["reason"] == {"before": None, "after": "hard cap"}
    assert suspended.changes["requests"] == {"before": None, "after": 120}
    assert (lifted.action, lifted.actor_type) == ("project.unsuspended", "operator")
    assert lifted.changes["lifted_by"] == {"before": None, "after": "alice"}
    assert lifted.changes["lift_reason"] == {"before": None, "after": "paid"}
    assert page.next_before is None


async def test_a_receivers_410_is_recorded_as_the_worker_disabling(
    database_url: str, make_user: MakeUser
) -> None:
    owner = await make_user("owner@example.com")
    async with Database(database_url, actor="worker") as db:
        async with db.as_user(owner.id) as conn:
            project = await projects.create_project(conn, name="shop", environment="prod")
            endpoint = await webhooks.create_endpoint(conn, project.id, "https://example.com/h")
        async with db.as_service() as conn:
            await conn.execute(
                queue._DISABLE_ENDPOINT,
                {"endpoint_id": endpoint.endpoint.id, "reason": "the receiver answered 410 Gone"},
            )
        async with db.as_user(owner.id) as conn:
            page = await audit.list_entries(conn, project.id, action="webhook_endpoint.disabled")
    (entry,) = page.entries
    assert (entry.actor_type, entry.target_id) == ("worker", endpoint.endpoint.id)
    assert entry.changes["disabled_by"] == {"before": None, "after": "receiver"}
    assert entry.changes["disabled_reason"]["after"] == "the receiver answered 410 Gone"


def test_nobody_rewrites_an_entry(suite: Suite, database_url: str) -> None:
    _send(suite, "owner", "update", "projects", {"name": "renamed"}, "project")
    with psycopg.connect(database_url) as conn:
        row = conn.execute("select max(id) from public.audit_log").fetchone()
        assert row is not None
    entry_id = row[0]
    owner_claims = suite.claims("owner")[1]
    statements = [
        ("insert into public.audit_log (project_id, project_name, project_environment, owner_id,"
         " actor_type, action, target_type, target_id, correlation_id) select project_id,"
         " project_name, project_environment, owner_id, 'user', 'project.renamed', 'project',"
         " target_id, correlation_id from public.audit_log where id = %s"),
        "update public.audit_log set changes = '{}' where id = %s",
        "delete from public.audit_log where id = %s",
    ]  # fmt: skip
    for role, claims in (("authenticated", owner_claims), ("service_role", "{}"), ("anon", "{}")):
        for statement in statements:
            with suite.api.transaction(force_rollback=True):
                suite.api.execute(
                    "select set_config('role', %s, true), set_config('request.jwt.claims', %s,"
                    " true)",
                    (role, claims),
                )
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    suite.api.execute(statement, (entry_id,))
    # Not even the table's owner, unless it is the retention job on an old entry.
    with psycopg.connect(database_url, autocommit=True) as admin:
        for statement in [*statements[1:], "truncate public.audit_log"]:
            with pytest.raises(psycopg.Error, match="append-only") as refused:
                admin.execute(statement, (entry_id,) if "%s" in statement else None)
            assert refused.value.sqlstate == "PE007"
        kept = admin.execute("select count(*) from public.audit_log where id = %s", (entry_id,))
        assert kept.fetchone() == (1,)


def test_owners_read_their_entries_strangers_and_anon_none(suite: Suite) -> None:
    _send(suite, "owner", "update", "projects", {"name": "renamed"}, "project")
    counts: dict[str, Any] = {}
    actors: tuple[Actor, ...] = ("owner", "stranger", "anon")
    for actor in actors:
        role, claims = suite.claims(actor)
        with suite.api.transaction(force_rollback=True):
            suite.api.execute(
                "select set_config('role', %s, true), set_config('request.jwt.claims', %s, true)",
                (role, claims),
            )
            try:
                with suite.api.transaction():
                    row = suite.api.execute(
                        "select count(*) from public.audit_log where owner_id = %s",
                        (suite.ids["owner"],),
                    ).fetchone()
                    counts[actor] = row[0] if row else None
            except psycopg.errors.InsufficientPrivilege:
                counts[actor] = "refused"
    assert counts["owner"] > 0
    assert counts["stranger"] == 0
    assert counts["anon"] == "refused"


async def test_entries_outlive_their_project_and_stay_readable_by_its_owner(
    db: Database, make_user: MakeUser
) -> None:
    owner = await make_user("owner@example.com")
    async with db.as_user(owner.id) as conn:
        project = await projects.create_project(conn, name="gone", environment="dev")
        await apikeys.create_key(conn, project.id, KeyKind.SECRET)
        await webhooks.create_endpoint(conn, project.id, "https://example.com/h")
    async with db.as_user(owner.id) as conn:
        await projects.delete_project(conn, project.id)
    async with db.as_user(owner.id) as conn:
        page = await audit.list_entries(conn, project.id)
    # The key and endpoint deleted with the project leave no entries of their own.
    assert [e.action for e in page.entries] == [
        "project.deleted",
        "webhook_endpoint.created",
        "api_key.issued",
        "project.created",
    ]
    assert {(e.project_name, e.project_environment.value) for e in page.entries} == {
        ("gone", "dev")
    }


async def test_a_rotation_shares_one_correlation_id(db: Database, make_user: MakeUser) -> None:
    owner = await make_user("owner@example.com")
    async with db.as_user(owner.id) as conn:
        project = await projects.create_project(conn, name="shop", environment="dev")
        first = await apikeys.create_key(conn, project.id, KeyKind.SECRET)
    async with db.as_user(owner.id) as conn:
        graced = await apikeys.rotate_key(conn, first.key.id, grace=timedelta(hours=1))
    async with db.as_user(owner.id) as conn:
        await apikeys.rotate_key(conn, graced.key.id, grace=timedelta(0))
    async with db.as_user(owner.id) as conn:
        entries = (await audit.list_entries(conn, project.id)).entries
    actions = [(e.action, e.target_id) for e in entries]
    assert actions[:4] == [
        ("api_key.revoked", graced.key.id),
        ("api_key.issued", actions[1][1]),
        ("api_key.expiry_changed", first.key.id),
        ("api_key.issued", graced.key.id),
    ]
    ids = [e.correlation_id for e in entries]
    # One transaction each: the second rotation, the first, the project with its first key.
    assert ids[0] == ids[1] and ids[2] == ids[3] and ids[4] == ids[5]
    assert len({ids[0], ids[2], ids[4]}) == 3


async def test_issued_and_revoked_keys_record_the_audited_columns(
    db: Database, database_url: str, make_user: MakeUser
) -> None:
    """The key trigger builds these two entries' changes column by column: they are what the
    column list (private.audit_api_key_columns) gives, with and without an expiry."""
    owner = await make_user("owner@example.com")
    async with db.as_user(owner.id, headers=HEADERS) as conn:
        project = await projects.create_project(conn, name="shop", environment="prod")
        keys = [
            (await apikeys.create_key(conn, project.id, KeyKind.SECRET, name="ci")).key.id,
            (
                await apikeys.create_key(
                    conn,
                    project.id,
                    KeyKind.PUBLISHABLE,
                    expires_at=datetime.now(UTC) + timedelta(days=1),
                )
            ).key.id,
        ]
    compare = (
        "select e.changes, private.audit_changes({before}, private.audit_api_key_columns(k){cut})"
        " from public.audit_log e join public.api_keys k on k.id = e.target_id{join}"
        " where e.action = %s and k.id = any(%s)"
    )
    with psycopg.connect(database_url, autocommit=True) as admin:
        issued = admin.execute(
            compare.format(before="null", cut="", join=""), ("api_key.issued", keys)
        ).fetchall()
        assert len(issued) == 2 and all(mine == listed for mine, listed in issued)
        assert {"expires_at", "name"} <= set(issued[0][0]) | set(issued[1][0])
        admin.execute(
            "create temp table keys_before as select * from public.api_keys where id = any(%s)",
            (keys,),
        )
        async with db.as_user(owner.id, headers=HEADERS) as conn:
            for key_id in keys:
                await apikeys.revoke_key(conn, key_id)
        before = (
            "private.audit_api_key_columns("
            "jsonb_populate_record(null::public.api_keys, to_jsonb(b))) - 'name'"
        )
        join = " join keys_before b on b.id = k.id"
        revoked = admin.execute(
            compare.format(before=before, cut=" - 'name'", join=join), ("api_key.revoked", keys)
        ).fetchall()
    assert len(revoked) == 2 and all(mine == listed for mine, listed in revoked)
    assert all(set(mine) == {"status", "revoked_at"} for mine, _ in revoked)


async def test_the_console_passes_the_request_context(db: Database, make_user: MakeUser) -> None:
    owner = await make_user("owner@example.com")
    async with db.as_user(owner.id, headers={"x-forwarded-for": "198.51.100.2"}) as conn:
        project = await projects.create_project(conn, name="shop", environment="dev")
    async with db.as_user(owner.id) as conn:
        (entry,) = (await audit.list_entries(conn, project.id)).entries
    assert (entry.client_address, entry.user_agent) == ("198.51.100.2", None)


async def test_the_retention_job_deletes_only_old_entries(
    db: Database, database_url: str, make_user: MakeUser
) -> None:
    owner = await make_user("owner@example.com")
    async with db.as_user(owner.id) as conn:
        project = await projects.create_project(conn, name="shop", environment="dev")
    # Entries of 401 and 399 days ago, as a restored backup would hold them.
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute(
            "insert into public.audit_log (at, project_id, project_name, project_environment,"
            " owner_id, actor_type, action, target_type, target_id, correlation_id)"
            " select now() - make_interval(days => d), p.id, p.name, p.environment, p.owner_id,"
            " 'platform', 'project.renamed', 'project', p.id, gen_random_uuid()"
            " from public.projects p, unnest(array[401, 401, 401, 399]) as d where p.id = %s",
            (project.id,),
        )
    async with db.as_service() as conn:
        assert await audit.purge(conn, retention=audit.RETENTION_DEFAULT, batch_size=2) == 2
        assert await audit.purge(conn, retention=timedelta(days=402)) == 0
    # The worker's job: batches until one comes back short.
    settings = WorkerSettings(audit_retention_days=400, audit_purge_batch_size=1)
    assert await purge_audit_trail(db, settings) == 1
    async with db.as_service() as conn:
        assert await audit.purge(conn, retention=audit.RETENTION_DEFAULT) == 0
        left = await audit.search(conn, project_id=project.id)
    assert sorted(e.action for e in left) == ["project.created", "project.renamed"]
    # The cut-off lasts only for the job's own statement: a delete after it is refused again.
    with pytest.raises(PermissionDenied, match="append-only"):
        async with db.as_service() as conn:
            await conn.execute("set local role postgres")
            await conn.execute("select private.purge_audit_log('400 days')")
            await conn.execute("delete from public.audit_log")
    with pytest.raises(Exception, match="at least a day"):
        async with db.as_service() as conn:
            await audit.purge(conn, retention=timedelta(hours=1))


async def test_no_token_hash_or_secret_enters_the_trail(
    db: Database, database_url: str, make_user: MakeUser
) -> None:
    owner = await make_user("owner@example.com")
    secrets: list[str] = []
    async with db.as_user(owner.id, headers=HEADERS) as conn:
        project = await projects.create_project(conn, name="shop", environment="prod")
        issued = [await apikeys.create_key(conn, project.id, KeyKind.SECRET) for _ in range(3)]
        for _ in range(3):
            created = await webhooks.create_endpoint(conn, project.id, "https://example.com/h")
            secrets.append(created.secret)
    async with db.as_user(owner.id) as conn:
        issued.append(await apikeys.rotate_key(conn, issued[0].key.id, grace=timedelta(hours=1)))
        issued.append(await apikeys.rotate_key(conn, issued[1].key.id, grace=timedelta(0)))
        await apikeys.revoke_key(conn, issued[2].key.id)
    async with (
        Database(database_url, actor="operator") as operator_db,
        operator_db.as_service() as conn,
    ):
        issued.append(await apikeys.create_key(conn, project.id, KeyKind.PUBLISHABLE))
        await apikeys.rotate_key(conn, issued[-1].key.id, grace=timedelta(0))
    for key in issued:
        hashed = hash_token(key.token)
        secrets += [key.token, key.token[len(key.key.prefix) : -4], hashed.hex()]
        secrets.append(hashed.hex().upper())
    with psycopg.connect(database_url) as admin:
        stored = admin.execute(
            "select string_agg(a::text, E'\\n') from public.audit_log as a"
        ).fetchone()
        assert stored is not None
        stored_secrets = admin.execute(
            "select array_agg(secret) from public.webhook_endpoints"
        ).fetchone()
    trail: str = stored[0]
    assert trail.count("api_key.issued") == 7 and trail.count("webhook_endpoint.created") == 3
    assert stored_secrets is not None and sorted(stored_secrets[0]) == sorted(secrets[:3])
    leaked = [s for s in secrets if s in trail or s.split("_", 1)[-1] in trail]
    assert leaked == []
    # The columns a key's entries carry are the listed ones, and no others.
    with psycopg.connect(database_url) as admin:
        keys = admin.execute(
            "select distinct jsonb_object_keys(changes) from public.audit_log"
            " where action = 'api_key.issued'"
        ).fetchall()
    assert {k for (k,) in keys} == {
        "name",
        "kind",
        "environment",
        "prefix",
        "last_four",
        "status",
    } | ({"expires_at"} if any(k.key.expires_at for k in issued) else set())


# Entries written directly (as the superuser), `count` of them one second apart, newest now.
_ENTRIES = """
    insert into public.audit_log (at, project_id, project_name, project_environment,
        owner_id, actor_type, action, target_type, target_id, correlation_id)
    select now() - make_interval(secs => g), {project}, 'busy', 'prod', {owner}, 'user',
        'api_key.issued', 'api_key', gen_random_uuid(), gen_random_uuid()
    from generate_series(1, {count}) as g"""


async def _many_entries(admin: psycopg.AsyncConnection[Any], count: int) -> None:
    """`count` entries over 500 other owners' projects, and the table analyzed."""
    await admin.execute(
        _ENTRIES.format(
            project="md5((g % 500)::text)::uuid", owner="md5((g % 500)::text)::uuid", count=count
        )
    )
    await admin.execute("analyze public.audit_log")


async def test_the_newest_entries_across_projects_are_read_without_a_sort(
    db: Database, database_url: str
) -> None:
    # `parity audit` without --project: the newest entries of every project, which must not cost
    # a sort of the whole trail (68 ms at 300,000 entries ordered by time). Written as a trail is,
    # the later the entry the higher its id.
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as admin:
        await admin.execute(
            "insert into public.audit_log (at, project_id, project_name, project_environment,"
            " owner_id, actor_type, action, target_type, target_id, correlation_id)"
            " select now() - make_interval(secs => 40000 - g), md5((g % 500)::text)::uuid,"
            " 'busy', 'prod', md5((g % 500)::text)::uuid, 'user', 'api_key.issued', 'api_key',"
            " gen_random_uuid(), gen_random_uuid() from generate_series(1, 40000) as g"
        )
        await admin.execute("analyze public.audit_log")
    async with db.as_service() as conn:
        newest = await audit.search(conn, limit=100)
        since = await audit.search(conn, since=datetime.now(UTC) - timedelta(hours=1), limit=5)
        cur = await conn.execute(
            "explain select * from public.audit_log order by id desc limit 100"
        )
        plan = "\n".join(row["QUERY PLAN"] for row in await cur.fetchall())
        cur = await conn.execute(
            "select id from public.audit_log order by at desc, id desc limit 100"
        )
        by_time = [row["id"] for row in await cur.fetchall()]
    assert [e.id for e in newest] == by_time
    assert [e.id for e in since] == by_time[:5]
    assert "audit_log_pkey" in plan and "Sort" not in plan, plan


async def test_a_page_read_as_its_reader_walks_the_projects_index_in_order(
    db: Database, database_url: str, make_user: MakeUser
) -> None:
    # Many entries of one project, among other owners' entries: the first page must not take
    # every entry of the project and sort them (the plan a query relying on RLS alone got).
    owner = await make_user("owner@example.com")
    stranger = await make_user("stranger@example.com")
    async with db.as_user(owner.id) as conn:
        project = await projects.create_project(conn, name="busy", environment="prod")
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as admin:
        await admin.execute(
            _ENTRIES.format(project="%(project)s", owner="%(owner)s", count=20_000),
            {"project": project.id, "owner": owner.id},
        )
        await _many_entries(admin, 40_000)

    async with db.as_user(owner.id) as conn:
        plain = await audit.list_entries(conn, project.id, limit=20)
        named = await audit.list_entries(conn, project.id, limit=20, reader=owner.id)
        cur = await conn.execute(
            "explain select * from public.audit_log where project_id = %s and owner_id = %s"
            " order by at desc, id desc limit 21",
            (project.id, owner.id),
        )
        plan = "\n".join(row["QUERY PLAN"] for row in await cur.fetchall())
    assert [e.id for e in named.entries] == [e.id for e in plain.entries]
    assert len(named.entries) == 20
    assert "audit_log_project_at_idx" in plan and "Sort" not in plan, plan
    async with db.as_user(stranger.id) as conn:
        assert (await audit.list_entries(conn, project.id, reader=stranger.id)).entries == []
