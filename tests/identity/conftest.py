"""Fixtures for the identity tests: a frozen clock, a key set, an issuer, a verifier, a forger."""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Callable
from typing import Any

import pytest

from keel.identity import KeySet, SigningKey, TokenIssuer, TokenVerifier
from keel.testing import FrozenClock

ISSUER = "keel"
AUDIENCE = "gateway"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def segment(value: dict[str, Any] | str | bytes) -> str:
    """A token segment: a dict is JSON-encoded, text is JSON text, bytes are raw."""
    if isinstance(value, dict):
        value = json.dumps(value)
    if isinstance(value, str):
        value = value.encode("utf-8")
    return b64(value)


class Forger:
    """Builds tokens by hand, signed with a real key, to reach each check of the verifier."""

    def __init__(self, key: SigningKey, clock: FrozenClock) -> None:
        self.key = key
        self.clock = clock

    def header(self, **overrides: Any) -> dict[str, Any]:
        header: dict[str, Any] = {"alg": "EdDSA", "kid": self.key.kid, "typ": "JWT"}
        header.update(overrides)
        return {k: v for k, v in header.items() if v is not _DROP}

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(self.clock.now().timestamp())
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "sub": "agent-1",
            "aud": AUDIENCE,
            "iat": now,
            "nbf": now,
            "exp": now + 300,
            "jti": "jti-1",
            "tenant": "acme",
            "roles": ["support"],
            "scope": "billing:read tickets:write",
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not _DROP}

    def token(
        self,
        header: dict[str, Any] | str | bytes | None = None,
        claims: dict[str, Any] | str | bytes | None = None,
        *,
        key: SigningKey | None = None,
        sign: Callable[[bytes], bytes] | None = None,
    ) -> str:
        head = segment(self.header() if header is None else header)
        body = segment(self.claims() if claims is None else claims)
        signing_input = f"{head}.{body}".encode("ascii")
        if sign is None:
            sign = (key or self.key).sign
        return f"{head}.{body}.{b64(sign(signing_input))}"


_DROP: Any = object()


@pytest.fixture
def drop() -> Any:
    """Pass as a header or claim override to leave that member out."""
    return _DROP


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC))


@pytest.fixture
def keyset() -> KeySet:
    return KeySet.generate("k1")


@pytest.fixture
def issuer(keyset: KeySet, clock: FrozenClock) -> TokenIssuer:
    return TokenIssuer(keyset, ISSUER, clock=clock)


@pytest.fixture
def verifier(keyset: KeySet, clock: FrozenClock) -> TokenVerifier:
    return TokenVerifier(keyset, ISSUER, AUDIENCE, clock=clock)


@pytest.fixture
def forger(keyset: KeySet, clock: FrozenClock) -> Forger:
    return Forger(keyset.active, clock)
