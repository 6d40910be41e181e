"""API keys: issue, list, revoke and rotate. The token is returned once, at issue, and only its
hash is stored."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal
from uuid import UUID

from psycopg import AsyncConnection, sql

from shared.db import Connection
from shared.environment import Environment
from shared.errors import Conflict, InvalidInput, NotFound
from shared.keys import KeyKind, display_form
from shared.projects import ProjectStatus, get_project

KeyStatus = Literal["active", "revoked"]

INVALIDATION_CHANNEL: Final = "gateway_invalidate"
"""Postgres notification channel: payloads `key:<id>` and `project:<id>` name what changed
(triggers in the gateway_invalidate migration)."""

# key_hash is never selected: the authenticated role cannot read it, and nothing else needs it back.
_COLUMNS = (
    "id, project_id, name, kind, environment, prefix, last_four, status,"
    " created_at, expires_at, revoked_at, last_used_at"
)


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: UUID
    project_id: UUID
    name: str
    kind: KeyKind
    environment: Environment
    prefix: str
    last_four: str
    status: KeyStatus
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> ApiKey:
        return cls(
            **{**row, "kind": KeyKind(row["kind"]), "environment": Environment(row["environment"])}
        )

    @property
    def display(self) -> str:
        return display_form(self.prefix, self.last_four)


@dataclass(frozen=True, slots=True)
class IssuedKey:
    """A key just issued. `token` exists only here: show it once, never store or log it."""

    key: ApiKey
    token: str

    def __repr__(self) -> str:
        return f"IssuedKey(key={self.key!r}, token='<redacted>')"


def _clean_name(name: str) -> str:
    cleaned = name.strip()
    if len(cleaned) > 100:
        raise InvalidInput("key name must be at most 100 characters")
    return cleaned


async def create_key(
    conn: Connection,
    project_id: UUID,
    kind: KeyKind | str,
    *,
    name: str = "",
    expires_at: datetime | None = None,
) -> IssuedKey:
    """Issue a key for `project_id` through `public.issue_api_key`, the only way a key row is
    written: the database generates the token, checks that the caller owns the project (the
    platform may issue anywhere) and stores a prefix and environment that agree with it."""
    try:
        key_kind = KeyKind(kind)
    except ValueError:
        raise InvalidInput(f"invalid key kind {kind!r}: expected 'pk' or 'sk'") from None
    if expires_at is not None and expires_at <= datetime.now(UTC):
        raise InvalidInput("expiry must be in the future: a key that never works is a mistake")
    project = await get_project(conn, project_id)  # NotFound for another owner's project
    cur = await conn.execute(
        "select key_id, token from public.issue_api_key(%s, %s, %s, %s)",
        (project.id, key_kind.value, _clean_name(name), expires_at),
    )
    row = await cur.fetchone()
    assert row is not None
    return IssuedKey(key=await get_key(conn, row["key_id"]), token=row["token"])


async def list_keys(conn: Connection, project_id: UUID) -> list[ApiKey]:
    cur = await conn.execute(
        f"select {_COLUMNS} from public.api_keys where project_id = %s"
        " order by created_at desc, id",
        (project_id,),
    )
    return [ApiKey.from_row(row) for row in await cur.fetchall()]


async def get_key(conn: Connection, key_id: UUID, *, for_update: bool = False) -> ApiKey:
    """The key; with `for_update`, its row stays locked until the transaction ends."""
    lock = " for update" if for_update else ""
    cur = await conn.execute(
        f"select {_COLUMNS} from public.api_keys where id = %s{lock}", (key_id,)
    )
    row = await cur.fetchone()
    if row is None:
        raise NotFound(f"API key {key_id} not found")
    return ApiKey.from_row(row)


async def revoke_key(conn: Connection, key_id: UUID) -> ApiKey:
    """Revoke a key at once; the database records when. Revoking a revoked key changes nothing,
    and revocation is final."""
    cur = await conn.execute(
        f"update public.api_keys set status = 'revoked' where id = %s returning {_COLUMNS}",
        (key_id,),
    )
    row = await cur.fetchone()
    if row is None:
        raise NotFound(f"API key {key_id} not found")
    return ApiKey.from_row(row)


async def rotate_key(conn: Connection, key_id: UUID, *, grace: timedelta) -> IssuedKey:
    """Issue a replacement for an active key. The old key keeps working for `grace` (zero revokes
    it at once), then expires."""
    if grace < timedelta(0):
        raise InvalidInput("grace period must not be negative")
    # Locked, so that two concurrent rotations cannot both pass the check below.
    old = await get_key(conn, key_id, for_update=True)
    if old.status != "active":
        raise Conflict(f"API key {key_id} is revoked: issue a new key instead")
    if old.expires_at is not None and old.expires_at <= datetime.now(UTC):
        # Its replacement would inherit an expiry already past.
        raise Conflict(f"API key {key_id} has expired: issue a new key instead")
    new = await create_key(conn, old.project_id, old.kind, name=old.name, expires_at=old.expires_at)
    if grace == timedelta(0):
        await revoke_key(conn, key_id)
    else:
        await conn.execute(
            "update public.api_keys"
            " set expires_at = least(coalesce(expires_at, 'infinity'), now() + %s)"
            " where id = %s",
            (grace, key_id),
        )
    return new


@dataclass(frozen=True, slots=True)
class Credential:
    """What the gateway needs to decide on a request: the key's row joined with its project's.

    Both environments are kept so that the gateway can check that they still match at request
    time, whatever happened to the rows since the trigger checked them."""

    key_id: UUID
    project_id: UUID
    kind: KeyKind
    key_environment: Environment
    key_status: KeyStatus
    expires_at: datetime | None
    prefix: str
    last_four: str
    project_environment: Environment
    project_status: ProjectStatus
    rate_limit: int | None
    request_cap: int | None

    @property
    def display(self) -> str:
        return display_form(self.prefix, self.last_four)


async def listen_for_changes(conn: AsyncConnection[Any]) -> None:
    """Subscribe `conn` (autocommit, not pooled) to key and project change notifications."""
    await conn.execute(sql.SQL("listen {}").format(sql.Identifier(INVALIDATION_CHANNEL)))


async def find_credential(conn: Connection, key_hash: bytes) -> Credential | None:
    """The key whose token hashes to `key_hash`, with its project; None when there is none.
    Revoked and expired keys are returned too: the caller decides and says why."""
    cur = await conn.execute(
        "select k.id as key_id, k.project_id, k.kind, k.environment as key_environment,"
        " k.status as key_status, k.expires_at, k.prefix, k.last_four,"
        " p.environment as project_environment, p.status as project_status,"
        " p.rate_limit, p.request_cap"
        " from public.api_keys as k join public.projects as p on p.id = k.project_id"
        " where k.key_hash = %s",
        (key_hash,),
    )
    row = await cur.fetchone()
    if row is None:
        return None
    return Credential(
        **{
            **row,
            "kind": KeyKind(row["kind"]),
            "key_environment": Environment(row["key_environment"]),
            "project_environment": Environment(row["project_environment"]),
        }
    )


async def touch_last_used(conn: Connection, last_used: Mapping[UUID, datetime]) -> None:
    """Record when keys were last used, many keys in one statement (the gateway batches these
    rather than writing per request). A time never moves backwards."""
    if not last_used:
        return
    await conn.execute(
        "update public.api_keys as k"
        " set last_used_at = greatest(k.last_used_at, u.used_at)"
        " from unnest(%s::uuid[], %s::timestamptz[]) as u(id, used_at)"
        " where k.id = u.id",
        (list(last_used), list(last_used.values())),
    )
