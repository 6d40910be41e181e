"""Projects: the queries that read and write them, and the row model."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from shared.db import Connection
from shared.environment import Environment
from shared.errors import InvalidInput, NotFound

ProjectStatus = Literal["active", "suspended"]

_COLUMNS = (
    "id, owner_id, name, environment, status, rate_limit, request_cap, created_at, updated_at"
)


@dataclass(frozen=True, slots=True)
class Project:
    id: UUID
    owner_id: UUID
    name: str
    environment: Environment
    status: ProjectStatus
    rate_limit: int | None
    """Requests per window before the environment multiplier; None: the platform default."""
    request_cap: int | None
    """Hard cap per cap window; None: the platform default."""
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Project:
        return cls(**{**row, "environment": Environment(row["environment"])})


def _clean_name(name: str) -> str:
    cleaned = name.strip()
    if not 1 <= len(cleaned) <= 100:
        raise InvalidInput("project name must be 1 to 100 characters")
    return cleaned


async def create_project(
    conn: Connection,
    *,
    name: str,
    environment: Environment | str = Environment.PROD,
    owner_id: UUID | None = None,
) -> Project:
    """A new project. As a signed-in user, `owner_id` defaults to that user."""
    env = Environment.parse(environment)
    cur = await conn.execute(
        f"insert into public.projects (name, environment, owner_id)"
        f" values (%s, %s, coalesce(%s, auth.uid())) returning {_COLUMNS}",
        (_clean_name(name), env.value, owner_id),
    )
    row = await cur.fetchone()
    assert row is not None
    return Project.from_row(row)


async def get_project(conn: Connection, project_id: UUID) -> Project:
    """The project, or :class:`NotFound` (also when row level security hides it)."""
    cur = await conn.execute(f"select {_COLUMNS} from public.projects where id = %s", (project_id,))
    row = await cur.fetchone()
    if row is None:
        raise NotFound(f"project {project_id} not found")
    return Project.from_row(row)


async def list_projects(conn: Connection) -> list[Project]:
    """Every project the connection's role may see, newest first."""
    cur = await conn.execute(f"select {_COLUMNS} from public.projects order by created_at desc, id")
    return [Project.from_row(row) for row in await cur.fetchall()]


async def change_environment(
    conn: Connection, project_id: UUID, environment: Environment | str
) -> Project:
    """Move a project to another environment; refused while it has active keys."""
    env = Environment.parse(environment)
    cur = await conn.execute(
        f"update public.projects set environment = %s where id = %s returning {_COLUMNS}",
        (env.value, project_id),
    )
    row = await cur.fetchone()
    if row is None:
        raise NotFound(f"project {project_id} not found")
    return Project.from_row(row)


async def rename_project(conn: Connection, project_id: UUID, name: str) -> Project:
    cur = await conn.execute(
        f"update public.projects set name = %s where id = %s returning {_COLUMNS}",
        (_clean_name(name), project_id),
    )
    row = await cur.fetchone()
    if row is None:
        raise NotFound(f"project {project_id} not found")
    return Project.from_row(row)


async def delete_project(conn: Connection, project_id: UUID) -> None:
    """Delete a project and, by cascade, its keys, endpoints, events and deliveries."""
    cur = await conn.execute(
        "delete from public.projects where id = %s returning id", (project_id,)
    )
    if await cur.fetchone() is None:
        raise NotFound(f"project {project_id} not found")
