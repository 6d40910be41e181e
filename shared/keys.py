"""API key tokens: format, checksum, hashing and display.

A token reads ``nm_<live|dev|staging>_<pk|sk>_`` + 32 random base62 characters + a 6-character
base62 CRC32 of everything before it (GitHub's token design). The checksum lets the gateway refuse a
mistyped or made-up token without a database call, and lets secret scanners recognise real ones.
CRC32 catches every burst of up to 32 bits, so any single-character change is caught.

Only the SHA-256 of the whole token is stored. The environment of a key is read from its database
row, never from the prefix alone: the prefix is for people.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import zlib
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from shared.environment import Environment
from shared.errors import InvalidApiKey

BASE62: Final = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
RANDOM_LENGTH: Final = 32
CHECKSUM_LENGTH: Final = 6
_LABEL_TO_ENVIRONMENT: Final = {env.key_label: env for env in Environment}

TOKEN_PATTERN: Final = re.compile(
    r"nm_(?P<label>live|dev|staging)_(?P<kind>pk|sk)_"
    rf"(?P<random>[0-9A-Za-z]{{{RANDOM_LENGTH}}})(?P<checksum>[0-9A-Za-z]{{{CHECKSUM_LENGTH}}})"
)
SECRET_TOKEN_PATTERN: Final = re.compile(r"nm_(?:live|dev|staging)_sk_[0-9A-Za-z]{20,}")
"""Finds secret tokens (and fragments long enough to matter) inside any text, for redaction."""


class KeyKind(StrEnum):
    """Publishable keys make read requests only; secret keys may do anything."""

    PUBLISHABLE = "pk"
    SECRET = "sk"  # noqa: S105 (a key kind, not a password)


@dataclass(frozen=True, slots=True)
class ParsedToken:
    """What a well-formed token says about itself (to be confirmed against its database row)."""

    token: str
    environment: Environment
    kind: KeyKind

    @property
    def prefix(self) -> str:
        return key_prefix(self.environment, self.kind)

    @property
    def last_four(self) -> str:
        return self.token[-4:]

    @property
    def hash(self) -> bytes:
        return hash_token(self.token)


def key_prefix(environment: Environment, kind: KeyKind) -> str:
    """``nm_live_sk_`` and the like: prod shows as ``live``."""
    return f"nm_{environment.key_label}_{kind.value}_"


def _checksum(body: str) -> str:
    value = zlib.crc32(body.encode("ascii"))
    digits = []
    for _ in range(CHECKSUM_LENGTH):
        value, digit = divmod(value, 62)
        digits.append(BASE62[digit])
    return "".join(reversed(digits))


def generate_token(environment: Environment, kind: KeyKind) -> ParsedToken:
    """A new random token for a key of `environment` and `kind`."""
    body = key_prefix(environment, kind) + "".join(
        secrets.choice(BASE62) for _ in range(RANDOM_LENGTH)
    )
    return ParsedToken(token=body + _checksum(body), environment=environment, kind=kind)


def parse_token(token: str) -> ParsedToken:
    """The token's environment and kind, or :class:`InvalidApiKey` if it is malformed or its
    checksum fails. Makes no database call."""
    match = TOKEN_PATTERN.fullmatch(token)
    if match is None:
        raise InvalidApiKey(
            "malformed API key: expected nm_<live|dev|staging>_<pk|sk>_ followed by 38 characters"
        )
    body = token[:-CHECKSUM_LENGTH]
    if not secrets.compare_digest(_checksum(body), match["checksum"]):
        raise InvalidApiKey("API key checksum failed: check that the key was copied whole")
    return ParsedToken(
        token=token,
        environment=_LABEL_TO_ENVIRONMENT[match["label"]],
        kind=KeyKind(match["kind"]),
    )


def hash_token(token: str) -> bytes:
    """What is stored and looked up: the SHA-256 of the whole token."""
    return hashlib.sha256(token.encode("utf-8")).digest()


def display_form(prefix: str, last_four: str) -> str:
    """How a stored key is shown: ``nm_live_sk_…a1B2``."""
    return f"{prefix}…{last_four}"
