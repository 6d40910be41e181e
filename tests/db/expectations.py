"""What a signed-in owner may write directly through Supabase's APIs, for every column of every
table in `public`: the declared expectations test_postgrest_writes.py turns into cases.

Every table and every column must be listed: a column the catalog has and this file does not fails
the suite, so nothing new becomes writable by accident. Adding a column is one line in its table:

    "my_column": Col(<a well-typed value to try>),                      # platform only
    "my_column": Col(<value>, insert=True, update=True),                # the owner sets it

`anon` may write nothing, and a stranger (another signed-in user) nothing of the owner's: those two
need no declaration. Values may name fixture rows with `Ref` (see `ROW_TABLES` in postgrest.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

Op = Literal["insert", "update"]

LATER = (datetime.now(UTC) + timedelta(days=30)).isoformat()
SOON = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
PAST = "2020-01-01T00:00:00+00:00"
HASH = "\\x" + "ab" * 32


@dataclass(frozen=True)
class Ref:
    """The id of a fixture row, e.g. Ref("project")."""

    row: str


@dataclass(frozen=True)
class Write:
    """A further write to try as the owner: `sqlstate` None means it must succeed."""

    op: Op
    value: Any
    target: str | None = None  # fixture row an update aims at; None: the table's target
    sqlstate: str | None = None


@dataclass(frozen=True)
class Col:
    """`value` is tried on insert (as `new`, when given) and on update of the table's target row.
    `insert`/`update`: whether the owner may do so; if not, the write must fail with `refusal`."""

    value: Any
    insert: bool = False
    update: bool = False
    new: Any = None
    writes: tuple[Write, ...] = ()
    refusal: str = "42501"  # SQLSTATE of a refused write; 42501 is insufficient_privilege
    target: str | None = None  # the row the update aims at, when not the table's target

    @property
    def insert_value(self) -> Any:
        return self.value if self.new is None else self.new


@dataclass(frozen=True)
class Table:
    target: str  # the owner's row that update and delete cases aim at
    columns: dict[str, Col]
    insert: dict[str, Any] = field(default_factory=dict)  # a valid owner insert; {}: none allowed
    delete: bool = False  # may the owner delete the target row
    # What the owner reads: every column (`select=*` works), only named columns (some stay
    # unreadable: the README lists the rest), or nothing.
    read: Literal["all", "named", "none"] = "all"


TABLES: dict[str, Table] = {
    "projects": Table(
        target="project_spare",
        insert={"owner_id": Ref("owner"), "name": "new project"},
        delete=True,
        columns={
            "id": Col("00000000-0000-4000-8000-000000000001"),
            "owner_id": Col(Ref("stranger"), insert=True, new=Ref("owner")),
            "name": Col("renamed", insert=True, update=True),
            "environment": Col("staging", insert=True, update=True),
            "status": Col("suspended"),
            "rate_limit": Col(1_000_000),
            "request_cap": Col(1_000_000_000),
            "created_at": Col(PAST),
            "updated_at": Col(PAST),
        },
    ),
    "api_keys": Table(
        target="key",
        delete=True,
        read="named",  # not key_hash
        columns={
            "id": Col("00000000-0000-4000-8000-000000000002"),
            "project_id": Col(Ref("project_spare")),
            "name": Col("renamed", update=True),
            "kind": Col("pk"),
            "environment": Col("prod"),
            "prefix": Col("nm_live_sk_"),
            "last_four": Col("abcd"),
            "key_hash": Col(HASH),
            "status": Col(
                "revoked",
                update=True,
                writes=(Write("update", "active", target="key_revoked", sqlstate="PE004"),),
            ),
            "expires_at": Col(
                SOON,
                update=True,
                writes=(
                    Write("update", None, sqlstate="PE004"),
                    Write("update", LATER, sqlstate="PE004"),
                    Write("update", SOON, target="key_never_expires"),
                ),
            ),
            "revoked_at": Col(PAST),
            "last_used_at": Col(PAST),
            "created_at": Col(PAST),
        },
    ),
    "usage_counters": Table(
        target="usage",
        columns={
            "project_id": Col(Ref("project_spare")),
            "window_start": Col(PAST),
            "requests": Col(0),
            "request_cap": Col(1_000_000_000),
            "handled_at": Col(PAST),
            "updated_at": Col(PAST),
        },
    ),
    "suspensions": Table(
        target="suspension",
        columns={
            "id": Col("00000000-0000-4000-8000-000000000003"),
            "project_id": Col(Ref("project_spare")),
            "reason": Col("none"),
            "requests": Col(0),
            "request_cap": Col(1_000_000_000),
            "window_start": Col(PAST),
            "suspended_at": Col(PAST),
            "lifted_at": Col(PAST),
            "lifted_by": Col("owner"),
            "lift_reason": Col("self-service"),
        },
    ),
    "events": Table(
        target="event",
        insert={"project_id": Ref("project"), "type": "webhook.test"},
        columns={
            "id": Col("00000000-0000-4000-8000-000000000004"),
            "project_id": Col(Ref("project_spare"), insert=True, new=Ref("project")),
            "type": Col(
                "project.suspended",
                insert=True,
                new="webhook.test",
                writes=(Write("insert", "project.unsuspended", sqlstate="42501"),),
            ),
            "payload": Col({"forged": True}, insert=True),
            "created_at": Col(PAST),
        },
    ),
    "webhook_endpoints": Table(
        target="endpoint",
        insert={
            "project_id": Ref("project"),
            "url": "https://example.com/new",
            "secret": "whsec_bmV3",
        },
        delete=True,
        read="named",  # not secret
        columns={
            "id": Col("00000000-0000-4000-8000-000000000005"),
            "project_id": Col(Ref("project_spare"), insert=True, new=Ref("project")),
            "url": Col(
                "https://example.com/moved",
                insert=True,
                update=True,
                # What the console's parser stores passes; what it refuses is refused here too
                # (a check constraint), for writers that reach the table directly.
                writes=(
                    Write("insert", "https://hooks.example.com:65535/in"),
                    Write("insert", "https://[2001:db8::10]:8443/in?x=1"),
                    Write("update", "https://xn--bcher-kva.example/in"),
                    Write("insert", "https://user:pw@example.com/in", sqlstate="23514"),
                    Write("update", "https://example.com/a b", sqlstate="23514"),
                    Write("update", "https://example.com/in#top", sqlstate="23514"),
                    Write("update", "ftp://example.com/in", sqlstate="23514"),
                    Write("update", "https:///in", sqlstate="23514"),
                ),
            ),
            "description": Col("described", insert=True, update=True),
            "event_types": Col(["webhook.test"], insert=True, update=True),
            "enabled": Col(
                False,
                update=True,
                writes=(
                    Write("update", True, target="endpoint_by_owner"),
                    Write("update", True, target="endpoint_by_receiver"),
                    Write("update", True, target="endpoint_by_operator", sqlstate="PE006"),
                ),
            ),
            "disabled_reason": Col(
                "mine",
                update=True,
                target="endpoint_by_owner",
                writes=(
                    Write("update", "mine", target="endpoint", sqlstate="23514"),  # enabled
                    Write("update", "mine", target="endpoint_by_receiver"),
                    Write("update", "mine", target="endpoint_by_operator", sqlstate="PE006"),
                ),
            ),
            "disabled_by": Col("receiver"),
            "secret": Col("whsec_c3RvbGVu", insert=True),
            "name": Col(
                "renamed",
                insert=True,
                update=True,
                writes=(
                    Write("update", "Not a slug", sqlstate="23514"),
                    # Unique within the project: endpoint_by_owner's name, derived from its URL.
                    Write("update", "example-com-endpoint-by-owner", sqlstate="23505"),
                ),
            ),
            "created_at": Col(PAST),
            "updated_at": Col(PAST),
        },
    ),
    "apps": Table(
        target="app",
        insert={"owner_id": Ref("owner"), "name": "new app"},
        delete=True,
        columns={
            "id": Col("00000000-0000-4000-8000-000000000007"),
            "owner_id": Col(
                Ref("stranger"),
                insert=True,
                new=Ref("owner"),
                writes=(Write("insert", Ref("stranger"), sqlstate="42501"),),
            ),
            "name": Col("renamed", insert=True, update=True),
            "created_at": Col(PAST),
        },
    ),
    "app_environments": Table(
        target="app_link",
        # project_spare (dev) into the empty app_spare.
        insert={
            "app_id": Ref("app_spare"),
            "environment": "dev",
            "project_id": Ref("project_spare"),
        },
        delete=True,
        columns={
            "app_id": Col(
                Ref("app_spare"),
                insert=True,
                writes=(
                    Write("insert", Ref("stranger_app"), sqlstate="42501"),
                    Write("insert", Ref("app"), sqlstate="PE008"),  # its dev slot is filled
                ),
            ),
            "environment": Col(
                "prod",
                insert=True,
                new="dev",
                writes=(Write("insert", "prod", sqlstate="PE008"),),  # project_spare is dev
            ),
            "project_id": Col(
                Ref("project_spare"),
                insert=True,
                writes=(
                    Write("insert", Ref("stranger_project"), sqlstate="42501"),
                    Write("insert", Ref("project"), sqlstate="PE008"),  # already in app
                ),
            ),
            "linked_at": Col(PAST),
        },
    ),
    "webhook_deliveries": Table(
        target="delivery",
        columns={
            "id": Col("00000000-0000-4000-8000-000000000006"),
            "event_id": Col(Ref("event")),
            "endpoint_id": Col(Ref("endpoint_by_operator")),
            "project_id": Col(Ref("project_spare")),
            "environment": Col("prod"),
            "status": Col("pending"),
            "attempts": Col(0),
            "retry_base": Col(0),
            "next_attempt_at": Col(PAST),
            "lease_expires_at": Col(PAST),
            "leased_by": Col("me"),
            "last_status_code": Col(200),
            "last_error": Col("none"),
            "created_at": Col(PAST),
            "completed_at": Col(PAST),
        },
    ),
    "webhook_attempts": Table(
        target="attempt",
        columns={
            "id": Col(424242, refusal="428C9"),  # generated always: refused before privileges
            "delivery_id": Col(Ref("delivery")),
            "attempt_number": Col(99),
            "started_at": Col(PAST),
            "duration_ms": Col(1),
            "status_code": Col(200),
            "response_body": Col("ok"),
            "error": Col("none"),
        },
    ),
    "worker_heartbeats": Table(
        target="heartbeat",
        read="none",
        columns={
            "worker_id": Col("forged"),
            "hostname": Col("forged"),
            "pid": Col(1),
            "started_at": Col(PAST),
            "beat_at": Col(LATER),
            "tasks": Col({"forged": True}),
        },
    ),
    # Written by triggers only; owners read their projects' entries and write nothing.
    "audit_log": Table(
        target="audit_entry",
        columns={
            "id": Col(424242, refusal="428C9"),  # generated always: refused before privileges
            "at": Col(PAST),
            "project_id": Col(Ref("project_spare")),
            "project_name": Col("forged"),
            "project_environment": Col("prod"),
            "owner_id": Col(Ref("stranger")),
            "actor_type": Col("platform"),
            "actor_id": Col(Ref("stranger")),
            "action": Col("project.created"),
            "target_type": Col("project"),
            "target_id": Col(Ref("project_spare")),
            "changes": Col({"forged": True}),
            "correlation_id": Col("00000000-0000-4000-8000-000000000007"),
            "client_address": Col("192.0.2.1"),
            "user_agent": Col("forged"),
        },
    ),
}

# Functions in `public` (PostgREST's /rpc, pg_graphql): who may execute each. Any other function
# there, or another grant, fails the suite.
FUNCTIONS: dict[str, set[str]] = {
    "issue_api_key": {"authenticated"},
    "redeliver_webhook": {"authenticated"},
    "promote_project_limits": {"authenticated"},
}
