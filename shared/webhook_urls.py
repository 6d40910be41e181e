"""Webhook URLs: parsed, not pattern-matched. One function, :func:`parse_webhook_url`, decides
for the API (its schema states the same grammar), the dashboard's form and every other caller.

The URL is parsed by `yarl`, the parser aiohttp connects with, and stored as yarl writes it back
(host names in their ASCII form: IDNA, ``xn--…``; other non-ASCII characters percent-encoded;
scheme and host in lower case; a default port left out), so what is stored is exactly what the
worker requests. Accepted: ``http://`` or ``https://``, a host name (international names too),
an IPv4 address or a bracketed IPv6 address, any port from 1 to 65535, a path and a query.
Refused, each with a message saying what to change: spaces and control characters, other
schemes, a user name or password (credentials in a URL end up in logs), a ``#fragment`` (never
sent to a receiver: refused rather than silently dropped, so what is shown is what is called),
port 0 or past 65535, malformed percent-escapes, and more than :data:`MAX_URL_LENGTH` characters
typed or stored.

Whether the host may be reached (SSRF) is the worker's decision, at delivery time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final
from urllib.parse import quote

from yarl import URL

from shared.errors import InvalidInput

MAX_URL_LENGTH: Final = 2048

# Non-ASCII characters allowed (RFC 3987's ucschar in the Basic Multilingual Plane, less every
# space, control and general punctuation character): international host names, paths, queries.
_UCS: Final = (
    r"\u00a1-\u167f\u1681-\u1fff\u2070-\u2fff\u3001-\ud7ff\uf900-\ufdcf\ufdf0-\ufefe\uff00-\uffef"
)
_PCT: Final = r"%[0-9A-Fa-f]{2}"
_PCHAR: Final = rf"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@{_UCS}]|{_PCT})"
_LABEL: Final = rf"[A-Za-z0-9_\-{_UCS}]+"
_REG_NAME: Final = rf"{_LABEL}(?:\.{_LABEL})*\.?"
_OCTET: Final = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_IPV4: Final = rf"{_OCTET}(?:\.{_OCTET}){{3}}"
_H16: Final = r"[0-9A-Fa-f]{1,4}"
_LS32: Final = rf"(?:{_H16}:{_H16}|{_IPV4})"
# RFC 3986's IPv6address, alternative by alternative (no zone identifiers).
_IPV6: Final = (
    "(?:"
    + "|".join(
        [
            rf"(?:{_H16}:){{6}}{_LS32}",
            rf"::(?:{_H16}:){{5}}{_LS32}",
            rf"(?:{_H16})?::(?:{_H16}:){{4}}{_LS32}",
            rf"(?:(?:{_H16}:){{0,1}}{_H16})?::(?:{_H16}:){{3}}{_LS32}",
            rf"(?:(?:{_H16}:){{0,2}}{_H16})?::(?:{_H16}:){{2}}{_LS32}",
            rf"(?:(?:{_H16}:){{0,3}}{_H16})?::{_H16}:{_LS32}",
            rf"(?:(?:{_H16}:){{0,4}}{_H16})?::{_LS32}",
            rf"(?:(?:{_H16}:){{0,5}}{_H16})?::{_H16}",
            rf"(?:(?:{_H16}:){{0,6}}{_H16})?::",
        ]
    )
    + ")"
)
_PORT: Final = (
    r"(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})"
)
_HOST: Final = rf"(?:\[{_IPV6}\]|{_REG_NAME})"
URL_PATTERN: Final = (
    rf"^[Hh][Tt][Tt][Pp][Ss]?://{_HOST}(?::{_PORT})?(?:/{_PCHAR}*)*(?:\?(?:{_PCHAR}|[/?])*)?$"
)
"""The accepted grammar, as the API schema states it (a JSON Schema `pattern`)."""
URL_DESCRIPTION: Final = (
    "The receiver's absolute http:// or https:// URL, at most 2048 characters: a host name"
    " (international names are stored in their ASCII form, xn--…), an IPv4 address or a"
    " bracketed IPv6 address, an optional port from 1 to 65535, a path and a query."
    " No spaces, user name or password, or #fragment."
)

_URL: Final = re.compile(URL_PATTERN)
_SCHEME: Final = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):")
_SPACE_OR_CONTROL: Final = re.compile(
    r"[\x00-\x20\x7f-\xa0\u1680\u2000-\u200f\u2028-\u202f\u205f\u3000\ufeff]"
)
_IPV6_HOST: Final = re.compile(rf"\[{_IPV6}\]")
_HOST_NAME: Final = re.compile(_REG_NAME)
_PORT_TEXT: Final = re.compile(_PORT)
_BAD_ESCAPE: Final = re.compile(r"%(?![0-9A-Fa-f]{2})")
_TAIL_CHAR: Final = re.compile(rf"[A-Za-z0-9\-._~!$&'()*+,;=:@/?%{_UCS}]")


@dataclass(frozen=True, slots=True)
class WebhookUrl:
    """A webhook URL as stored and requested (`url`), and as a person reads it (`display`)."""

    url: str
    display: str


def _refuse(message: str) -> InvalidInput:
    return InvalidInput(f"webhook URL: {message}")


def _split_authority(rest: str) -> tuple[str, str]:
    end = len(rest)
    for delimiter in "/?#":
        found = rest.find(delimiter)
        if found != -1:
            end = min(end, found)
    return rest[:end], rest[end:]


def _check_authority(authority: str) -> None:
    if "@" in authority:
        raise _refuse(
            "remove the user name and password before '@': credentials in a URL end up in logs;"
            " receivers verify the webhook signature instead"
        )
    if not authority:
        raise _refuse("name the receiver's host, e.g. https://hooks.example.com/webhooks")
    port: str | None = None
    if authority.startswith("["):
        host, _, after = authority.partition("]")
        host += "]"
        if after:
            if not after.startswith(":"):
                raise _refuse(f"expected ':' and a port after {host}")
            port = after[1:]
        if _IPV6_HOST.fullmatch(host) is None:
            raise _refuse(f"{host} is not a valid IPv6 address (zone ids such as %eth0 are not)")
    else:
        host, colon, after = authority.rpartition(":")
        if colon:
            port = after
        else:
            host = authority
        if _HOST_NAME.fullmatch(host) is None:
            raise _refuse(
                f"{host!r} is not a valid host name: use letters, digits, hyphens and dots"
                " (international names are fine), an IPv4 address or [an IPv6 address]"
            )
    if port is not None and _PORT_TEXT.fullmatch(port) is None:
        shown = port or "nothing"
        raise _refuse(
            f"the port must be a number from 1 to 65535 without leading zeros, not {shown}"
            " (leave it out for the scheme's default: 443 for https, 80 for http)"
        )


def _check_tail(tail: str) -> None:
    if "#" in tail:
        raise _refuse(
            "remove the #fragment: it is never sent to the receiver (put what it says in the path"
            " or the query)"
        )
    if _BAD_ESCAPE.search(tail):
        raise _refuse(
            "'%' must start an escape of two hexadecimal digits: write a literal % as %25"
        )
    for char in tail:
        if _TAIL_CHAR.fullmatch(char) is None:
            raise _refuse(f"{char!r} is not allowed in a URL: percent-encode it as {quote(char)}")


def parse_webhook_url(text: str) -> WebhookUrl:
    """`text` as a webhook URL, or :class:`InvalidInput` saying what to change. Surrounding
    spaces are refused like any other (a form trims what it was pasted first)."""
    cleaned = text
    if not cleaned:
        raise _refuse("enter the receiver's URL, e.g. https://hooks.example.com/webhooks")
    if len(cleaned) > MAX_URL_LENGTH:
        raise _refuse(f"at most {MAX_URL_LENGTH} characters ({len(cleaned)} given)")
    if _SPACE_OR_CONTROL.search(cleaned):
        raise _refuse(
            "no spaces or control characters: percent-encode a space in the path or query as %20"
        )
    scheme = _SCHEME.match(cleaned)
    if scheme is None or not cleaned[scheme.end() :].startswith("//"):
        raise _refuse("must start with https:// (or http://), e.g. https://hooks.example.com/in")
    if scheme.group(1).lower() not in {"http", "https"}:
        raise _refuse(f"{scheme.group(1)}: URLs are not delivered to: use https:// (or http://)")
    authority, tail = _split_authority(cleaned[scheme.end() + 2 :])
    _check_authority(authority)
    _check_tail(tail)
    if _URL.fullmatch(cleaned) is None:  # The grammar the schema states; the checks above explain.
        raise _refuse("not a valid http:// or https:// URL")
    try:
        parsed = URL(cleaned)
        stored = str(parsed)
        display = parsed.human_repr()
    except (ValueError, UnicodeError):
        raise _refuse(
            "the host name is not a valid international (IDNA) name: check its spelling, or its"
            " xn-- form"
        ) from None
    if len(stored) > MAX_URL_LENGTH:
        raise _refuse(
            f"at most {MAX_URL_LENGTH} characters once written in ASCII ({len(stored)}):"
            " international characters take several each"
        )
    return WebhookUrl(url=stored, display=display)


def display_form(stored: str) -> str:
    """How a person reads a stored URL: its host name in Unicode (for an IDNA name), the rest
    decoded; the stored form itself when it cannot be read back."""
    try:
        return URL(stored, encoded=True).human_repr()
    except (ValueError, UnicodeError):
        return stored
