"""The parity report between two environments of an app, and promotion forward.

Every difference is classed:

- ``policy``: the environments behave differently because `get_environment_config()` says so
  (each field of :class:`~shared.environment.EnvironmentConfig`); shown, never promoted;
- ``environment-specific``: declared to differ (:data:`ENVIRONMENT_SPECIFIC_ENDPOINT_FIELDS`, an
  endpoint's URL; its signing secret is never read, so never compared);
- ``drift``: everything else: an endpoint missing on one side, its promoted fields, the base rate
  limit and hard cap, and the key inventory (active keys per kind, never their contents).

A promotion applies the source's drift onto the next environment: it creates missing endpoints
(new secrets), updates the promoted fields and, when asked, the limits. A dry run returns the plan
and its fingerprint (a hash of the plan and of both sides' state); applying with that fingerprint
applies exactly that plan in the caller's one transaction, or raises :class:`StaleFingerprint`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Final, Literal
from uuid import UUID

from shared import apps, audit, webhooks
from shared.db import Connection
from shared.environment import Environment, EnvironmentConfig, get_environment_config
from shared.errors import ConfirmationRequired, Conflict, InvalidInput, StaleFingerprint
from shared.webhook_urls import parse_webhook_url

DifferenceClass = Literal["policy", "environment-specific", "drift"]
Action = Literal["create_endpoint", "update_endpoint", "copy_limits"]

PROMOTION_ORDER: Final = (Environment.DEV, Environment.STAGING, Environment.PROD)
"""Promotion goes forward along this order only. The database's private.environment_rank, which
guards limits, holds the same order (a test checks that they agree)."""

ENVIRONMENT_SPECIFIC_ENDPOINT_FIELDS: Final = ("url", "secret")
"""What legitimately differs per environment: never drift, never promoted."""
PROMOTED_ENDPOINT_FIELDS: Final = ("event_types", "description", "enabled")
"""An endpoint's fields a promotion carries forward."""
LIMIT_FIELDS: Final = ("rate_limit", "request_cap")
"""Project limits compared as drift; promoted only when asked (they are the platform's to set)."""
POLICY_FIELDS: Final = tuple(f.name for f in fields(EnvironmentConfig) if f.name != "environment")
"""Everything the environment policy decides, from the policy itself."""


def is_forward(source: Environment, target: Environment) -> bool:
    """Whether promoting `source` onto `target` goes forward (dev, staging, prod)."""
    return PROMOTION_ORDER.index(source) < PROMOTION_ORDER.index(target)


@dataclass(frozen=True, slots=True)
class EndpointState:
    id: UUID
    name: str
    url: str
    description: str
    event_types: tuple[str, ...]
    enabled: bool
    disabled_by: str | None

    def promoted(self) -> dict[str, Any]:
        """The promoted fields, event types as a set (their order means nothing)."""
        return {
            "event_types": sorted(self.event_types),
            "description": self.description,
            "enabled": self.enabled,
        }

    def state(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "name": self.name,
            "url": self.url,
            **self.promoted(),
            "disabled_by": self.disabled_by,
        }


@dataclass(frozen=True, slots=True)
class Side:
    """One environment of an app as the report sees it."""

    environment: Environment
    project_id: UUID
    project_name: str
    limits: dict[str, int | None]
    keys: dict[str, int]
    """Active, unexpired keys per kind (pk, sk): how many, nothing else."""
    endpoints: dict[str, EndpointState]

    def state(self) -> dict[str, Any]:
        return {
            "environment": self.environment.value,
            "project_id": str(self.project_id),
            "project_name": self.project_name,
            "limits": self.limits,
            "keys": self.keys,
            "endpoints": [self.endpoints[name].state() for name in sorted(self.endpoints)],
        }


@dataclass(frozen=True, slots=True)
class Difference:
    klass: DifferenceClass
    field: str
    source: Any
    target: Any
    promotable: bool = False
    """Whether a promotion from the source side can make it vanish (limits: when asked)."""

    def as_json(self) -> dict[str, Any]:
        return {
            "class": self.klass,
            "field": self.field,
            "from": self.source,
            "to": self.target,
            "promotable": self.promotable,
        }


def compare(source: Side, target: Side) -> list[Difference]:
    """Every difference between `source` and `target`, field by field: policy first, then the
    project's limits and keys, then endpoints by name."""
    found: list[Difference] = []
    source_policy = get_environment_config(source.environment)
    target_policy = get_environment_config(target.environment)
    for name in POLICY_FIELDS:
        a, b = getattr(source_policy, name), getattr(target_policy, name)
        if a != b:
            found.append(Difference("policy", f"policy.{name}", a, b))
    forward = is_forward(source.environment, target.environment)
    for name in LIMIT_FIELDS:
        if source.limits[name] != target.limits[name]:
            found.append(
                Difference("drift", name, source.limits[name], target.limits[name], forward)
            )
    for kind in ("pk", "sk"):
        a_count, b_count = source.keys.get(kind, 0), target.keys.get(kind, 0)
        if a_count != b_count:
            found.append(Difference("drift", f"keys.{kind}", a_count, b_count))
    for name in sorted(source.endpoints.keys() | target.endpoints.keys()):
        a_endpoint, b_endpoint = source.endpoints.get(name), target.endpoints.get(name)
        if a_endpoint is None or b_endpoint is None:
            found.append(
                Difference(
                    "drift",
                    f"endpoints.{name}",
                    None if a_endpoint is None else _summary(a_endpoint),
                    None if b_endpoint is None else _summary(b_endpoint),
                    forward and b_endpoint is None,
                )
            )
            continue
        a_fields, b_fields = a_endpoint.promoted(), b_endpoint.promoted()
        for key in PROMOTED_ENDPOINT_FIELDS:
            if a_fields[key] != b_fields[key]:
                found.append(
                    Difference(
                        "drift",
                        f"endpoints.{name}.{key}",
                        a_fields[key],
                        b_fields[key],
                        forward and _may_promote(key, a_endpoint, b_endpoint),
                    )
                )
        if a_endpoint.url != b_endpoint.url:
            found.append(
                Difference(
                    "environment-specific", f"endpoints.{name}.url", a_endpoint.url, b_endpoint.url
                )
            )
    return found


def _summary(endpoint: EndpointState) -> dict[str, Any]:
    return {"url": endpoint.url, **endpoint.promoted()}


def _may_promote(key: str, source: EndpointState, target: EndpointState) -> bool:
    # What an operator disabled only an operator enables again (the database refuses, PE006).
    return not (key == "enabled" and source.enabled and target.disabled_by == "operator")


# Promotion ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Change:
    action: Action
    endpoint: str | None
    values: dict[str, Any]
    previous: dict[str, Any] | None = None
    url: str | None = None
    """Create only: the target's URL as the caller gave it (or carried over); not fingerprinted,
    since it is the caller's input rather than either side's state."""

    def as_json(self) -> dict[str, Any]:
        shown: dict[str, Any] = {"action": self.action}
        if self.endpoint is not None:
            shown["endpoint"] = self.endpoint
        shown["set"] = self.values
        if self.previous is not None:
            shown["was"] = self.previous
        if self.action == "create_endpoint":
            shown["url"] = self.url
        return shown


def plan(source: Side, target: Side, *, include_limits: bool = False) -> list[Change]:
    """What promoting `source` onto `target` changes: every promotable drift of the report."""
    changes: list[Change] = []
    if include_limits and source.limits != target.limits:
        changes.append(Change("copy_limits", None, dict(source.limits), dict(target.limits)))
    for name in sorted(source.endpoints):
        wanted = source.endpoints[name].promoted()
        existing = target.endpoints.get(name)
        if existing is None:
            changes.append(Change("create_endpoint", name, wanted))
            continue
        have = existing.promoted()
        differing = {
            key: wanted[key]
            for key in PROMOTED_ENDPOINT_FIELDS
            if wanted[key] != have[key] and _may_promote(key, source.endpoints[name], existing)
        }
        if differing:
            changes.append(
                Change("update_endpoint", name, differing, {key: have[key] for key in differing})
            )
    return changes


def fingerprint(source: Side, target: Side, changes: Sequence[Change]) -> str:
    """A hash of the plan and of both sides' state: any change to either side changes it."""
    document = {
        "from": source.state(),
        "to": target.state(),
        "plan": [{k: v for k, v in c.as_json().items() if k != "url"} for c in changes],
    }
    encoded = json.dumps(document, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(encoded.encode()).hexdigest()


@dataclass(frozen=True)
class Promotion:
    """A plan, dry or applied. `secrets` (applied only) are the new endpoints' signing secrets:
    show them once, never store or log them."""

    source: Side
    target: Side
    changes: list[Change]
    fingerprint: str
    applied: bool
    secrets: dict[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:
        return (
            f"Promotion({self.source.environment} -> {self.target.environment},"
            f" {len(self.changes)} changes, applied={self.applied}, secrets='<redacted>')"
        )


# Reading both sides in few queries ---------------------------------------------------------------

_PROJECTS = """
select p.id, p.name, p.environment, p.rate_limit, p.request_cap,
       (select coalesce(jsonb_object_agg(k.kind, k.n), '{}'::jsonb)
          from (select kind, count(*) as n
                  from public.api_keys
                 where project_id = p.id and status = 'active'
                   and (expires_at is null or expires_at > now())
                 group by kind) as k) as keys
  from public.projects as p
 where p.id = any(%s)
"""

_ENDPOINTS = """
select id, project_id, name, url, description, event_types, enabled, disabled_by
  from public.webhook_endpoints
 where project_id = any(%s)
"""

# The target's row, locked first: concurrent promotions into one project take turns.
_LOCK_TARGET = "select id from public.projects where id = %s for no key update"


async def read_sides(
    conn: Connection,
    app_id: UUID,
    source: Environment,
    target: Environment,
    *,
    lock_target: bool = False,
) -> tuple[Side, Side]:
    """Both environments of the app: :class:`NotFound` for an app that is missing or not the
    caller's, :class:`Conflict` when either environment has no project linked."""
    app = await apps.get_app(conn, app_id)
    if source == target:
        raise InvalidInput(f"compare two different environments, not {source} with itself")
    ids: dict[Environment, UUID] = {}
    for env in (source, target):
        project_id = app.environments[env]
        if project_id is None:
            raise Conflict(
                f"app {app.name!r} has no {env} project",
                hint=f"Link a {env} project as its {env} environment first.",
            )
        ids[env] = project_id
    if lock_target:
        await conn.execute(_LOCK_TARGET, (ids[target],))
    await webhooks.name_endpoints(conn, list(ids.values()))
    cur = await conn.execute(_PROJECTS, (list(ids.values()),))
    projects = {row["id"]: row for row in await cur.fetchall()}
    cur = await conn.execute(_ENDPOINTS, (list(ids.values()),))
    endpoints: dict[UUID, dict[str, EndpointState]] = {pid: {} for pid in ids.values()}
    for row in await cur.fetchall():
        endpoints[row["project_id"]][row["name"]] = EndpointState(
            id=row["id"],
            name=row["name"],
            url=row["url"],
            description=row["description"],
            event_types=tuple(row["event_types"]),
            enabled=row["enabled"],
            disabled_by=row["disabled_by"],
        )

    def side(env: Environment) -> Side:
        row = projects[ids[env]]
        return Side(
            environment=Environment(row["environment"]),
            project_id=row["id"],
            project_name=row["name"],
            limits={name: row[name] for name in LIMIT_FIELDS},
            keys=dict(row["keys"]),
            endpoints=endpoints[row["id"]],
        )

    return side(source), side(target)


async def report(
    conn: Connection, app_id: UUID, source: Environment, target: Environment
) -> list[Difference]:
    """The parity report of the app's `source` and `target` environments."""
    a, b = await read_sides(conn, app_id, source, target)
    return compare(a, b)


async def promote(
    conn: Connection,
    app_id: UUID,
    source: Environment,
    target: Environment,
    *,
    dry_run: bool = True,
    expected_fingerprint: str | None = None,
    include_limits: bool = False,
    urls: Mapping[str, str] | None = None,
    carry_urls: bool = False,
    confirm_name: str | None = None,
) -> Promotion:
    """Plan (dry run) or apply the promotion of `source` onto `target`, in the caller's
    transaction: everything it writes commits or rolls back with it.

    Applying needs the dry run's fingerprint (:class:`StaleFingerprint` if either side changed
    since), the typed name of the target project when the target is prod
    (:class:`ConfirmationRequired`), and a URL for every endpoint it creates (from `urls`, or the
    source's with `carry_urls`).
    """
    if not is_forward(source, target):
        raise InvalidInput(
            f"promotion goes forward only (dev to staging, staging to prod, dev to prod),"
            f" not {source} to {target}"
        )
    a, b = await read_sides(conn, app_id, source, target, lock_target=not dry_run)
    unplanned = plan(a, b, include_limits=include_limits)
    changes = _with_urls(unplanned, a, urls or {}, carry_urls, strict=not dry_run)
    digest = fingerprint(a, b, changes)
    if dry_run:
        return Promotion(a, b, changes, digest, applied=False)
    if target is Environment.PROD and confirm_name != b.project_name:
        raise ConfirmationRequired(
            f"type the name of the {target} project, {b.project_name!r}, to promote into it",
            hint="Send it as confirm_name.",
        )
    if expected_fingerprint is None:
        raise InvalidInput("fingerprint is required to apply: run a dry run first")
    if expected_fingerprint != digest:
        raise StaleFingerprint(hint="Run the dry run again and review its plan.")
    secrets = await _apply(conn, a, b, changes)
    # One promotion.applied entry with the plan, in this transaction; the individual writes above
    # left their own entries through the tables' triggers.
    await audit.record_promotion(
        conn, app_id, a.project_id, b.project_id, [c.as_json() for c in changes], digest
    )
    return Promotion(a, b, changes, digest, applied=True, secrets=secrets)


def _with_urls(
    changes: list[Change],
    source: Side,
    urls: Mapping[str, str],
    carry_urls: bool,
    *,
    strict: bool,
) -> list[Change]:
    """The plan with each created endpoint's target URL, from `urls` or carried over."""
    created = {c.endpoint for c in changes if c.action == "create_endpoint"}
    unknown = sorted(set(urls) - created)
    if unknown:
        raise InvalidInput(f"urls names endpoints this promotion does not create: {unknown}")
    result: list[Change] = []
    missing: list[str] = []
    for change in changes:
        if change.action != "create_endpoint" or change.endpoint is None:
            result.append(change)
            continue
        url = urls.get(change.endpoint)
        if url is None and carry_urls:
            url = source.endpoints[change.endpoint].url
        if url is None:
            missing.append(change.endpoint)
        else:
            url = parse_webhook_url(url).url
        result.append(Change(change.action, change.endpoint, change.values, change.previous, url))
    if strict and missing:
        raise InvalidInput(
            f"no URL for the endpoints this promotion creates: {missing}",
            hint="Give each its URL in urls, or send carry_urls: true to keep the source's.",
        )
    return result


async def _apply(
    conn: Connection, source: Side, target: Side, changes: Sequence[Change]
) -> dict[str, str]:
    secrets: dict[str, str] = {}
    for change in changes:
        if change.action == "copy_limits":
            # Owners cannot write limits: the database's function checks the projects are one
            # forward step of one app of the caller's.
            await conn.execute(
                "select public.promote_project_limits(%s, %s)",
                (source.project_id, target.project_id),
            )
        elif change.action == "create_endpoint":
            assert change.endpoint is not None and change.url is not None
            created = await webhooks.create_endpoint(
                conn,
                target.project_id,
                change.url,
                name=change.endpoint,
                description=change.values["description"],
                event_types=change.values["event_types"],
            )
            if not change.values["enabled"]:
                await webhooks.set_enabled(
                    conn, created.endpoint.id, False, reason="disabled where it was promoted from"
                )
            secrets[change.endpoint] = created.secret
        else:
            assert change.endpoint is not None
            endpoint = target.endpoints[change.endpoint]
            if "description" in change.values or "event_types" in change.values:
                await webhooks.update_endpoint(
                    conn,
                    endpoint.id,
                    description=change.values.get("description"),
                    event_types=change.values.get("event_types"),
                )
            if "enabled" in change.values:
                await webhooks.set_enabled(conn, endpoint.id, change.values["enabled"])
    return secrets
