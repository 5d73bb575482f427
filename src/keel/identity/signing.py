"""Optional request signing for HTTP callers: Ed25519 over method, target, body digest and time.

The caller sends five headers:

==================  ==========================================================================
``Keel-Key-Id``     the signing key's id (must match a verifier key exactly)
``Keel-Timestamp``  signing time, integer seconds since the epoch
``Keel-Nonce``      16–128 characters of ``A-Z a-z 0-9 _ -``, never reused with the same key
``Content-Digest``  ``sha-256=:<base64 of SHA-256(body)>:`` (RFC 9530)
``Keel-Signature``  base64url Ed25519 signature over the signature base below
==================  ==========================================================================

The signature base is, lines joined by ``\\n``::

    keel-request-v1
    method: POST
    target: /v1/tools/call?dry_run=1
    content-digest: sha-256=:...:
    timestamp: 1767225600
    nonce: 3q2-7wAAAAAAAAAAAAAAAA
    key-id: k1

No field may contain a line break, so the base is unambiguous. A request is refused
(``AuthenticationError``) if a header is missing or malformed (``request_signature_missing``,
``request_malformed``), the key is unknown (``request_unknown_key``), the timestamp is outside
the window (``request_timestamp``), the body does not match the digest (``request_digest``),
the signature does not verify over this method and target (``request_bad_signature``), or the
nonce was seen before (``request_replayed``). Nonces live in the store's ``request_nonces``
table until their request could no longer pass the timestamp check, so replay protection
survives a restart.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import hmac
import math
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from keel.core import Clock, SystemClock
from keel.errors import AuthenticationError, UsageError
from keel.identity._b64 import b64url_decode, b64url_encode
from keel.identity.keys import PublicKey, PublicKeyResolver, SigningKey
from keel.store import Store

__all__ = [
    "DEFAULT_WINDOW",
    "HEADER_DIGEST",
    "HEADER_KEY_ID",
    "HEADER_NONCE",
    "HEADER_SIGNATURE",
    "HEADER_TIMESTAMP",
    "RequestVerifier",
    "SignedRequest",
    "content_digest",
    "sign_request",
    "signature_base",
]

HEADER_KEY_ID: Final = "Keel-Key-Id"
HEADER_TIMESTAMP: Final = "Keel-Timestamp"
HEADER_NONCE: Final = "Keel-Nonce"
HEADER_DIGEST: Final = "Content-Digest"
HEADER_SIGNATURE: Final = "Keel-Signature"
DEFAULT_WINDOW: Final = _dt.timedelta(seconds=300)

_HEADERS: Final = (HEADER_KEY_ID, HEADER_TIMESTAMP, HEADER_NONCE, HEADER_DIGEST, HEADER_SIGNATURE)
_METHOD = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,32}")
_TARGET = re.compile(r"/[\x21-\x7e]{0,8191}")
_NONCE = re.compile(r"[A-Za-z0-9_-]{16,128}")
_TIMESTAMP = re.compile(r"[0-9]{1,11}")
_KID = re.compile(r"[A-Za-z0-9._-]{1,128}")
_TIME_FORMAT: Final = "%Y-%m-%dT%H:%M:%S.%fZ"


def content_digest(body: bytes) -> str:
    """The RFC 9530 ``Content-Digest`` value for ``body``: ``sha-256=:<base64>:``."""
    return "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode("ascii") + ":"


def signature_base(
    method: str, target: str, digest: str, timestamp: int, nonce: str, key_id: str
) -> bytes:
    """The exact bytes a request signature covers (see the module doc)."""
    return (
        "keel-request-v1\n"
        f"method: {method}\n"
        f"target: {target}\n"
        f"content-digest: {digest}\n"
        f"timestamp: {timestamp}\n"
        f"nonce: {nonce}\n"
        f"key-id: {key_id}"
    ).encode("ascii")


def sign_request(
    key: SigningKey,
    method: str,
    target: str,
    body: bytes,
    timestamp: _dt.datetime,
    nonce: str | None = None,
) -> dict[str, str]:
    """The headers that sign this request. ``target`` is the path plus query, as sent.

    ``nonce`` defaults to a fresh random one; never reuse a nonce with the same key. Raises
    UsageError if the method, target, timestamp or nonce is malformed.
    """
    if not _METHOD.fullmatch(method):
        raise UsageError(f"HTTP method {method!r} is not a valid method token")
    if not _TARGET.fullmatch(target):
        raise UsageError(
            f"request target {target!r} must start with '/' and be printable ASCII without "
            "spaces (percent-encode the rest)"
        )
    if timestamp.tzinfo is None:
        raise UsageError("request timestamp must be timezone-aware (UTC)")
    if nonce is None:
        nonce = secrets.token_urlsafe(24)
    elif not _NONCE.fullmatch(nonce):
        raise UsageError(f"nonce {nonce!r} must be 16 to 128 characters of A-Z a-z 0-9 _ -")
    seconds = math.floor(timestamp.timestamp())
    digest = content_digest(body)
    signature = key.sign(signature_base(method, target, digest, seconds, nonce, key.kid))
    return {
        HEADER_KEY_ID: key.kid,
        HEADER_TIMESTAMP: str(seconds),
        HEADER_NONCE: nonce,
        HEADER_DIGEST: digest,
        HEADER_SIGNATURE: b64url_encode(signature),
    }


@dataclass(frozen=True, slots=True)
class SignedRequest:
    """What a verified request signature established."""

    key_id: str
    nonce: str
    timestamp: _dt.datetime


def _refuse(code: str, message: str, **context: Any) -> AuthenticationError:
    return AuthenticationError(message, code=code, context=context)


class _MappingResolver:
    __slots__ = ("_keys",)

    def __init__(self, keys: Mapping[str, PublicKey]) -> None:
        for kid, key in keys.items():
            if kid != key.kid:
                raise UsageError(f"public key {key.kid!r} is filed under a different id {kid!r}")
        self._keys = dict(keys)

    def public_key(self, kid: str) -> PublicKey | None:
        return self._keys.get(kid) if type(kid) is str else None


class RequestVerifier:
    """Checks request signatures and remembers nonces in ``store`` (table ``request_nonces``).

    ``keys`` is a ``KeySet`` (or anything with ``public_key(kid)``), or a mapping of key id to
    ``PublicKey``. ``window`` is how far a request's timestamp may be from the verifier's clock,
    either way. Expired nonces are pruned at most every ``prune_interval`` during ``verify``, or
    on demand with ``prune()``.

    Thread-safe; ``verify`` blocks on one short store write transaction.
    """

    def __init__(
        self,
        keys: PublicKeyResolver | Mapping[str, PublicKey],
        store: Store,
        clock: Clock | None = None,
        window: _dt.timedelta = DEFAULT_WINDOW,
        prune_interval: _dt.timedelta = _dt.timedelta(seconds=60),
    ) -> None:
        if window <= _dt.timedelta(0):
            raise UsageError(f"window must be positive, not {window!r}")
        self._keys: PublicKeyResolver = (
            _MappingResolver(keys) if isinstance(keys, Mapping) else keys
        )
        self._store = store
        self._clock: Clock = clock or SystemClock()
        self._window = window
        self._prune_interval = prune_interval.total_seconds()
        self._last_prune: float | None = None

    def verify(
        self, method: str, target: str, headers: Mapping[str, str], body: bytes
    ) -> SignedRequest:
        """Check the request's signature and consume its nonce; AuthenticationError if refused."""
        values = self._headers(headers)
        key_id = values[HEADER_KEY_ID]
        nonce = values[HEADER_NONCE]
        if not _METHOD.fullmatch(method) or not _TARGET.fullmatch(target):
            raise _refuse("request_malformed", "request method or target is malformed")
        if not _KID.fullmatch(key_id):
            raise _refuse("request_unknown_key", f"request key id {key_id[:64]!r} is malformed")
        key = self._keys.public_key(key_id)
        if key is None:
            raise _refuse(
                "request_unknown_key",
                f"request key id {key_id!r} names no known key (ids must match exactly)",
                kid=key_id,
            )
        if not _NONCE.fullmatch(nonce):
            raise _refuse(
                "request_malformed",
                f"header {HEADER_NONCE} must be 16 to 128 characters of A-Z a-z 0-9 _ -",
            )
        raw_timestamp = values[HEADER_TIMESTAMP]
        if not _TIMESTAMP.fullmatch(raw_timestamp):
            raise _refuse(
                "request_malformed",
                f"header {HEADER_TIMESTAMP} must be whole seconds since the epoch",
            )
        seconds = int(raw_timestamp)
        signed_at = _dt.datetime.fromtimestamp(seconds, _dt.UTC)
        now = self._clock.now()
        skew = abs((now - signed_at).total_seconds())
        if skew > self._window.total_seconds():
            raise _refuse(
                "request_timestamp",
                f"request was signed at {signed_at.isoformat()}, {skew:.0f} s from the server's "
                f"time; the window is {self._window.total_seconds():.0f} s (check the clocks)",
                signed_at=signed_at.isoformat(),
            )
        digest = values[HEADER_DIGEST]
        if not hmac.compare_digest(digest.encode(), content_digest(body).encode()):
            raise _refuse(
                "request_digest",
                f"request body does not match its {HEADER_DIGEST} header (body changed after "
                "signing, or the digest is malformed)",
            )
        try:
            signature = b64url_decode(values[HEADER_SIGNATURE])
        except ValueError:
            raise _refuse(
                "request_malformed", f"header {HEADER_SIGNATURE} is not unpadded base64url"
            ) from None
        base = signature_base(method, target, digest, seconds, nonce, key_id)
        if not key.verify_signature(base, signature):
            raise _refuse(
                "request_bad_signature",
                f"request signature does not verify with key {key_id!r} over this method, "
                "target, body digest, timestamp and nonce",
                kid=key_id,
            )
        self._consume_nonce(key_id, nonce, signed_at + self._window, now)
        return SignedRequest(key_id=key_id, nonce=nonce, timestamp=signed_at)

    def prune(self) -> int:
        """Delete nonces whose requests can no longer pass the timestamp check; return count."""
        now = self._clock.now().strftime(_TIME_FORMAT)
        with self._store.write() as tx:
            deleted = tx.execute("DELETE FROM request_nonces WHERE expires_at < ?", (now,))
        self._last_prune = self._clock.monotonic()
        return deleted

    def _headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        wanted = {name.lower(): name for name in _HEADERS}
        found: dict[str, str] = {}
        for name, value in headers.items():
            canonical = wanted.get(name.lower())
            if canonical is None:
                continue
            if canonical in found and found[canonical] != value:
                raise _refuse(
                    "request_malformed", f"header {canonical} appears twice with different values"
                )
            if not isinstance(value, str) or not value.isascii() or "\n" in value or "\r" in value:
                raise _refuse("request_malformed", f"header {canonical} is not one ASCII line")
            found[canonical] = value.strip(" \t")
        missing = [name for name in _HEADERS if name not in found]
        if missing:
            raise _refuse(
                "request_signature_missing",
                f"request signature headers are missing: {', '.join(missing)}",
                missing=missing,
            )
        return found

    def _consume_nonce(
        self, key_id: str, nonce: str, expires: _dt.datetime, now: _dt.datetime
    ) -> None:
        now_text = now.strftime(_TIME_FORMAT)
        prune = (
            self._last_prune is None
            or self._clock.monotonic() - self._last_prune >= self._prune_interval
        )
        with self._store.write(locks=()) as tx:  # the insert decides, atomically
            if prune:
                tx.execute("DELETE FROM request_nonces WHERE expires_at < ?", (now_text,))
            else:
                tx.execute(
                    "DELETE FROM request_nonces WHERE key_id = ? AND nonce = ? AND expires_at < ?",
                    (key_id, nonce, now_text),
                )
            inserted = tx.execute(
                "INSERT INTO request_nonces (key_id, nonce, expires_at) VALUES (?, ?, ?) "
                "ON CONFLICT (key_id, nonce) DO NOTHING",
                (key_id, nonce, expires.strftime(_TIME_FORMAT)),
            )
        if prune:
            self._last_prune = self._clock.monotonic()
        if inserted != 1:
            raise _refuse(
                "request_replayed",
                f"request nonce {nonce!r} was already used with key {key_id!r}: replay refused",
                kid=key_id,
            )
