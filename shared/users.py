"""Users of the local sign-in: the embedded stand-in for Supabase Auth (GoTrue) in `auth.users`.

Only for runs without a real Supabase project; there, Supabase Auth owns this table. Passwords are
stored as scrypt hashes (standard library), never in clear.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Final
from uuid import UUID

from shared.db import Connection
from shared.errors import InvalidInput, PermissionDenied

MIN_PASSWORD_LENGTH: Final = 8
MAX_PASSWORD_LENGTH: Final = 200
# Characters that are space or control to any regex dialect (Python's \s, Unicode White_Space,
# C0 and C1 controls), spelled out so that every reader of the pattern agrees.
SPACE_OR_CONTROL: Final = (
    r"\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
)
# Deliberately loose: one @, something either side, a dot in the domain, no spaces or control
# characters. The console's API schema states the same pattern, anchored.
EMAIL_PATTERN: Final = re.compile(
    rf"[^@{SPACE_OR_CONTROL}]{{1,64}}@[^@{SPACE_OR_CONTROL}]+\.[^@{SPACE_OR_CONTROL}]+"
)
_SCRYPT_N: Final = 2**14
_SCRYPT_R: Final = 8
_SCRYPT_P: Final = 1


@dataclass(frozen=True, slots=True)
class User:
    id: UUID
    email: str


def clean_email(email: str) -> str:
    stripped = email.strip()
    if len(stripped) > 254 or EMAIL_PATTERN.fullmatch(stripped) is None:
        raise InvalidInput("enter a valid email address, e.g. ada@example.com")
    return stripped.lower()


def _check_password_shape(password: str) -> None:
    if not MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH:
        raise InvalidInput(
            f"password must be {MIN_PASSWORD_LENGTH} to {MAX_PASSWORD_LENGTH} characters"
        )


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P
    )
    encode = base64.b64encode
    return (
        f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}"
        f"${encode(salt).decode()}${encode(digest).decode()}"
    )


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt_b64, digest_b64 = stored.split("$")
        if scheme != "scrypt":
            return False
        salt = base64.b64decode(salt_b64)
        expected = base64.b64decode(digest_b64)
        actual = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=int(n), r=int(r), p=int(p))
    except ValueError:
        return False
    return hmac.compare_digest(actual, expected)


_WRONG: Final = "wrong email or password"
_DUMMY_HASH: Final = hash_password("not anybody's password", salt=b"\0" * 16)


async def sign_in_local(
    conn: Connection, email: str, password: str, *, allow_signup: bool = True
) -> User:
    """The user with `email`, created on first sign-in when `allow_signup`. Run as the service.

    A user created without a password (seeded by an operator) takes the password of their first
    sign-in; afterwards the password must match. An unknown email without sign-up gets the answer
    (and the hashing work) of a wrong password, so the answer does not tell which emails exist.
    """
    address = clean_email(email)
    _check_password_shape(password)
    cur = await conn.execute(
        "select id, email, encrypted_password from auth.users where email = %s for update",
        (address,),
    )
    row = await cur.fetchone()
    if row is None and not allow_signup:
        verify_password(password, _DUMMY_HASH)
        raise PermissionDenied(_WRONG)
    if row is None:
        cur = await conn.execute(
            "insert into auth.users (email, encrypted_password) values (%s, %s)"
            " on conflict (email) do nothing returning id, email",
            (address, hash_password(password)),
        )
        created = await cur.fetchone()
        if created is None:  # a concurrent first sign-in won the race
            raise PermissionDenied(_WRONG)
        return User(id=created["id"], email=created["email"])
    if row["encrypted_password"] is None:
        await conn.execute(
            "update auth.users set encrypted_password = %s, updated_at = now() where id = %s",
            (hash_password(password), row["id"]),
        )
    elif not verify_password(password, row["encrypted_password"]):
        raise PermissionDenied(_WRONG)
    return User(id=row["id"], email=row["email"])


async def ensure_user(conn: Connection, email: str) -> User:
    """The user with `email`, created without a password if missing (seeding); as the service."""
    address = clean_email(email)
    cur = await conn.execute(
        "insert into auth.users (email) values (%s)"
        " on conflict (email) do update set email = excluded.email returning id, email",
        (address,),
    )
    row = await cur.fetchone()
    assert row is not None
    return User(id=row["id"], email=row["email"])
