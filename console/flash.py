"""One-time messages across a redirect (POST/redirect/GET): what a form's action tells the page it
redirects to: a new secret, a refusal with its hint, a notice.

A message travels in a cookie encrypted and authenticated with Fernet (AES-CBC and HMAC-SHA256,
with a timestamp): HttpOnly, valid for :data:`FLASH_TTL_SECONDS`, bound to the signed-in user and
to the page it is for, and deleted by the response that shows it.
Each message also carries a random id, recorded in Postgres (`private.console_flashes_shown`) by
the first replica that shows it: every replica refuses an id already recorded, so a flash is shown
once whichever replica (behind whatever load balancer) serves the page. So a secret is never in a
URL, never stored server-side (only the random id is), never in a log line, and shown on exactly
one page load.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Final, Literal
from uuid import UUID

from cryptography.fernet import Fernet, InvalidToken

from shared.db import Database

FLASH_COOKIE: Final = "parity_flash"
FLASH_TTL_SECONDS: Final = 120
"""Long enough for a redirect on a slow connection; a reload after that shows nothing."""

MAX_TEXT: Final = 400
MAX_SEALED: Final = 3800
"""Browsers keep cookies of about 4 KB, name and attributes included."""
_SHORTENED: Final = ("notice", "error", "hint", "secret_label")

IssuedFor = Literal["key", "endpoint", "promotion"]

# Records a flash as shown, unless some replica did already (then no row comes back). Rows of
# flashes whose cookies can no longer be opened are purged on the way (an index on expires_at).
_SHOWN = """
with purged as (
    delete from private.console_flashes_shown where expires_at < now() - interval '1 minute'
)
insert into private.console_flashes_shown (flash_id, expires_at)
values (%(flash_id)s, %(expires_at)s)
on conflict (flash_id) do nothing
returning flash_id
"""


@dataclass(frozen=True, slots=True)
class Flash:
    """What one page load shows once."""

    target: str
    """The path of the page that shows it."""
    user_id: str
    notice: str | None = None
    error: str | None = None
    hint: str | None = None
    issued_for: IssuedFor | None = None
    secret_label: str | None = None
    """What the secret belongs to: the key's name, the endpoint's URL."""
    secret: str | None = field(default=None, repr=False)
    secrets: dict[str, str] = field(default_factory=dict, repr=False)
    """Several secrets at once, by what each belongs to: a promotion's new endpoints' signing
    secrets, by endpoint name."""
    section: str = ""
    """The id of the part of the page it concerns, where it is shown (empty: the top)."""
    form: dict[str, str] = field(default_factory=dict)
    """Fields of a refused form, to fill it in again (never secrets)."""
    nonce: str = field(default_factory=lambda: secrets.token_urlsafe(12))


class FlashBox:
    """Seals flashes into cookie values and opens each one once."""

    def __init__(self, secret: str | None) -> None:
        # A key of its own, derived from the console's secret: a flash cookie is no CSRF token.
        # Without a shared secret (Supabase's JWKS only) the key is this process's own, as the
        # CSRF key is: a flash then opens only on the replica that sealed it.
        seed = secret.encode() if secret is not None else secrets.token_bytes(32)
        key = hmac.new(seed, b"console flash", hashlib.sha256).digest()
        self._fernet = Fernet(base64.urlsafe_b64encode(key))

    def seal(self, flash: Flash) -> str:
        data = asdict(flash)
        # A cookie holds about 4 KB: texts that echo input (an endpoint's URL, a refused value)
        # are shortened so the flash is never silently dropped by the browser.
        for name in _SHORTENED:
            text = data[name]
            if text is not None and len(text) > MAX_TEXT:
                data[name] = text[: MAX_TEXT - 1] + "…"
        return self._fernet.encrypt(json.dumps(data).encode()).decode("ascii")

    def fits(self, flash: Flash) -> bool:
        """Whether the sealed flash fits in a cookie the browser keeps (it would drop a larger
        one silently, and a secret with it)."""
        return len(self.seal(flash)) <= MAX_SEALED

    def read(self, value: str | None, *, path: str, user_id: UUID) -> Flash | None:
        """The flash in `value` if it is genuine, fresh, for this page and this user (shown before
        or not: :meth:`take` asks that); otherwise None."""
        if not value:
            return None
        try:
            data = json.loads(self._fernet.decrypt(value.encode("ascii"), ttl=FLASH_TTL_SECONDS))
            flash = Flash(**data)
        except (InvalidToken, ValueError, TypeError, UnicodeEncodeError):
            return None
        if flash.target != path or flash.user_id != str(user_id):
            return None
        return flash

    async def take(
        self, db: Database, value: str | None, *, path: str, user_id: UUID
    ) -> Flash | None:
        """:meth:`read`, once across every replica: the first call records the flash as shown
        (in the platform's database, as the service), every later one gets None."""
        flash = self.read(value, path=path, user_id=user_id)
        if flash is None or value is None:
            return None
        sealed_at = self._fernet.extract_timestamp(value.encode("ascii"))
        expires_at = datetime.fromtimestamp(sealed_at + FLASH_TTL_SECONDS, UTC)
        async with db.as_service() as conn:
            cur = await conn.execute(_SHOWN, {"flash_id": flash.nonce, "expires_at": expires_at})
            first = await cur.fetchone()
        return flash if first is not None else None
