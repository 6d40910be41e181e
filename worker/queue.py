"""The worker's side of `webhook_deliveries`: claim due deliveries under a lease, record attempts,
release leases. Every query the dispatcher runs is here.

A claim is committed before any HTTP call, so no row lock is held while a receiver answers; the
lease (`leased_by`, `lease_expires_at`, renewed while the worker holds the delivery) keeps other
workers away. A claim counts the attempt (`attempts + 1`); a lease that expires without a record
or a release means the worker stopped mid-attempt, and the next claim logs that attempt as
"outcome unknown" before the delivery is claimable again. Recording is guarded by the lease and
the attempt count, so a worker that lost its lease steers nothing, though its attempt is logged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal, NotRequired, TypedDict, Unpack
from uuid import UUID

from psycopg import AsyncCursor
from psycopg.rows import TupleRow, tuple_row

from shared.db import Connection, statement
from shared.environment import Environment, get_environment_config

Outcome = Literal["succeeded", "pending", "exhausted", "cancelled"]

# Deliveries whose holder stopped mid-attempt: the lease ran out and the attempt was neither
# recorded nor released. The request may have reached the receiver, so the attempt is logged with
# its outcome unknown and counts against the budget: a payload that kills every worker that sends
# it ends `exhausted` instead of being retried forever. The worker's own (still held) deliveries
# are left alone, whatever their lease says.
_SETTLE_LOST = statement("""
with lost as (
    select d.id, d.attempts, d.retry_base, d.leased_by, d.lease_expires_at, d.environment
      from public.webhook_deliveries as d
     where d.status = 'pending'
       and d.next_attempt_at <= now()
       and d.leased_by is not null
       and d.lease_expires_at < now()
       and d.id <> all(%(held)b::uuid[])
     limit %(limit)s
       for update skip locked
), budget as (
    select * from unnest(%(environments)s::public.environment[], %(budgets)s::int[])
           as b(environment, attempts)
), logged as (
    insert into public.webhook_attempts
           (delivery_id, attempt_number, started_at, duration_ms, error)
    select l.id, l.attempts, now(), 0,
           'outcome unknown: worker ' || l.leased_by || ' stopped during this attempt (its lease'
           || ' ran out at ' || l.lease_expires_at || ' before the result was recorded)'
      from lost as l
     where l.attempts > 0
        on conflict (delivery_id, attempt_number) do nothing
)
update public.webhook_deliveries as d
   set leased_by = null,
       lease_expires_at = null,
       last_status_code = null,
       last_error = 'outcome unknown: worker ' || l.leased_by || ' stopped during attempt '
                    || l.attempts,
       status = case when b.attempts is not null and l.attempts - l.retry_base >= b.attempts
                     then 'exhausted' else 'pending' end::public.delivery_status,
       completed_at = case when b.attempts is not null and l.attempts - l.retry_base >= b.attempts
                           then now() end
  from lost as l
  left join budget as b on b.environment = l.environment
 where d.id = l.id
returning d.id, d.status::text as status
""")

# Fair claiming, per endpoint. The claim walks the endpoints with deliveries no worker holds (a
# skip scan over `webhook_deliveries_endpoint_queue_idx`: one probe per endpoint), counts each
# one's leased deliveries (`webhook_deliveries_leased_idx`: any worker's, plus what this worker
# still holds, less its `attempted` ones: finished, only waiting to be recorded, so neither in
# flight nor queued) against `per_endpoint`, and reads only the few due deliveries each endpoint
# has room for, oldest first. The picks are taken rank by rank across endpoints (every
# endpoint's first, then every endpoint's second...), so one endpoint's backlog, or an endpoint
# that never answers, takes at most its share of the workers, and the cost of a claim follows the
# endpoints with work and the rows claimed, never the size of any backlog. A `fast` endpoint (its
# last attempt answered quickly) none of whose deliveries another worker holds may be held
# deeper, up to `prefetch`: the worker keeps at most `per_endpoint` of them in flight and the
# rest queued in memory, so a fast endpoint is refilled without waiting for a record and a claim;
# while another worker holds some, the endpoint is limited to `per_endpoint` leased in all.
# Deliveries of disabled endpoints are never claimed, whatever their status says, nor those of
# the `gone` endpoints (a receiver answered 410: disabled once that answer is recorded). A claim
# counts the attempt at once (`attempts + 1`), so an attempt lost with its worker still counts;
# a release takes it back.
_CLAIM = statement("""
with recursive endpoints as (
    -- Each endpoint with deliveries no worker holds, and the oldest of them: one probe of
    -- webhook_deliveries_endpoint_queue_idx per endpoint (a skip scan).
    (select d.endpoint_id, d.next_attempt_at as head
       from public.webhook_deliveries as d
      where d.status = 'pending' and d.leased_by is null
      order by d.endpoint_id, d.next_attempt_at
      limit 1)
    union all
    select n.endpoint_id, n.head
      from endpoints as e
     cross join lateral (
           select d.endpoint_id, d.next_attempt_at as head
             from public.webhook_deliveries as d
            where d.status = 'pending' and d.leased_by is null
              and d.endpoint_id > e.endpoint_id
            order by d.endpoint_id, d.next_attempt_at
            limit 1
           ) as n
), budget as (
    select * from unnest(%(environments)s::public.environment[], %(budgets)s::int[])
           as b(environment, attempts)
), room as (
    -- Room left under each endpoint's cap.
    select e.endpoint_id, e.head,
           case when l.theirs = 0 and e.endpoint_id = any(%(fast)b::uuid[])
                then %(prefetch)s - l.mine
                else %(per_endpoint)s - l.mine - l.theirs end as room
      from endpoints as e
      join public.webhook_endpoints as w
        on w.id = e.endpoint_id and w.enabled and w.id <> all(%(gone)b::uuid[])
     cross join lateral (
           select count(*) filter (where h.ours) as mine,
                  count(*) filter (where not h.ours) as theirs
             from (select d.leased_by = %(worker_id)s or d.id = any(%(held)b::uuid[]) as ours
                     from public.webhook_deliveries as d
                    where d.endpoint_id = e.endpoint_id
                      and d.status = 'pending' and d.leased_by is not null
                      and (d.lease_expires_at >= now() or d.id = any(%(held)b::uuid[]))
                      and d.id <> all(%(attempted)b::uuid[])) as h
           ) as l
), ready as (
    -- Endpoints that can take a delivery now, and how many of each to read: twice an even share
    -- of the claim (at least the per-endpoint cap), so a claim reads a few rows per endpoint, not
    -- every endpoint's whole room. An endpoint with less than its share leaves the claim short;
    -- the next claim, a moment later, gives the others more.
    select r.endpoint_id,
           least(r.room, %(limit)s,
                 greatest(%(per_endpoint)s, ceil(2.0 * %(limit)s / count(*) over ())::int)) as take
      from room as r
     where r.room > 0 and r.head <= now()
), picked as (
    select c.id
      from ready as r
     cross join lateral (
           select d.id, d.next_attempt_at,
                  row_number() over (order by d.next_attempt_at, d.id) as position
             from public.webhook_deliveries as d
            where d.endpoint_id = r.endpoint_id
              and d.status = 'pending' and d.leased_by is null
              and d.next_attempt_at <= now()
              and d.id <> all(%(held)b::uuid[])
              and not exists (select from budget as b
                               where b.environment = d.environment
                                 and d.attempts - d.retry_base >= b.attempts)
            order by d.next_attempt_at, d.id
            limit r.take
           ) as c
     order by c.position, c.next_attempt_at
     limit %(limit)s
), due as (
    -- Window functions cannot be combined with SKIP LOCKED: the picks are locked here, found by
    -- key only (a filter on status here would let the planner scan the queue index instead), and
    -- taken below only if still claimable as locked.
    select d.id, d.status, d.leased_by
      from public.webhook_deliveries as d
     where d.id = any(array(select p.id from picked as p))
       for update of d skip locked
), claimed as (
    update public.webhook_deliveries as d
       set lease_expires_at = now() + make_interval(secs => %(lease_seconds)s),
           leased_by = %(worker_id)s,
           attempts = d.attempts + 1
     where d.id = any(array(select due.id from due
                             where due.status = 'pending' and due.leased_by is null))
 returning d.id, d.event_id, d.endpoint_id, d.project_id, d.environment, d.attempts, d.retry_base
)
select c.id, c.endpoint_id, c.project_id, c.environment, c.attempts - 1 as attempts, c.retry_base,
       w.url, w.secret,
       e.id as event_id, e.type as event_type, e.payload, e.created_at as event_created_at
  from claimed as c
  join public.webhook_endpoints as w on w.id = c.endpoint_id
  join public.events as e on e.id = c.event_id
""")

# What the claim's transaction sets. The planner cannot know how few rows each endpoint's read
# returns (its limit is computed per endpoint), so on a large backlog its estimate passes
# `jit_above_cost` and JIT compilation would add ~70 ms to a claim that runs in ~3 ms.
CLAIM_SETTINGS: Final = {"jit": "off"}

# One statement records a whole batch. The lease-guarded update decides which results still steer
# the delivery; every attempt that was made gets its row, even when the delivery moved on without
# it (endpoint disabled mid-flight, lease lost): the attempt happened, the log says so.
_RECORD = statement("""
with result as (
    -- Binary parameters: arrays of hundreds of values dump several times faster that way.
    select *
      from unnest(%(ids)b::uuid[], %(attempt_numbers)b::int[], %(statuses)b::text[],
                  %(delays)b::float8[], %(status_codes)b::int[], %(errors)b::text[],
                  %(started_ats)b::timestamptz[], %(durations)b::int[], %(bodies)b::text[])
           as r(id, attempt_number, status, delay, status_code, error, started_at, duration_ms,
                response_body)
), present as (
    -- Locked, so a delivery deleted meanwhile (its endpoint deleted) is skipped, not an error;
    -- in id order, as every statement that may wait for held rows locks them (see _HELD_LOCKED).
    select d.id from public.webhook_deliveries as d join result as r on r.id = d.id
     order by d.id
       for no key update of d
), updated as (
    update public.webhook_deliveries as d
       set status = r.status::public.delivery_status,
           next_attempt_at = case when r.status = 'pending'
                                  then now() + make_interval(secs => r.delay)
                                  else d.next_attempt_at end,
           last_status_code = r.status_code,
           last_error = r.error,
           completed_at = case when r.status = 'pending' then null else now() end,
           lease_expires_at = null,
           leased_by = null
      from result as r
      join present as p on p.id = r.id  -- locks each row before it is updated (evaluation order)
     where d.id = r.id
       and d.status = 'pending'
       and d.leased_by = %(worker_id)s
       and d.attempts = r.attempt_number
 returning d.id
), logged as (
    insert into public.webhook_attempts
           (delivery_id, attempt_number, started_at, duration_ms, status_code, response_body, error)
    select r.id, r.attempt_number, r.started_at, r.duration_ms, r.status_code, r.response_body,
           r.error
      from result as r
      join present as p on p.id = r.id
        on conflict (delivery_id, attempt_number) do nothing
    returning delivery_id
)
select r.id, u.id is not null as applied, l.delivery_id is not null as logged
  from result as r
  left join updated as u on u.id = r.id
  left join logged as l on l.delivery_id = r.id
""")

_DISABLE_ENDPOINT = statement("""
update public.webhook_endpoints
   set enabled = false, disabled_by = 'receiver', disabled_reason = %(reason)s
 where id = %(endpoint_id)s and enabled
""")

# Statements that lock many held deliveries at once and may wait for them (records, renewals,
# releases) lock them in id order, so two of them never wait for each other: a renewal of
# everything held, run beside a record of some of it, deadlocked now and then (each locked in
# its own scan's order), and Postgres cancelled one (a second's pause for the worker). Claims
# and settlements take their rows with SKIP LOCKED, so they never wait.
_HELD_LOCKED = """
with held as (
    select d.id from public.webhook_deliveries as d
     where d.id = any(%(ids)b::uuid[]) and d.leased_by = %(worker_id)s and d.status = 'pending'
     order by d.id
       for no key update of d
)
"""

# Unsent deliveries go back as they were: the attempt counted at claim time is taken back.
_GIVE_BACK = """
update public.webhook_deliveries as d
   set lease_expires_at = null, leased_by = null, attempts = greatest(attempts - 1, retry_base)
  from held as h
 where d.id = h.id
"""

_RELEASE = statement(_HELD_LOCKED + _GIVE_BACK)

# Leases the worker holds in the database but not in memory: those of a claim that committed
# while its answer was lost (the connection dropped between the commit and the reply). Nothing was
# sent, so they go back as a release does, at once, rather than wait out their lease and then be
# settled as an attempt with its outcome unknown. Only the worker's own name is touched (names
# are unique among live workers: worker.app takes its name first), never what it still holds.
# It runs in the claim's transaction, so like the claim it never waits: a row locked by another
# transaction is skipped (its lease runs out, and it is settled as any lost attempt is).
_RELEASE_UNHELD = statement(
    """
with held as (
    select d.id from public.webhook_deliveries as d
     where d.leased_by = %(worker_id)s and d.status = 'pending'
       and d.id <> all(%(held)b::uuid[])
       for no key update of d skip locked
)
"""
    + _GIVE_BACK
    + "returning d.id"
)

_RENEW = statement(
    _HELD_LOCKED
    + """
update public.webhook_deliveries as d
   set lease_expires_at = now() + make_interval(secs => %(lease_seconds)s)
  from held as h
 where d.id = h.id
returning d.id
"""
)

_COUNT_DUE = statement("""
select count(*) as due
  from public.webhook_deliveries as d
  join public.webhook_endpoints as w on w.id = d.endpoint_id and w.enabled
 where d.status = 'pending'
   and d.next_attempt_at <= now()
   and (d.lease_expires_at is null or d.lease_expires_at < now())
""")


@dataclass(frozen=True, slots=True)
class ClaimedDelivery:
    """A delivery this worker holds, with what it takes to send it."""

    id: UUID
    """The `webhook-id`: the same on every attempt."""
    endpoint_id: UUID
    project_id: UUID
    environment: Environment
    attempts: int
    retry_base: int
    url: str
    secret: str
    event_id: UUID
    event_type: str
    payload: dict[str, Any]
    event_created_at: datetime

    def __repr__(self) -> str:
        # The signing secret never reaches a log line.
        return f"ClaimedDelivery(id={self.id}, url={self.url!r}, attempts={self.attempts})"

    @classmethod
    def from_row(cls, row: TupleRow) -> ClaimedDelivery:
        """From a row of the claim, its columns in the order of the fields (tuple rows: a claim
        returns hundreds, and a dict per row cost more than the rest of its reading)."""
        return cls(
            row[0],
            row[1],
            row[2],
            _ENVIRONMENTS[row[3]],
            row[4],
            row[5],
            row[6],
            row[7],
            row[8],
            row[9],
            row[10],
            row[11],
        )


_ENVIRONMENTS: Final = {environment.value: environment for environment in Environment}

Cursor = AsyncCursor[TupleRow]
"""A statement sent in pipeline mode (`Database.as_service_pipelined`), read after the block."""


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """One finished HTTP attempt and what it means for the delivery."""

    delivery_id: UUID
    endpoint_id: UUID
    attempt_number: int
    outcome: Outcome
    delay_seconds: float
    started_at: datetime
    duration_ms: int
    status_code: int | None
    response_body: str | None
    error: str | None
    disables_endpoint: bool = False
    """The receiver answered 410 Gone: disable the endpoint and cancel its pending deliveries."""


@dataclass(frozen=True, slots=True)
class Budgets:
    """Attempts allowed per environment (None: without limit), from the environment config."""

    environments: list[str]
    attempts: list[int | None]

    @classmethod
    def from_config(cls) -> Budgets:
        envs = list(Environment)
        return cls(
            [e.value for e in envs], [get_environment_config(e).max_webhook_attempts for e in envs]
        )

    def params(self) -> dict[str, Any]:
        return {"environments": self.environments, "budgets": self.attempts}


@dataclass(frozen=True, slots=True)
class Recorded:
    """What a `record` call did: results that steered their delivery, and attempt rows written."""

    applied: set[UUID]
    logged: set[UUID]


async def settle_lost(
    conn: Connection, *, held: Sequence[UUID], budgets: Budgets, limit: int = 500
) -> dict[UUID, str]:
    """Log the attempts of workers that stopped mid-attempt as "outcome unknown" and count them;
    returns the deliveries settled and their new status (`pending` or `exhausted`)."""
    return await read_settled(await send_settle_lost(conn, held=held, budgets=budgets, limit=limit))


async def send_settle_lost(
    conn: Connection, *, held: Sequence[UUID], budgets: Budgets, limit: int = 500
) -> Cursor:
    """`settle_lost` sent; `read_settled` reads it."""
    cur = conn.cursor(row_factory=tuple_row)
    await cur.execute(_SETTLE_LOST, {"held": list(held), "limit": limit, **budgets.params()})
    return cur


async def read_settled(cur: Cursor) -> dict[UUID, str]:
    return {row[0]: row[1] for row in await cur.fetchall()}


class ClaimOptions(TypedDict):
    """What a claim asks for: see `claim`."""

    worker_id: str
    limit: int
    lease_seconds: float
    per_endpoint: int
    held: Sequence[UUID]
    budgets: Budgets
    prefetch: NotRequired[int | None]
    fast: NotRequired[Sequence[UUID]]
    attempted: NotRequired[Sequence[UUID]]
    gone: NotRequired[Sequence[UUID]]


def claim_statement(**options: Unpack[ClaimOptions]) -> tuple[str, dict[str, Any]]:
    """The statement `claim` runs and its parameters (tests EXPLAIN it)."""
    per_endpoint = options["per_endpoint"]
    return _CLAIM, {
        "worker_id": options["worker_id"],
        "limit": options["limit"],
        "lease_seconds": options["lease_seconds"],
        "per_endpoint": per_endpoint,
        "prefetch": max(per_endpoint, options.get("prefetch") or per_endpoint),
        "held": list(options["held"]),
        "fast": list(options.get("fast", ())),
        "attempted": list(options.get("attempted", ())),
        "gone": list(options.get("gone", ())),
        **options["budgets"].params(),
    }


async def claim(conn: Connection, **options: Unpack[ClaimOptions]) -> list[ClaimedDelivery]:
    """Lease up to `limit` due deliveries to `worker_id`, at most `per_endpoint` leased per
    endpoint (up to `prefetch` of a `fast` endpoint no other worker holds any of; the caller keeps
    at most `per_endpoint` of them in flight), never one of `held`; of those, the `attempted` ones
    (finished, waiting to be recorded) do not count against the caps. Run it in a transaction with
    `CLAIM_SETTINGS`, and commit before sending what it returns."""
    return await read_claimed(await send_claim(conn, **options))


async def send_claim(conn: Connection, **options: Unpack[ClaimOptions]) -> Cursor:
    """`claim` sent; `read_claimed` reads it."""
    cur = conn.cursor(row_factory=tuple_row)
    await cur.execute(*claim_statement(**options))
    return cur


async def read_claimed(cur: Cursor) -> list[ClaimedDelivery]:
    from_row = ClaimedDelivery.from_row
    return [from_row(row) for row in await cur.fetchall()]


async def record(conn: Connection, results: Sequence[AttemptResult], *, worker_id: str) -> Recorded:
    """Record `results`: an attempt row for each (unless one exists for that attempt), and the
    delivery's status and next attempt time where `worker_id` still holds the lease; disable
    endpoints that answered 410."""
    if not results:
        return Recorded(set(), set())
    done = await read_recorded(await _send_record(conn, results, worker_id=worker_id))
    for result in results:
        if result.disables_endpoint and result.delivery_id in done.applied:
            reason = f"the receiver answered {result.status_code} Gone"
            await disable_endpoint(conn, result.endpoint_id, reason=reason)
    return done


async def send_record(
    conn: Connection, results: Sequence[AttemptResult], *, worker_id: str
) -> Cursor:
    """`record` sent, for results none of which disables its endpoint (that takes the record's
    answer first: use `record`); `read_recorded` reads it."""
    if any(result.disables_endpoint for result in results):
        raise ValueError("a result that disables its endpoint is recorded by record()")
    return await _send_record(conn, results, worker_id=worker_id)


async def _send_record(
    conn: Connection, results: Sequence[AttemptResult], *, worker_id: str
) -> Cursor:
    cur = conn.cursor(row_factory=tuple_row)
    await cur.execute(
        _RECORD,
        {
            "worker_id": worker_id,
            "ids": [r.delivery_id for r in results],
            "attempt_numbers": [r.attempt_number for r in results],
            "statuses": [r.outcome for r in results],
            "delays": [float(r.delay_seconds) for r in results],
            "status_codes": [r.status_code for r in results],
            "errors": [r.error for r in results],
            "started_ats": [r.started_at for r in results],
            "durations": [r.duration_ms for r in results],
            "bodies": [r.response_body for r in results],
        },
    )
    return cur


async def read_recorded(cur: Cursor) -> Recorded:
    rows = await cur.fetchall()
    return Recorded({r[0] for r in rows if r[1]}, {r[0] for r in rows if r[2]})


async def disable_endpoint(conn: Connection, endpoint_id: UUID, *, reason: str) -> None:
    """Disable the endpoint; the database cancels every delivery still pending for it (trigger
    webhook_endpoints_cancel_deliveries_when_disabled)."""
    await conn.execute(_DISABLE_ENDPOINT, {"endpoint_id": endpoint_id, "reason": reason})


async def release(conn: Connection, ids: Sequence[UUID], *, worker_id: str) -> None:
    """Give leases back unattempted, so another worker can claim them at once."""
    if ids:
        await conn.execute(_RELEASE, {"ids": list(ids), "worker_id": worker_id})


async def release_unheld(conn: Connection, *, held: Sequence[UUID], worker_id: str) -> set[UUID]:
    """Release what `worker_id` leases and does not hold (`held`): after a claim whose answer was
    lost, the deliveries it leased, which no sender has; returns them."""
    return await read_released(await send_release_unheld(conn, held=held, worker_id=worker_id))


async def send_release_unheld(conn: Connection, *, held: Sequence[UUID], worker_id: str) -> Cursor:
    """`release_unheld` sent; `read_released` reads it."""
    cur = conn.cursor(row_factory=tuple_row)
    await cur.execute(_RELEASE_UNHELD, {"held": list(held), "worker_id": worker_id})
    return cur


async def read_released(cur: Cursor) -> set[UUID]:
    return {row[0] for row in await cur.fetchall()}


async def renew(
    conn: Connection, ids: Sequence[UUID], *, worker_id: str, lease_seconds: float
) -> set[UUID]:
    """Extend the leases `worker_id` holds on `ids`; returns those it still held."""
    if not ids:
        return set()
    cur = await conn.execute(
        _RENEW, {"ids": list(ids), "worker_id": worker_id, "lease_seconds": lease_seconds}
    )
    return {row["id"] for row in await cur.fetchall()}


async def count_due(conn: Connection) -> int:
    """Deliveries due now and not leased: what a drain still has to do."""
    cur = await conn.execute(_COUNT_DUE)
    row = await cur.fetchone()
    assert row is not None
    due: int = row["due"]
    return due
