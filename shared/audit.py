"""The audit trail: entries written by Postgres (the audit_log migration), read here.

Owners read their projects' entries under row level security (`as_user`); operators read every
entry (`as_service`, `parity audit`); the worker's retention job deletes old ones. Triggers write
the entries of changed rows, whoever changes them; the one entry not about a row,
`promotion.applied`, is written by `private.record_promotion`, which only the platform may call
(:func:`record_promotion`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final, Literal
from uuid import UUID

from psycopg import sql
from psycopg.types.json import Jsonb

from shared.db import Connection, as_service_within
from shared.environment import Environment
from shared.errors import InvalidInput, NotFound

ActorType = Literal["user", "platform", "worker", "operator"]

ACTIONS: Final[dict[str, str]] = {
    "project.created": "created the project",
    "project.renamed": "renamed the project",
    "project.environment_changed": "changed the project's environment",
    "project.limits_changed": "changed the project's limits",
    "project.suspended": "suspended the project",
    "project.unsuspended": "lifted the project's suspension",
    "project.deleted": "deleted the project",
    "api_key.issued": "issued an API key",
    "api_key.revoked": "revoked an API key",
    "api_key.expiry_changed": "changed an API key's expiry",
    "api_key.renamed": "renamed an API key",
    "api_key.deleted": "deleted an API key",
    "webhook_endpoint.created": "created a webhook endpoint",
    "webhook_endpoint.updated": "updated a webhook endpoint",
    "webhook_endpoint.disabled": "disabled a webhook endpoint",
    "webhook_endpoint.enabled": "enabled a webhook endpoint",
    "webhook_endpoint.deleted": "deleted a webhook endpoint",
    "webhook.redelivered": "redelivered a webhook",
    "promotion.applied": "promoted changes into the project",
}
"""Every action written, in words (the console's Activity card)."""

MAX_PAGE: Final = 100
"""Most entries one request reads: each page is one index range scan of at most this many rows."""

MAX_ENTRY_ID: Final = 2**63 - 1
"""Entry ids are Postgres bigints."""

RETENTION_DEFAULT: Final = timedelta(days=400)

_COLUMNS = (
    "id, at, project_id, project_name, project_environment, owner_id, actor_type, actor_id,"
    " action, target_type, target_id, changes, correlation_id, client_address, user_agent"
)


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    at: datetime
    project_id: UUID
    project_name: str
    project_environment: Environment
    owner_id: UUID
    actor_type: ActorType
    actor_id: UUID | None
    action: str
    target_type: str
    target_id: UUID
    changes: dict[str, Any]
    correlation_id: UUID
    client_address: str | None
    user_agent: str | None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> AuditEntry:
        return cls(**{**row, "project_environment": Environment(row["project_environment"])})

    @property
    def description(self) -> str:
        """The action in words."""
        return ACTIONS.get(self.action, self.action)

    def as_json(self) -> dict[str, Any]:
        """The entry as JSON values (ids and times as strings)."""
        return {
            "id": self.id,
            "at": self.at.isoformat(),
            "project_id": str(self.project_id),
            "project_name": self.project_name,
            "project_environment": self.project_environment.value,
            "owner_id": str(self.owner_id),
            "actor_type": self.actor_type,
            "actor_id": None if self.actor_id is None else str(self.actor_id),
            "action": self.action,
            "target_type": self.target_type,
            "target_id": str(self.target_id),
            "changes": self.changes,
            "correlation_id": str(self.correlation_id),
            "client_address": self.client_address,
            "user_agent": self.user_agent,
        }

    def as_json_line(self) -> str:
        return json.dumps(self.as_json(), sort_keys=True)


@dataclass(frozen=True, slots=True)
class Page:
    entries: list[AuditEntry]
    next_before: int | None
    """Pass as `before` for the next (older) page; None when this page is the last."""


def check_action(action: str | None) -> str | None:
    if action is not None and action not in ACTIONS:
        raise InvalidInput(
            f"unknown action {action!r}", hint="One of: " + ", ".join(sorted(ACTIONS)) + "."
        )
    return action


async def list_entries(
    conn: Connection,
    project_id: UUID,
    *,
    action: str | None = None,
    before: int | None = None,
    limit: int = 50,
    reader: UUID | None = None,
) -> Page:
    """A page of the project's entries, newest first: those older than entry `before` (a cursor
    from the previous page), optionally of one action. Under RLS, another owner's project has
    none.

    `reader`: the signed-in user reading as themselves. RLS already limits them to their own
    entries, but through `auth.uid()`, whose value the planner does not know: it guessed an
    owner's entries few, took them all and sorted them (13.6 ms for the first page of a project
    with 60,000 entries, growing with the trail). Named here too, the planner walks the project's
    index in order instead (0.1 ms)."""
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidInput(f"limit must be between 1 and {MAX_PAGE}")
    conditions = [sql.SQL("project_id = %(project)s")]
    params: dict[str, Any] = {"project": project_id, "limit": limit + 1}
    if reader is not None:
        conditions.append(sql.SQL("owner_id = %(reader)s"))
        params["reader"] = reader
    if check_action(action) is not None:
        conditions.append(sql.SQL("action = %(action)s"))
        params["action"] = action
    if before is not None:
        cur = await conn.execute(
            "select at from public.audit_log where id = %s and project_id = %s",
            (before, project_id),
        )
        row = await cur.fetchone()
        if row is None:
            raise NotFound(
                f"no audit entry {before} in this project's trail",
                hint="Pass `next_before` from the previous page as `before`.",
            )
        conditions.append(sql.SQL("(at, id) < (%(before_at)s, %(before)s)"))
        params |= {"before_at": row["at"], "before": before}
    query = sql.SQL(
        "select {} from public.audit_log where {} order by at desc, id desc limit %(limit)s"
    ).format(sql.SQL(_COLUMNS), sql.SQL(" and ").join(conditions))
    cur = await conn.execute(query, params)
    entries = [AuditEntry.from_row(row) for row in await cur.fetchall()]
    more = len(entries) > limit
    entries = entries[:limit]
    return Page(entries, entries[-1].id if more else None)


async def search(
    conn: Connection,
    *,
    project_id: UUID | None = None,
    action: str | None = None,
    since: datetime | None = None,
    limit: int = 100,
) -> list[AuditEntry]:
    """Entries across projects for operators (as the service), newest first, at most `limit`.

    One project's entries are ordered by time (its index, `(project_id, at desc, id desc)`).
    Across projects they are ordered by id, the order they were written in, which the primary key
    gives without reading the rest: ordered by time, Postgres read the whole trail and sorted it
    for the top N (68 ms at 300,000 entries, growing with the 400 days kept), and an index on time
    would let a project's page walk every other project's newer entries when the planner guesses
    wrong. The two orders differ only where transactions overlap (`at` is when a transaction
    began, the id when it wrote the entry)."""
    if limit < 1:
        raise InvalidInput("limit must be positive")
    conditions: list[sql.Composable] = [sql.SQL("true")]
    params: dict[str, Any] = {"limit": limit}
    if project_id is not None:
        conditions.append(sql.SQL("project_id = %(project)s"))
        params["project"] = project_id
    if check_action(action) is not None:
        conditions.append(sql.SQL("action = %(action)s"))
        params["action"] = action
    if since is not None:
        conditions.append(sql.SQL("at >= %(since)s"))
        params["since"] = since
    order = sql.SQL("at desc, id desc" if project_id is not None else "id desc")
    query = sql.SQL("select {} from public.audit_log where {} order by {} limit %(limit)s").format(
        sql.SQL(_COLUMNS), sql.SQL(" and ").join(conditions), order
    )
    cur = await conn.execute(query, params)
    return [AuditEntry.from_row(row) for row in await cur.fetchall()]


async def purge(conn: Connection, *, retention: timedelta, batch_size: int = 10_000) -> int:
    """Delete up to `batch_size` entries older than `retention` (the retention job, as the
    service); how many were deleted."""
    cur = await conn.execute(
        "select private.purge_audit_log(%s, %s) as purged", (retention, batch_size)
    )
    row = await cur.fetchone()
    assert row is not None
    return int(row["purged"])


async def record_promotion(
    conn: Connection,
    app_id: UUID,
    source_project_id: UUID,
    target_project_id: UUID,
    plan: list[dict[str, Any]],
    fingerprint: str,
) -> int:
    """Write the `promotion.applied` entry (the plan applied, never a secret) in the caller's
    transaction, the promotion's: it commits or rolls back with the changes. In a user's
    transaction the call alone runs as the platform (only service_role may execute
    `private.record_promotion`); the entry still names the user, from the claims. Its id."""
    async with as_service_within(conn):
        cur = await conn.execute(
            "select private.record_promotion(%s, %s, %s, %s, %s) as id",
            (app_id, source_project_id, target_project_id, Jsonb(plan), fingerprint),
        )
        row = await cur.fetchone()
    assert row is not None
    return int(row["id"])
