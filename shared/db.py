"""Database access: one async pool, two ways to run a transaction, and psycopg errors turned into
the project's own.

`as_user` runs a transaction the way PostgREST does for a signed-in request (`role authenticated`
and `request.jwt.claims`, both local to the transaction), so row level security is what protects
data. `as_service` runs as `service_role`, which bypasses RLS: for the gateway and the worker.

The audit trail's triggers read who acted from the same settings: the user's id from the claims,
the client address and user agent from `request.headers` (as PostgREST passes them), and for the
platform `parity.actor` (`worker`, `operator`), which a `Database` made with `actor=` sets in
every service transaction.
"""

from __future__ import annotations

import json
import select
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, suppress
from functools import lru_cache
from typing import Any, Final, Literal
from uuid import UUID

import psycopg
from psycopg import AsyncConnection, errors, sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import TransactionStatus
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool

from shared.errors import (
    Conflict,
    DatabaseUnavailable,
    EnvironmentLocked,
    EnvironmentMismatch,
    InvalidInput,
    LimitReached,
    NotFound,
    ParityError,
    PermissionDenied,
)

Connection = AsyncConnection[DictRow]

AuditActor = Literal["worker", "operator"]
"""Who a platform process is in the audit trail (else `platform`)."""

AUDIT_ACTOR: Final = "parity.actor"
"""The transaction setting the audit trail's triggers read the platform's actor from."""


def translate_error(exc: psycopg.Error) -> ParityError:
    """The project's error for a database error: message and hint come from the database."""
    diag = exc.diag
    message = diag.message_primary or str(exc)
    hint = diag.message_hint
    match exc.sqlstate:
        # PE001 and PE002 are raised by our own triggers (supabase/migrations).
        case "PE001":
            return EnvironmentMismatch(message, hint=hint)
        case "PE002":
            return EnvironmentLocked(message, hint=hint)
        # PE004 (key lifecycle), PE005 (redelivery), PE006 (operator-disabled endpoint): ours too.
        case "PE004":
            return InvalidInput(message, hint=hint)
        case "PE005":  # the delivery's state forbids it (already pending, endpoint disabled)
            return Conflict(message, hint=hint)
        case "PE006" | "PE007":  # PE007: the audit trail is append-only
            return PermissionDenied(message, hint=hint)
        # PE008 (an app's environment slots), PE009 (a promotion that is not one forward step
        # inside one app): raised by the apps migration.
        case "PE008":
            return Conflict(message, hint=hint)
        case "PE009":
            return InvalidInput(message, hint=hint)
        case "PE010":  # a platform limit (webhook endpoints per project)
            return LimitReached(message, hint=hint)
        case "P0002":  # no_data_found, raised by our functions for missing or another's rows
            return NotFound(message, hint=hint)
        case "23505":
            return Conflict(message, hint=hint)
        case "23503":
            return NotFound(message, hint=hint)
        case "42501":
            return PermissionDenied(message, hint=hint)
    if isinstance(exc, psycopg.DataError):
        # Also raised by psycopg itself, before the server sees the value (no SQLSTATE), e.g. for
        # a NUL character in text: the caller's input, not our failure.
        return InvalidInput(message, hint=hint)
    if isinstance(exc, errors.OperationalError):
        return DatabaseUnavailable(message)
    if exc.sqlstate is not None and exc.sqlstate[:2] in {"22", "23"}:
        return InvalidInput(message, hint=hint)
    return ParityError(message, hint=hint)


def statement(text: str) -> str:
    """SQL as it is sent: without whole-line comments and indentation. psycopg caches the parsing
    of a statement's placeholders only up to 4 KiB of text; a longer one (the commented claim) is
    parsed again, in Python, on every execution."""
    lines = (line.strip() for line in text.splitlines())
    return "\n".join(line for line in lines if line and not line.startswith("--"))


TRANSACTION_POOLER_PORT = "6543"
"""Supabase's transaction-mode pooler listens here (its session mode on 5432)."""


def is_transaction_pooler(url: str) -> bool:
    """Whether `url` names Supabase's transaction pooler, where prepared statements break."""
    try:
        return str(conninfo_to_dict(url).get("port")) == TRANSACTION_POOLER_PORT
    except psycopg.ProgrammingError:
        return False


class Database:
    """The pool every process uses. Open it once, at start-up, and close it at shutdown.

    Behind a transaction-mode pooler (PgBouncer, Supavisor) consecutive transactions may run on
    different server connections, so psycopg's prepared statements must be off: pass
    `prepared_statements=False`, or leave it unset to decide from the URL's port.
    """

    def __init__(
        self,
        url: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        name: str = "parity",
        prepared_statements: bool | None = None,
        wait_seconds: float = 30.0,
        actor: AuditActor | None = None,
    ) -> None:
        """`wait_seconds` bounds the wait for a connection (all busy, or the server down); past
        it a transaction raises DatabaseUnavailable. `actor` names who this process's service
        transactions are in the audit trail (`worker`, `operator`); unset, the `platform`."""
        self.url = url
        self._service_settings: dict[str, str] = {} if actor is None else {AUDIT_ACTOR: actor}
        if prepared_statements is None:
            prepared_statements = not is_transaction_pooler(url)
        kwargs: dict[str, Any] = {"row_factory": dict_row, "autocommit": True}
        if not prepared_statements:
            kwargs["prepare_threshold"] = None
        self.pool: AsyncConnectionPool[Connection] = AsyncConnectionPool(
            url,
            min_size=min_size,
            max_size=max_size,
            open=False,
            name=name,
            kwargs=kwargs,
            # A connection killed under us (failover, pg_terminate_backend) is noticed and replaced
            # before it is handed out, rather than failing the next query.
            check=check_idle_connection,
            reconnect_timeout=60,
            timeout=wait_seconds,
        )

    async def open(self, *, wait: bool = True, wait_seconds: float = 30.0) -> None:
        await self.pool.open(wait=wait, timeout=wait_seconds)

    async def close(self) -> None:
        await self.pool.close()

    async def __aenter__(self) -> Database:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @asynccontextmanager
    async def as_service(
        self, settings: Mapping[str, str] | None = None
    ) -> AsyncIterator[Connection]:
        """A transaction as `service_role`: sees every row, bypassing RLS. `settings` are set for
        the transaction only, in the same round trip as BEGIN and the role (with `parity.actor`
        when this Database was made with an `actor`)."""
        settings = {**self._service_settings, **(settings or {})}
        begin = _service_begin((("role", "service_role"), *settings.items()))
        async with self._transaction(begin) as conn:
            yield conn

    @asynccontextmanager
    async def as_service_pipelined(
        self, settings: Mapping[str, str] | None = None
    ) -> AsyncIterator[Connection]:
        """`as_service` in one round trip: BEGIN, the role and settings, the statements the block
        executes and COMMIT go out together (psycopg's pipeline mode) when the block ends, and
        their results come back together. The block only sends: it reads its cursors after the
        block, once the transaction has committed (their results are in by then, so reading them
        does no I/O). The statements run in order; if one fails, nothing is committed and its
        error is raised as the block ends."""
        settings = {**self._service_settings, **(settings or {})}
        begin = _service_pipeline_begin((("role", "service_role"), *settings.items()))
        try:
            async with self.pool.connection() as conn:
                try:
                    async with conn.pipeline():
                        for statement in begin:
                            await conn.execute(statement)
                        yield conn
                        await conn.execute(b"commit")
                except Exception:
                    await _roll_back_if_open(conn)
                    raise
        except psycopg.Error as exc:
            raise translate_error(exc) from exc

    @asynccontextmanager
    async def as_user(
        self,
        user_id: UUID | str,
        claims: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> AsyncIterator[Connection]:
        """A transaction as the signed-in user `user_id`, under row level security. `headers`
        (lower-case names) become `request.headers`, as PostgREST sets them: the audit trail
        records `x-forwarded-for` and `user-agent` from there."""
        jwt_claims = {"role": "authenticated", **(claims or {}), "sub": str(user_id)}
        settings = {
            "role": "authenticated",
            "request.jwt.claims": json.dumps(jwt_claims),
            "request.headers": json.dumps(dict(headers or {})),
        }
        async with self._transaction(begin_statement(settings)) as conn:
            yield conn

    @asynccontextmanager
    async def _transaction(self, begin: bytes = b"begin") -> AsyncIterator[Connection]:
        """`begin` (BEGIN with the transaction's role and settings, one round trip), the caller's
        statements, then COMMIT (ROLLBACK if the block raises; `psycopg.Rollback` ends it
        quietly)."""
        try:
            async with self.pool.connection() as conn:
                await conn.execute(begin)
                try:
                    yield conn
                except Exception as exc:
                    await _roll_back_if_open(conn)
                    if isinstance(exc, psycopg.Rollback):
                        return
                    raise
                await conn.execute("commit")
        except psycopg.Error as exc:
            raise translate_error(exc) from exc


_OPEN = (TransactionStatus.INTRANS, TransactionStatus.INERROR)


async def _roll_back_if_open(conn: Connection) -> None:
    """Roll back the transaction a failed block left open. A connection that cannot even roll
    back (its server gone, a pipeline aborted mid-way) is discarded by the pool."""
    if conn.info.transaction_status in _OPEN:
        with suppress(psycopg.Error):
            await conn.execute("rollback")


@asynccontextmanager
async def as_service_within(conn: Connection) -> AsyncIterator[Connection]:
    """Statements as `service_role` inside the caller's transaction (a user's, under RLS), then
    the transaction's own role again: for the one step of a user's request that only the platform
    may take (writing the `promotion.applied` audit entry). The user's claims and headers stay
    set, so Postgres still knows who asked. In a service transaction, nothing changes."""
    cur = await conn.execute("select current_setting('role') as role")
    row = await cur.fetchone()
    assert row is not None
    role: str = row["role"]
    if role == "service_role":
        yield conn
        return
    await conn.execute("select set_config('role', 'service_role', true)")
    try:
        yield conn
    finally:
        # A failed statement leaves the transaction to be rolled back, which undoes the switch.
        if conn.info.transaction_status is TransactionStatus.INTRANS:
            await conn.execute("select set_config('role', %s, true)", (role,))


def settings_statement(settings: Mapping[str, str]) -> bytes:
    """`select set_config(name, value, true), ...`: the transaction's role and settings in one
    statement. Names and values are quoted as literals."""
    configs = sql.SQL(", ").join(
        sql.SQL("set_config({}, {}, true)").format(sql.Literal(name), sql.Literal(value))
        for name, value in settings.items()
    )
    return sql.SQL("select {}").format(configs).as_bytes(None)


def begin_statement(settings: Mapping[str, str]) -> bytes:
    """`begin; select set_config(name, value, true), ...`: several statements without parameters
    go in one simple-protocol message, so a transaction starts with its role and settings in a
    single round trip."""
    return b"begin; " + settings_statement(settings)


@lru_cache(maxsize=64)
def _service_begin(settings: tuple[tuple[str, str], ...]) -> bytes:
    """The service's BEGIN statements, built once per set of settings (they are the code's own)."""
    return begin_statement(dict(settings))


@lru_cache(maxsize=64)
def _service_pipeline_begin(settings: tuple[tuple[str, str], ...]) -> tuple[bytes, bytes]:
    """The same as two statements: pipeline mode takes one statement per query."""
    return b"begin", settings_statement(dict(settings))


async def check_idle_connection(conn: Connection) -> None:
    """The pool's check before it hands a connection out, without a round trip when nothing is
    wrong: an idle connection has nothing to read unless the server ended it (a terminated backend,
    a restart or a failover sends an error, then closes the socket) or the socket is gone. Only
    then is it asked (and, failing, replaced)."""
    try:
        readable, _, _ = select.select([conn.pgconn.socket], [], [], 0)
    except (OSError, ValueError, psycopg.Error):
        readable = [True]
    if readable:
        await AsyncConnectionPool.check_connection(conn)
