"""Dashboard sessions: an operator API key exchanged for a signed, expiring cookie.

The cookie holds the key's id, an expiry and a random session id, signed with HMAC-SHA256 under
a key kept in the Keel home (``dashboard.key``, shared by every worker). It never holds the API
key itself. Each request re-reads the operator key, so revoking it ends its sessions at once.
The CSRF token of a session is an HMAC of its session id: every state-changing form carries it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["COOKIE", "Session", "Sessions"]

COOKIE = "keel_session"


@dataclass(frozen=True, slots=True)
class Session:
    key_id: str
    session_id: str
    expires: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _load_key(path: Path) -> bytes:
    try:
        data = path.read_bytes()
        if len(data) == 32:
            return data
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = os.urandom(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, key)
    finally:
        os.close(fd)
    return key


class Sessions:
    """Issue and read session cookies. Thread-safe (immutable after construction)."""

    def __init__(self, key_path: Path, *, ttl_seconds: int = 8 * 3600) -> None:
        try:
            self._key = _load_key(key_path)
        except FileExistsError:  # another worker made it first
            self._key = key_path.read_bytes()
        self.ttl = ttl_seconds

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode("ascii"), hashlib.sha256).digest())

    def issue(self, key_id: str) -> str:
        """A cookie value for a fresh session of ``key_id``."""
        body = {"k": key_id, "s": secrets.token_urlsafe(18), "e": int(time.time()) + self.ttl}
        payload = _b64(json.dumps(body, separators=(",", ":")).encode())
        return f"{payload}.{self._sign(payload)}"

    def read(self, cookie: str | None) -> Session | None:
        """The session in ``cookie``, or None if absent, forged, malformed or expired."""
        if not cookie or cookie.count(".") != 1 or len(cookie) > 512:
            return None
        payload, signature = cookie.split(".")
        if not hmac.compare_digest(signature, self._sign(payload)):
            return None
        try:
            body = json.loads(_unb64(payload))
            session = Session(str(body["k"]), str(body["s"]), int(body["e"]))
        except (ValueError, KeyError, TypeError):
            return None
        return session if session.expires > time.time() else None

    def csrf(self, session: Session) -> str:
        return self._sign(f"csrf:{session.session_id}")

    def csrf_ok(self, session: Session, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(str(token), self.csrf(session))
