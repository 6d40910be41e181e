"""Session tokens: HS256 with the shared secret, asymmetric keys from a JWKS served over real
HTTP on loopback, and everything else refused. Settings come from CONSOLE_* variables."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any
from uuid import uuid4

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from pydantic import ValidationError

from console.auth import Authenticator, Csrf, CsrfFailed, Unauthenticated
from console.settings import ConsoleSettings
from shared.users import User
from tests.console.conftest import TEST_SECRET, json_server


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    return {
        "sub": str(uuid4()),
        "role": "authenticated",
        "aud": "authenticated",
        "iat": now,
        "exp": now + 60,
        **overrides,
    }


@pytest.fixture
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def jwks_url(rsa_key: rsa.RSAPrivateKey) -> Iterator[str]:
    """A JWKS document served over HTTP on a free loopback port, as Supabase Auth serves it."""
    jwk = json.loads(RSAAlgorithm.to_jwk(rsa_key.public_key()))
    document = {"keys": [{**jwk, "kid": "k1", "alg": "RS256", "use": "sig"}]}
    with json_server(lambda method, path, headers, body: (200, document)) as base:
        yield f"{base}/auth/v1/.well-known/jwks.json"


async def test_issued_tokens_verify_and_carry_the_user() -> None:
    auth = Authenticator(ConsoleSettings(_env_file=None, jwt_secret=TEST_SECRET))
    user = User(id=uuid4(), email="ada@example.com")
    session = await auth.verify(auth.issue(user))
    assert (session.user_id, session.email) == (user.id, user.email)
    assert session.claims["role"] == "authenticated"


@pytest.mark.parametrize(
    ("token_claims", "secret", "reason"),
    [
        (claims(exp=int(time.time()) - 10), TEST_SECRET, "expired"),
        (claims(), "another-secret-of-at-least-thirty-two-chars", "Signature"),
        (claims(role="service_role"), TEST_SECRET, "not belong to a signed-in user"),
        (claims(role="anon"), TEST_SECRET, "not belong to a signed-in user"),
        (claims(aud="somebody-else"), TEST_SECRET, "Audience"),
        (claims(sub="not-a-uuid"), TEST_SECRET, "subject"),
        ({k: v for k, v in claims().items() if k != "exp"}, TEST_SECRET, "exp"),
    ],
)
async def test_bad_tokens_are_refused(
    token_claims: dict[str, Any], secret: str, reason: str
) -> None:
    auth = Authenticator(ConsoleSettings(_env_file=None, jwt_secret=TEST_SECRET))
    with pytest.raises(Unauthenticated, match=reason):
        await auth.verify(jwt.encode(token_claims, secret, algorithm="HS256"))


async def test_unsigned_tokens_are_refused() -> None:
    auth = Authenticator(ConsoleSettings(_env_file=None, jwt_secret=TEST_SECRET))
    with pytest.raises(Unauthenticated, match="unsupported token algorithm 'none'"):
        await auth.verify(jwt.encode(claims(), key="", algorithm="none"))


async def test_asymmetric_tokens_verify_with_the_jwks(
    rsa_key: rsa.RSAPrivateKey, jwks_url: str
) -> None:
    settings = ConsoleSettings(_env_file=None, jwt_secret=TEST_SECRET, jwks_url=jwks_url)
    auth = Authenticator(settings)
    good = claims(email="ada@example.com")
    token = jwt.encode(good, rsa_key, algorithm="RS256", headers={"kid": "k1"})
    session = await auth.verify(token)
    assert str(session.user_id) == good["sub"]

    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode(good, stranger, algorithm="RS256", headers={"kid": "k1"})
    with pytest.raises(Unauthenticated):
        await auth.verify(forged)
    # Without a JWKS configured, asymmetric tokens are not accepted at all.
    plain = Authenticator(ConsoleSettings(_env_file=None, jwt_secret=TEST_SECRET))
    with pytest.raises(Unauthenticated, match="unsupported token algorithm 'RS256'"):
        await plain.verify(token)


def test_csrf_tokens_are_bound_to_their_nonce_and_secret() -> None:
    csrf = Csrf(TEST_SECRET)
    nonce = csrf.new_nonce()
    csrf.check(nonce, csrf.token_for(nonce))
    for bad_nonce, bad_token in [
        (nonce, Csrf("x" * 40).token_for(nonce)),
        (csrf.new_nonce(), csrf.token_for(nonce)),
        (None, csrf.token_for(nonce)),
        (nonce, None),
    ]:
        with pytest.raises(CsrfFailed):
            csrf.check(bad_nonce, bad_token)


def test_settings_come_from_console_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONSOLE_SESSION_TTL_SECONDS", "120")
    monkeypatch.setenv("SUPABASE_URL", "https://abc.supabase.co/")
    monkeypatch.setenv("SUPABASE_ANON_KEY", "anon")
    settings = ConsoleSettings(_env_file=None)
    assert settings.session_ttl_seconds == 120
    assert settings.jwt_secret is None and not settings.uses_dev_secret
    assert settings.uses_supabase_auth
    assert settings.effective_jwks_url == "https://abc.supabase.co/auth/v1/.well-known/jwks.json"
    monkeypatch.setenv("CONSOLE_SESSION_TTL_SECONDS", "5")
    with pytest.raises(ValidationError, match="session_ttl_seconds"):
        ConsoleSettings(_env_file=None)
    monkeypatch.delenv("CONSOLE_SESSION_TTL_SECONDS")
    monkeypatch.setenv("CONSOLE_JWT_SECRET", "short")
    with pytest.raises(ValidationError, match="jwt_secret"):
        ConsoleSettings(_env_file=None)
