"""The demo `make run` seeds: a demo user, one project per environment and a secret key for each.

Run again, it reuses the user and the projects, revokes the demo keys it issued before and issues
new ones, so the tokens it returns are always the only working demo keys (tokens are stored only
as hashes: an earlier token cannot be shown again, so the caller says how many were revoked).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final
from uuid import UUID

from shared import apikeys, projects, users
from shared.db import Database
from shared.environment import Environment
from shared.keys import KeyKind

DEMO_EMAIL: Final = "demo@example.com"
DEMO_KEY_NAME: Final = "demo"


@dataclass(frozen=True, slots=True)
class DemoKey:
    """A seeded project and its key's token, to print once (with a curl that uses it)."""

    project_id: UUID
    project_name: str
    environment: Environment
    token: str

    def __repr__(self) -> str:
        return f"DemoKey({self.project_name!r}, {self.environment.value}, token='<redacted>')"

    def curl(self, gateway_url: str, path: str = "/hello") -> str:
        return f"curl -s -H 'Authorization: Bearer {self.token}' {gateway_url.rstrip('/')}{path}"


async def seed_demo(db: Database) -> list[DemoKey]:
    """Seed (or refresh) the demo; return one fresh secret key per environment."""
    keys, _ = await seed_demo_counting(db)
    return keys


async def seed_demo_counting(db: Database) -> tuple[list[DemoKey], int]:
    """Seed (or refresh) the demo; return one fresh secret key per environment and how many
    earlier demo keys were revoked."""
    seeded: list[DemoKey] = []
    revoked = 0
    async with db.as_service() as conn:
        # The console's local sign-in lets its first sign-in set the demo user's password.
        owner = (await users.ensure_user(conn, DEMO_EMAIL)).id
        existing = {
            (project.owner_id, project.name): project
            for project in await projects.list_projects(conn)
        }
        for environment in Environment:
            name = f"Demo {environment.display_name}"
            project = existing.get((owner, name)) or await projects.create_project(
                conn, name=name, environment=environment, owner_id=owner
            )
            for key in await apikeys.list_keys(conn, project.id):
                if key.name == DEMO_KEY_NAME and key.status == "active":
                    await apikeys.revoke_key(conn, key.id)
                    revoked += 1
            issued = await apikeys.create_key(conn, project.id, KeyKind.SECRET, name=DEMO_KEY_NAME)
            seeded.append(DemoKey(project.id, project.name, project.environment, issued.token))
    return seeded, revoked
