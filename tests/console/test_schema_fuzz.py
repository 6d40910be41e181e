"""Robustness: a property-based run over the console's OpenAPI schema (schemathesis) finds no 5xx
on any route, signed in as a real user, against the console served on loopback.

Generated path ids are mostly replaced by the user's real project, key, endpoint and delivery so
that fuzzed bodies reach the database and not just a 404.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok

from console.auth import Authenticator
from console.settings import ConsoleSettings
from shared.users import User as AuthUser
from tests.console.conftest import create_user_sync

DEFAULT_EXAMPLES = "300"


@dataclass(frozen=True)
class Seeded:
    base_url: str
    headers: dict[str, str]
    ids: dict[str, str]


@pytest.fixture
def seeded(
    served_console: str, database_url: str, console_settings: ConsoleSettings
) -> Iterator[Seeded]:
    user = create_user_sync(database_url, "fuzz@example.com")
    token = Authenticator(console_settings).issue(AuthUser(id=user.id, email=user.email))
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=served_console, headers=headers) as http:
        project = http.post("/api/v1/projects", json={"name": "fuzz", "environment": "dev"})
        pid = project.json()["id"]
        key = http.post(f"/api/v1/projects/{pid}/keys", json={}).json()["key"]
        endpoint = http.post(
            f"/api/v1/projects/{pid}/webhook-endpoints", json={"url": "https://example.com/h"}
        ).json()["endpoint"]
        http.post(f"/api/v1/projects/{pid}/test-event", json={})
        [delivery] = http.get(f"/api/v1/projects/{pid}/deliveries").json()
    yield Seeded(
        base_url=served_console,
        headers=headers,
        ids={
            "project_id": pid,
            "key_id": key["id"],
            "endpoint_id": endpoint["id"],
            "delivery_id": delivery["id"],
        },
    )


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_route_answers_5xx(seeded: Seeded, mode: GenerationMode) -> None:
    schema = schemathesis.openapi.from_url(f"{seeded.base_url}/openapi.json")
    results = list(schema.get_all_operations())
    operations = [result.ok() for result in results if isinstance(result, Ok)]
    assert len(operations) == len(results), "some operations have an invalid schema"
    assert len(operations) >= 20, "the schema lost routes"
    seen: set[str] = set()
    calls = [0]

    @given(case=schema.as_strategy(generation_mode=mode))
    @settings(
        max_examples=int(os.environ.get("PARITY_FUZZ_EXAMPLES", DEFAULT_EXAMPLES)),
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: schemathesis.Case[Any]) -> None:
        seen.add(case.operation.label)
        calls[0] += 1
        # Mostly the user's real rows, so fuzzed bodies reach the database; every fourth call the
        # generated id, since unknown or malformed ones must not break anything either. Deletes
        # keep generated ids so that the seeded rows live through the run.
        if case.path_parameters and case.method != "DELETE" and calls[0] % 4:
            for name, real in seeded.ids.items():
                if name in case.path_parameters:
                    case.path_parameters[name] = real
        case.call_and_validate(
            base_url=seeded.base_url, headers=seeded.headers, checks=[not_a_server_error]
        )

    run()
    assert len(seen) >= len(operations) // 2, f"only {sorted(seen)} were exercised"
