"""Database access: one async pool, two ways to run a transaction, and psycopg errors turned into
the project's own.

`as_user` runs a transaction the way PostgREST does for a signed-in request (`role authenticated`
and `request.jwt.claims`, both local to the transaction), so row level security is what protects
data. `as_service` runs as `service_role`, which bypasses RLS: for the gateway and the worker.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any
from uuid import UUID

import psycopg
from psycopg import AsyncConnection, errors
from psycopg.conninfo import conninfo_to_dict
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
        case "PE006":
            return PermissionDenied(message, hint=hint)
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
    ) -> None:
        """`wait_seconds` bounds the wait for a connection (all busy, or the server down); past
        it a transaction raises DatabaseUnavailable."""
        self.url = url
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
            check=AsyncConnectionPool.check_connection,
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
        the transaction only, in the same round trip as the role."""
        async with self._transaction() as conn:
            if settings:
                names = ["role", *settings]
                values = ["service_role", *settings.values()]
                await conn.execute(
                    "select set_config(name, value, true)"
                    " from unnest(%s::text[], %s::text[]) as s(name, value)",
                    (names, values),
                )
            else:
                await conn.execute("set local role service_role")
            yield conn

    @asynccontextmanager
    async def as_user(
        self, user_id: UUID | str, claims: Mapping[str, Any] | None = None
    ) -> AsyncIterator[Connection]:
        """A transaction as the signed-in user `user_id`, under row level security."""
        jwt_claims = {"role": "authenticated", **(claims or {}), "sub": str(user_id)}
        async with self._transaction() as conn:
            await conn.execute(
                "select set_config('role', 'authenticated', true),"
                " set_config('request.jwt.claims', %s, true)",
                (json.dumps(jwt_claims),),
            )
            yield conn

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[Connection]:
        try:
            async with self.pool.connection() as conn, conn.transaction():
                yield conn
        except psycopg.Error as exc:
            raise translate_error(exc) from exc
