"""API keys: issue, list, revoke and rotate. The token is returned once, at issue, and only its
hash is stored."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal
from uuid import UUID

from shared.db import Connection
from shared.environment import Environment
from shared.errors import InvalidInput, NotFound
from shared.keys import KeyKind, display_form, generate_token
from shared.projects import get_project

KeyStatus = Literal["active", "revoked"]

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
    """Issue a key for `project_id`; its prefix and environment come from the project's."""
    try:
        key_kind = KeyKind(kind)
    except ValueError:
        raise InvalidInput(f"invalid key kind {kind!r}: expected 'pk' or 'sk'") from None
    project = await get_project(conn, project_id)
    issued = generate_token(project.environment, key_kind)
    cur = await conn.execute(
        "insert into public.api_keys"
        " (project_id, name, kind, environment, prefix, last_four, key_hash, expires_at)"
        f" values (%s, %s, %s, %s, %s, %s, %s, %s) returning {_COLUMNS}",
        (
            project.id,
            _clean_name(name),
            key_kind.value,
            project.environment.value,
            issued.prefix,
            issued.last_four,
            issued.hash,
            expires_at,
        ),
    )
    row = await cur.fetchone()
    assert row is not None
    return IssuedKey(key=ApiKey.from_row(row), token=issued.token)


async def list_keys(conn: Connection, project_id: UUID) -> list[ApiKey]:
    cur = await conn.execute(
        f"select {_COLUMNS} from public.api_keys where project_id = %s"
        " order by created_at desc, id",
        (project_id,),
    )
    return [ApiKey.from_row(row) for row in await cur.fetchall()]


async def get_key(conn: Connection, key_id: UUID) -> ApiKey:
    cur = await conn.execute(f"select {_COLUMNS} from public.api_keys where id = %s", (key_id,))
    row = await cur.fetchone()
    if row is None:
        raise NotFound(f"API key {key_id} not found")
    return ApiKey.from_row(row)


async def revoke_key(conn: Connection, key_id: UUID) -> ApiKey:
    """Revoke a key at once. Revoking a revoked key changes nothing."""
    cur = await conn.execute(
        "update public.api_keys set status = 'revoked', revoked_at = coalesce(revoked_at, now())"
        f" where id = %s returning {_COLUMNS}",
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
    old = await get_key(conn, key_id)
    if old.status != "active":
        raise InvalidInput(f"API key {key_id} is revoked: issue a new key instead")
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
