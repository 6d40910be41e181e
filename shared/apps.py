"""Apps: one owner's prod, staging and dev projects linked as the environments of one application.

Postgres holds the rules (supabase/migrations/*_apps.sql): only your own projects, only into your
own apps, one project per environment, and a project fills only the slot of its own environment
(SQLSTATE PE008 otherwise). This module reads and writes the rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from shared import projects
from shared.db import Connection
from shared.environment import Environment
from shared.errors import InvalidInput, NotFound
from shared.projects import Project

# The app and its links in one row: `links` maps environment to project id.
_SELECT = """
select a.id, a.owner_id, a.name, a.created_at,
       coalesce((select jsonb_object_agg(l.environment, l.project_id)
                   from public.app_environments as l
                  where l.app_id = a.id), '{}'::jsonb) as links
  from public.apps as a
"""


@dataclass(frozen=True, slots=True)
class App:
    id: UUID
    owner_id: UUID
    name: str
    created_at: datetime
    environments: dict[Environment, UUID | None]
    """Every environment, with the project linked there or None."""

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> App:
        links = row["links"]
        return cls(
            id=row["id"],
            owner_id=row["owner_id"],
            name=row["name"],
            created_at=row["created_at"],
            environments={
                env: (UUID(links[env.value]) if env.value in links else None) for env in Environment
            },
        )


def _clean_name(name: str) -> str:
    cleaned = name.strip()
    if not 1 <= len(cleaned) <= 100:
        raise InvalidInput("app name must be 1 to 100 characters")
    return cleaned


def project_name(app_name: str, environment: Environment) -> str:
    """The name of the project an app creates for `environment`, e.g. ``shop-prod``."""
    return f"{app_name[: 100 - 8]}-{environment.value}"


async def create_app(
    conn: Connection, name: str, *, create_projects: bool = False, owner_id: UUID | None = None
) -> App:
    """A new app of the signed-in user (or `owner_id`); with `create_projects`, one new project
    per environment (``<name>-dev``, ``<name>-staging``, ``<name>-prod``) linked into it."""
    cleaned = _clean_name(name)
    cur = await conn.execute(
        "insert into public.apps (name, owner_id) values (%s, coalesce(%s, auth.uid()))"
        " returning id",
        (cleaned, owner_id),
    )
    row = await cur.fetchone()
    assert row is not None
    app_id: UUID = row["id"]
    if create_projects:
        for env in Environment:
            project = await projects.create_project(
                conn, name=project_name(cleaned, env), environment=env, owner_id=owner_id
            )
            await link(conn, app_id, env, project.id)
    return await get_app(conn, app_id)


async def get_app(conn: Connection, app_id: UUID) -> App:
    """The app, or :class:`NotFound` (also when row level security hides it)."""
    cur = await conn.execute(_SELECT + " where a.id = %s", (app_id,))
    row = await cur.fetchone()
    if row is None:
        raise NotFound(f"app {app_id} not found")
    return App.from_row(row)


async def list_apps(conn: Connection) -> list[App]:
    """Every app the connection's role may see, newest first."""
    cur = await conn.execute(_SELECT + " order by a.created_at desc, a.id")
    return [App.from_row(row) for row in await cur.fetchall()]


async def app_of_project(conn: Connection, project_id: UUID) -> App | None:
    """The app `project_id` is an environment of, if any (and visible to the caller)."""
    cur = await conn.execute(
        _SELECT + " where a.id = (select l.app_id from public.app_environments as l"
        " where l.project_id = %s)",
        (project_id,),
    )
    row = await cur.fetchone()
    return None if row is None else App.from_row(row)


async def find_apps(conn: Connection, id_or_name: str) -> list[App]:
    """Apps whose id or name is `id_or_name` (for operators, who name apps on a command line)."""
    try:
        app_id: UUID | None = UUID(id_or_name)
    except ValueError:
        app_id = None
    cur = await conn.execute(
        _SELECT + " where a.id = %s or a.name = %s order by a.created_at, a.id",
        (app_id, id_or_name),
    )
    return [App.from_row(row) for row in await cur.fetchall()]


async def link(conn: Connection, app_id: UUID, environment: Environment, project_id: UUID) -> App:
    """Link `project_id` as the app's `environment`. Linking the project already there changes
    nothing; a project of another environment, a filled slot or a project already in another app
    is refused by the database."""
    await get_app(conn, app_id)
    await projects.get_project(conn, project_id)  # another user's project: NotFound, as missing
    await conn.execute(
        "insert into public.app_environments (app_id, environment, project_id)"
        " values (%s, %s, %s)"
        " on conflict (app_id, environment) do nothing",
        (app_id, environment.value, project_id),
    )
    return await get_app(conn, app_id)


async def unlink(conn: Connection, app_id: UUID, environment: Environment) -> App:
    """Empty the app's `environment` slot (the project itself stays)."""
    await get_app(conn, app_id)
    await conn.execute(
        "delete from public.app_environments where app_id = %s and environment = %s",
        (app_id, environment.value),
    )
    return await get_app(conn, app_id)


async def delete_app(conn: Connection, app_id: UUID) -> None:
    """Delete an app; its projects stay, unlinked."""
    cur = await conn.execute("delete from public.apps where id = %s returning id", (app_id,))
    if await cur.fetchone() is None:
        raise NotFound(f"app {app_id} not found")


async def linked_projects(conn: Connection, app: App) -> dict[Environment, Project]:
    """The projects linked into `app`, by environment."""
    found: dict[Environment, Project] = {}
    for env, project_id in app.environments.items():
        if project_id is not None:
            found[env] = await projects.get_project(conn, project_id)
    return found


async def unlinked_projects(conn: Connection) -> dict[Environment, list[Project]]:
    """The caller's projects in no app, by environment, by name: what may be linked."""
    cur = await conn.execute("select project_id from public.app_environments")
    linked = {row["project_id"] for row in await cur.fetchall()}
    found: dict[Environment, list[Project]] = {env: [] for env in Environment}
    for project in sorted(await projects.list_projects(conn), key=lambda p: p.name):
        if project.id not in linked:
            found[project.environment].append(project)
    return found
