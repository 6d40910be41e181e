"""Apps' rules in Postgres, spoken as PostgREST speaks (a non-superuser login role, `role` and
`request.jwt.claims` per transaction): one project per environment per app, a project fills only
the slot of its own environment and follows it when it moves (or is refused: PE008), only your own
projects into your own apps, limits promoted only one step forward inside one app (PE009); and
endpoints older than names are named lazily, uniquely per project, after their URL."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

from ops import database
from shared.environment import Environment
from shared.parity import PROMOTION_ORDER, is_forward
from tests.db.postgrest import Actor, Suite, postgrest_suite
from tests.db.test_migrations import all_versions, workdir_with

APPS = "20261202000000"


@pytest.fixture
def suite(database_url: str) -> Iterator[Suite]:
    with postgrest_suite(database_url) as seeded:
        yield seeded


@contextmanager
def acting(suite: Suite, actor: Actor) -> Iterator[psycopg.Connection[Any]]:
    """A transaction as PostgREST runs a request of `actor`, kept (committed) if it succeeds."""
    role, claims = suite.claims(actor)
    with suite.api.transaction():
        suite.api.execute(
            "select set_config('role', %s, true), set_config('request.jwt.claims', %s, true)",
            (role, claims),
        )
        yield suite.api


def refused(suite: Suite, actor: Actor, statement: str, params: tuple[Any, ...]) -> str:
    """The SQLSTATE of `statement` as `actor`, which must fail; the fingerprints show nothing
    changed."""
    before = service_fingerprints(suite)
    with pytest.raises(psycopg.Error) as caught, acting(suite, actor) as conn:
        conn.execute(statement, params)
    assert service_fingerprints(suite) == before
    assert caught.value.diag.message_primary
    return str(caught.value.sqlstate)


def service_fingerprints(suite: Suite) -> dict[str, str]:
    with suite.api.transaction(force_rollback=True):
        suite.api.execute("select set_config('role', 'service_role', true)")
        return suite.fingerprints()


def new_project(suite: Suite, name: str, environment: str) -> Any:
    with acting(suite, "owner") as conn:
        row = conn.execute(
            "insert into public.projects (owner_id, name, environment) values (%s, %s, %s)"
            " returning id",
            (suite.ids["owner"], name, environment),
        ).fetchone()
    assert row is not None
    return row[0]


LINK = "insert into public.app_environments (app_id, environment, project_id) values (%s, %s, %s)"


def slots(suite: Suite, app: str) -> dict[str, Any]:
    with acting(suite, "owner") as conn:
        rows = conn.execute(
            "select environment::text, project_id from public.app_environments where app_id = %s",
            (suite.ids[app],),
        ).fetchall()
    return dict(rows)


def test_a_second_prod_project_in_one_app_is_refused(suite: Suite) -> None:
    first, second = new_project(suite, "prod one", "prod"), new_project(suite, "prod two", "prod")
    with acting(suite, "owner") as conn:
        conn.execute(LINK, (suite.ids["app"], "prod", first))
    assert refused(suite, "owner", LINK, (suite.ids["app"], "prod", second)) == "PE008"
    assert slots(suite, "app")["prod"] == first


def test_a_project_fills_only_the_slot_of_its_environment(suite: Suite) -> None:
    prod = new_project(suite, "live", "prod")
    for slot in ("dev", "staging"):
        assert refused(suite, "owner", LINK, (suite.ids["app_spare"], slot, prod)) == "PE008"
    with acting(suite, "owner") as conn:
        conn.execute(LINK, (suite.ids["app_spare"], "prod", prod))
    assert slots(suite, "app_spare") == {"prod": prod}


def test_an_environment_change_moves_the_link_or_is_refused_into_a_filled_slot(
    suite: Suite,
) -> None:
    move = "update public.projects set environment = %s where id = %s"
    staging = suite.ids["project_staging"]
    # The app's dev slot is filled (by `project`): staging cannot become dev.
    assert refused(suite, "owner", move, ("dev", staging)) == "PE008"
    # Its prod slot is empty: the project moves there, and the staging slot empties.
    with acting(suite, "owner") as conn:
        conn.execute(move, ("prod", staging))
    assert slots(suite, "app") == {"dev": suite.ids["project"], "prod": staging}
    # An unlinked project moves freely.
    with acting(suite, "owner") as conn:
        conn.execute(move, ("prod", suite.ids["project_spare"]))


def test_a_stranger_can_neither_see_nor_link_nor_unlink(suite: Suite) -> None:
    with acting(suite, "stranger") as conn:
        seen = conn.execute(
            "select (select count(*) from public.apps where owner_id = %s),"
            " (select count(*) from public.app_environments where app_id = %s)",
            (suite.ids["owner"], suite.ids["app"]),
        ).fetchone()
        assert seen == (0, 0)
        gone = conn.execute(
            "delete from public.app_environments where app_id = %s returning 1",
            (suite.ids["app"],),
        ).fetchall()
        assert gone == []
    theirs = new_project_of_stranger(suite)
    # Their own project into the owner's app; the owner's project into their own app.
    assert refused(suite, "stranger", LINK, (suite.ids["app_spare"], "dev", theirs)) == "42501"
    mine = suite.ids["project_spare"]
    assert refused(suite, "stranger", LINK, (suite.ids["stranger_app"], "dev", mine)) == "42501"
    # Nor may the owner link a stranger's project, or into a stranger's app.
    assert refused(suite, "owner", LINK, (suite.ids["app_spare"], "dev", theirs)) == "42501"
    assert refused(suite, "owner", LINK, (suite.ids["stranger_app"], "dev", mine)) == "42501"
    assert slots(suite, "app_spare") == {}


def new_project_of_stranger(suite: Suite) -> Any:
    with acting(suite, "stranger") as conn:
        row = conn.execute(
            "insert into public.projects (owner_id, name, environment) values (%s, 'x', 'dev')"
            " returning id",
            (suite.ids["stranger"],),
        ).fetchone()
    assert row is not None
    return row[0]


PROMOTE = "select public.promote_project_limits(%s, %s)"


def test_limits_are_promoted_one_way_inside_one_app_and_never_by_a_stranger(
    suite: Suite, database_url: str
) -> None:
    dev, staging = suite.ids["project"], suite.ids["project_staging"]
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute(
            "update public.projects set rate_limit = 1234, request_cap = 99 where id = %s", (dev,)
        )
    assert refused(suite, "stranger", PROMOTE, (dev, staging)) == "P0002"
    assert refused(suite, "anon", PROMOTE, (dev, staging)) == "42501"
    assert refused(suite, "owner", PROMOTE, (staging, dev)) == "PE009"
    assert refused(suite, "owner", PROMOTE, (suite.ids["project_spare"], staging)) == "PE009"
    with acting(suite, "owner") as conn:
        conn.execute(PROMOTE, (dev, staging))
        row = conn.execute(
            "select rate_limit, request_cap, environment::text from public.projects where id = %s",
            (staging,),
        ).fetchone()
    assert row == (1234, 99, "staging")  # the limits, never the environment


RECORD = "select private.record_promotion(%s, %s, %s, %s::jsonb, %s)"
FORGED_PLAN = '[{"action": "create_endpoint", "endpoint": "forged", "set": {}}]'


def test_only_the_platform_records_a_promotion_and_it_names_the_acting_owner(
    suite: Suite,
) -> None:
    """promotion.applied cannot be forged through PostgREST: anon, the owner and a stranger
    may neither call the recording function nor write the trail. The platform (service_role, as
    the console after applying a promotion as the user) may, for a forward step of the app, and
    the entry names the user of the claims, who must own the app."""
    app, dev, staging = suite.ids["app"], suite.ids["project"], suite.ids["project_staging"]
    for actor in ("anon", "owner", "stranger"):
        assert refused(suite, actor, RECORD, (app, dev, staging, FORGED_PLAN, "f")) == "42501"
        insert = (
            "insert into public.audit_log (project_id, project_name, project_environment,"
            " owner_id, actor_type, action, target_type, target_id, correlation_id)"
            " values (%s, 'p', 'staging', %s, 'user', 'promotion.applied', 'app', %s,"
            " gen_random_uuid())"
        )
        assert refused(suite, actor, insert, (staging, suite.ids["owner"], app)) == "42501"

    headers = '{"x-forwarded-for": "198.51.100.4, 10.0.0.1", "user-agent": "promoter/1"}'

    def as_platform(actor: Actor | None, args: tuple[Any, ...], parity_actor: str = "") -> Any:
        with suite.api.transaction(force_rollback=True):
            claims = "" if actor is None else suite.claims(actor)[1]
            suite.api.execute(
                "select set_config('role', 'service_role', true),"
                " set_config('request.jwt.claims', %s, true),"
                " set_config('request.headers', %s, true), set_config('parity.actor', %s, true)",
                (claims, headers, parity_actor),
            )
            entry_id = suite.api.execute(RECORD, args).fetchone()
            return suite.api.execute(
                "select actor_type::text, actor_id, project_id, target_type, target_id,"
                " changes -> 'plan', changes -> 'from' ->> 'environment', client_address,"
                " user_agent from public.audit_log where id = %s",
                entry_id,
            ).fetchone()

    plan = '[{"action": "update_endpoint", "endpoint": "orders", "set": {"enabled": true}}]'
    assert as_platform("owner", (app, dev, staging, plan, "f")) == (
        "user",
        suite.ids["owner"],
        staging,
        "app",
        app,
        [{"action": "update_endpoint", "endpoint": "orders", "set": {"enabled": True}}],
        "dev",
        "198.51.100.4",
        "promoter/1",
    )
    assert as_platform(None, (app, dev, staging, plan, "f"))[:2] == ("platform", None)
    assert as_platform(None, (app, dev, staging, plan, "f"), "operator")[:2] == ("operator", None)
    with pytest.raises(psycopg.Error) as caught:
        as_platform("stranger", (app, dev, staging, plan, "f"))
    assert caught.value.sqlstate == "42501"
    for source, target in ((staging, dev), (suite.ids["project_spare"], staging)):
        with pytest.raises(psycopg.Error) as caught:
            as_platform("owner", (app, source, target, plan, "f"))
        assert caught.value.sqlstate == "PE009"


def test_the_database_and_python_agree_on_the_forward_order(database_url: str) -> None:
    assert PROMOTION_ORDER[0] is Environment.DEV and PROMOTION_ORDER[-1] is Environment.PROD
    with psycopg.connect(database_url) as conn:
        for a in Environment:
            for b in Environment:
                row = conn.execute(
                    "select private.environment_rank(%s) < private.environment_rank(%s)",
                    (a.value, b.value),
                ).fetchone()
                assert row == (is_forward(a, b),), (a, b)


# Endpoint names ----------------------------------------------------------------------------------


def test_endpoints_written_without_a_name_are_named_after_their_url(suite: Suite) -> None:
    insert = (
        "insert into public.webhook_endpoints (project_id, url, secret) values (%s, %s, %s)"
        " returning name"
    )
    project = suite.ids["project_spare"]
    names = []
    with acting(suite, "owner") as conn:
        for url in (
            "https://Hooks.Example.com:8443/v1/Orders?token=x",  # (the URL check refuses userinfo)
            "https://hooks.example.com:8443/v1/orders",
            "http://[::1]/",
        ):
            row = conn.execute(insert, (project, url, "whsec_YQ==")).fetchone()
            assert row is not None
            names.append(row[0])
    assert names[0] == "hooks-example-com-8443-v1-orders"
    assert names[1].startswith("hooks-example-com-8443-v1-orders-") and len(names[1]) == 41
    assert names[2] == "1"


def test_endpoints_older_than_names_are_named_lazily_and_uniquely(
    admin_url: str, tmp_path: Path
) -> None:
    """The migration writes no endpoint row; the report's first read names them (through the
    trigger), each project on its own. That naming is the platform's, so it leaves nothing in the
    audit trail; a name somebody chooses for such an endpoint is recorded."""
    name = database.unique_name("parity_names")
    url = database.create_database(admin_url, name)
    try:
        database.bootstrap(url)
        before = [v for v in all_versions() if v < APPS]
        database.push_migrations(url, workdir=workdir_with(tmp_path, before))
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("insert into auth.users (email) values ('o@example.com')")
            conn.execute(
                "insert into public.projects (owner_id, name)"
                " select id, 'p' || n from auth.users, generate_series(1, 2) as n"
            )
            conn.execute(
                "insert into public.webhook_endpoints (project_id, url, secret)"
                " select p.id, u, 'whsec_YQ==' from public.projects as p,"
                " unnest(array['https://a.example.com/hook', 'https://a.example.com/hook',"
                "              'https://a.example.com/hook?x=1', 'https://b.example.com']) as u"
            )
            # A third project's endpoint, which its owner names before anything else does.
            chosen = conn.execute(
                "with p as (insert into public.projects (owner_id, name)"
                " select id, 'p3' from auth.users returning id)"
                " insert into public.webhook_endpoints (project_id, url, secret)"
                " select p.id, 'https://c.example.com/hook', 'whsec_YQ==' from p"
                " returning id, project_id"
            ).fetchone()
            assert chosen is not None
        database.push_migrations(url)
        with psycopg.connect(url, autocommit=True) as conn:
            unnamed = conn.execute(
                "select count(*) from public.webhook_endpoints where name is null"
            ).fetchone()
            assert unnamed == (9,)  # the migration rewrote nothing
            conn.execute(
                "update public.webhook_endpoints set name = 'orders' where id = %s", chosen[:1]
            )
            last_entry = conn.execute("select max(id) from public.audit_log").fetchone()
            assert last_entry is not None
            conn.execute(
                "update public.webhook_endpoints set name = null where name is null"
            )  # what shared.webhooks.name_endpoints sends
            audited = conn.execute(
                "select count(*) from public.audit_log where id > %s", last_entry
            ).fetchone()
            named = conn.execute(
                "select changes from public.audit_log"
                " where target_id = %s and action = 'webhook_endpoint.updated'",
                chosen[:1],
            ).fetchall()
            rows = conn.execute(
                "select project_id, array_agg(name order by name) from public.webhook_endpoints"
                " where project_id <> %s group by project_id",
                chosen[1:],
            ).fetchall()
            invalid = conn.execute(
                "select count(*) from public.webhook_endpoints"
                " where name !~ '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$'"
            ).fetchone()
        assert invalid == (0,)
        assert audited == (0,)
        assert named == [({"name": {"before": None, "after": "orders"}},)]
        assert len(rows) == 2
        for _, names in rows:
            assert len(set(names)) == 4, names
            assert names.count("a-example-com-hook") == 1
            assert "b-example-com" in names
            assert sum(n.startswith("a-example-com-hook-") for n in names) == 2
    finally:
        database.drop_database(admin_url, name)


def test_an_endpoint_name_is_unique_within_its_project_only(suite: Suite) -> None:
    insert = (
        "insert into public.webhook_endpoints (project_id, name, url, secret)"
        " values (%s, 'orders', 'https://example.com/o', 'whsec_YQ==')"
    )
    with acting(suite, "owner") as conn:
        conn.execute(insert, (suite.ids["project"],))
        conn.execute(insert, (suite.ids["project_staging"],))
    assert refused(suite, "owner", insert, (suite.ids["project"],)) == "23505"
