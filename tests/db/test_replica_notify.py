"""Gateway invalidations fire in every session_replication_role: rows changed by a restore or by
logical replication (replica mode) reach the gateways at once, not only after their cache TTL."""

from __future__ import annotations

from typing import Any

import psycopg


def _seed(conn: psycopg.Connection[Any]) -> tuple[Any, Any]:
    row = conn.execute(
        "with u as (insert into auth.users (email) values ('r@example.com') returning id)"
        " insert into public.projects (owner_id, name) select id, 'replicated' from u returning id"
    ).fetchone()
    assert row is not None
    key = conn.execute("select key_id from public.issue_api_key(%s, 'sk')", (row[0],)).fetchone()
    assert key is not None
    return row[0], key[0]


def _received(listener: psycopg.Connection[Any], expected: int) -> list[str]:
    return [n.payload for n in listener.notifies(timeout=5.0, stop_after=expected)]


def test_invalidations_fire_in_replica_mode(database_url: str) -> None:
    with (
        psycopg.connect(database_url, autocommit=True) as listener,
        psycopg.connect(database_url, autocommit=True) as writer,
    ):
        project, key = _seed(writer)
        listener.execute("listen gateway_invalidate")
        writer.execute("set session_replication_role = replica")
        writer.execute(
            "update public.api_keys set status = 'revoked', revoked_at = now() where id = %s",
            (key,),
        )
        writer.execute("update public.projects set status = 'suspended' where id = %s", (project,))
        writer.execute("delete from public.api_keys where id = %s", (key,))
        writer.execute("delete from public.projects where id = %s", (project,))
        assert _received(listener, 4) == [
            f"key:{key}",
            f"project:{project}",
            f"key:{key}",
            f"project:{project}",
        ]


def test_an_ordinary_trigger_would_stay_silent_in_replica_mode(database_url: str) -> None:
    """The control: with the trigger enabled the default way (origin only), replica-mode changes
    notify nothing. The test above would catch the ENABLE ALWAYS being dropped."""
    with (
        psycopg.connect(database_url, autocommit=True) as listener,
        psycopg.connect(database_url, autocommit=True) as writer,
    ):
        project, _ = _seed(writer)
        writer.execute("alter table public.projects enable trigger projects_notify_gateway")
        listener.execute("listen gateway_invalidate")
        writer.execute("set session_replication_role = replica")
        writer.execute("update public.projects set status = 'suspended' where id = %s", (project,))
        writer.execute("set session_replication_role = origin")
        writer.execute("update public.projects set rate_limit = 5 where id = %s", (project,))
        # Only the origin-mode change notifies.
        assert _received(listener, 2) == [f"project:{project}"]
