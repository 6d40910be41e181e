"""Ending sessions before their tokens expire: the revocation list in `private.revoked_sessions`.

Every signed-in request asks the database one indexed question: is the token's user still there,
and is the token not revoked? That is what makes sign-out final (the token stops working at once,
on every replica) and turns a token of a deleted user into a clean 401.
"""

from __future__ import annotations

from console.auth import Session, Unauthenticated
from shared.db import Database

_STATE = """
select exists (select 1 from auth.users where id = %(user_id)s) as known,
       exists (select 1 from private.revoked_sessions where token_id = %(token_id)s) as revoked
"""

_REVOKE = """
insert into private.revoked_sessions (token_id, user_id, expires_at)
select %(token_id)s, %(user_id)s, %(expires_at)s
 where exists (select 1 from auth.users where id = %(user_id)s)
on conflict (token_id) do nothing
"""

# Expired tokens are refused on their own: their rows only take space.
_PURGE = "delete from private.revoked_sessions where expires_at < now() - interval '1 minute'"


async def check(db: Database, session: Session) -> None:
    """:class:`Unauthenticated` unless `session` is still live."""
    async with db.as_service() as conn:
        cur = await conn.execute(_STATE, {"user_id": session.user_id, "token_id": session.token_id})
        row = await cur.fetchone()
    assert row is not None
    if row["revoked"]:
        raise Unauthenticated("this session has ended (signed out): sign in again")
    if not row["known"]:
        raise Unauthenticated("the session's user no longer exists")


async def revoke(db: Database, session: Session) -> None:
    """End `session` now: its token is refused from here on, wherever it is presented."""
    async with db.as_service() as conn:
        await conn.execute(
            _REVOKE,
            {
                "token_id": session.token_id,
                "user_id": session.user_id,
                "expires_at": session.expires_at,
            },
        )
        await conn.execute(_PURGE)
