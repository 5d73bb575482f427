"""Ed25519 keys with key ids, key sets with rotation, and JWK key files.

A ``KeySet`` holds verification keys by exact key id (``kid``), each pinned to the algorithm EdDSA
(RFC 8725 §3.1: one algorithm per key), and at most one *active* signing key. ``rotate()`` makes a
new active key; older public keys keep verifying until ``retire(kid)`` removes them.

Key files are JSON Web Key Sets (RFC 7517) of ``kty: OKP`` / ``crv: Ed25519`` keys (RFC 8037),
plus an ``active`` member naming the signing key. A file holding private parts is written with
mode 0600 and refused on load when group or others may read it.

``SigningKey``, ``PublicKey`` and ``KeySet`` all speak the small duck-typed interface that other
packages (audit checkpoints) use: an attribute ``key_id``, ``sign(data) -> bytes`` (signers only)
and ``verify(key_id, data, signature) -> bool``.

Thread safety: ``KeySet`` is safe to share; lookups take no lock (the key map is replaced, never
mutated, on ``rotate``/``retire``/``add``). Keys themselves are immutable.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final, Protocol, runtime_checkable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from keel.canonical import canonical_json, parse_json
from keel.errors import ConfigError, InvalidRequestError, UsageError
from keel.identity._b64 import b64url_decode, b64url_encode

__all__ = [
    "ALGORITHM",
    "KeySet",
    "PublicKey",
    "PublicKeyResolver",
    "SignatureVerifier",
    "Signer",
    "SigningKey",
    "check_kid",
]

#: The only signature algorithm Keel issues or accepts (JOSE name for Ed25519).
ALGORITHM: Final = "EdDSA"

_KID = re.compile(r"[A-Za-z0-9._-]{1,128}")
_KEY_BYTES = 32
_SIGNATURE_BYTES = 64
_MAX_FILE_BYTES = 1024 * 1024


@runtime_checkable
class Signer(Protocol):
    """Something that signs bytes under a key id (an active key)."""

    @property
    def key_id(self) -> str: ...

    def sign(self, data: bytes) -> bytes: ...


@runtime_checkable
class SignatureVerifier(Protocol):
    """Something that checks a signature made under a named key id; never raises."""

    def verify(self, key_id: str, data: bytes, signature: bytes) -> bool: ...


class PublicKeyResolver(Protocol):
    """Looks up a verification key by exact key id; ``None`` when unknown."""

    def public_key(self, kid: str) -> PublicKey | None: ...


def check_kid(kid: object) -> str:
    """Return ``kid`` if it is a valid key id (1–128 of ``A-Z a-z 0-9 . _ -``); else UsageError."""
    if not isinstance(kid, str) or not _KID.fullmatch(kid):
        raise UsageError(
            f"key id {kid!r} is invalid: use 1 to 128 characters from A-Z, a-z, 0-9, '.', '_', '-'",
            code="invalid_key_id",
        )
    return kid


def _thumbprint(raw_public: bytes) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url) of an Ed25519 public key."""
    members = {"crv": "Ed25519", "kty": "OKP", "x": b64url_encode(raw_public)}
    return b64url_encode(hashlib.sha256(canonical_json(members).encode("ascii")).digest())


class PublicKey:
    """An Ed25519 verification key with its key id, pinned to the algorithm EdDSA."""

    __slots__ = ("_key", "_raw", "kid")

    algorithm: Final = ALGORITHM

    def __init__(self, kid: str, key: Ed25519PublicKey) -> None:
        self.kid = check_kid(kid)
        self._key = key
        self._raw = key.public_bytes(Encoding.Raw, PublicFormat.Raw)

    @classmethod
    def from_bytes(cls, kid: str, raw: bytes) -> PublicKey:
        """Build from the 32 raw public key bytes."""
        if len(raw) != _KEY_BYTES:
            raise UsageError(f"an Ed25519 public key is {_KEY_BYTES} bytes, not {len(raw)}")
        return cls(kid, Ed25519PublicKey.from_public_bytes(raw))

    @property
    def key_id(self) -> str:
        return self.kid

    @property
    def raw(self) -> bytes:
        """The 32 raw public key bytes."""
        return self._raw

    @property
    def thumbprint(self) -> str:
        """The RFC 7638 JWK thumbprint (SHA-256, base64url) of this key; independent of kid."""
        return _thumbprint(self._raw)

    def verify_signature(self, data: bytes, signature: bytes) -> bool:
        """True if ``signature`` is this key's valid Ed25519 signature over ``data``."""
        if len(signature) != _SIGNATURE_BYTES:
            return False
        try:
            self._key.verify(signature, data)
        except (InvalidSignature, TypeError, ValueError):
            return False
        return True

    def verify(self, key_id: str, data: bytes, signature: bytes) -> bool:
        """True if ``key_id`` is exactly this key's id and the signature is valid."""
        return key_id == self.kid and self.verify_signature(data, signature)

    def to_jwk(self) -> dict[str, str]:
        """The public JWK (RFC 8037) of this key."""
        return {
            "kty": "OKP",
            "crv": "Ed25519",
            "kid": self.kid,
            "alg": ALGORITHM,
            "use": "sig",
            "x": b64url_encode(self._raw),
        }

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PublicKey):
            return NotImplemented
        return self.kid == other.kid and self._raw == other._raw

    def __hash__(self) -> int:
        return hash((self.kid, self._raw))

    def __repr__(self) -> str:
        return f"PublicKey(kid={self.kid!r})"


class SigningKey:
    """An Ed25519 private key with its key id. ``repr`` never shows the private part."""

    __slots__ = ("_private", "kid", "public")

    algorithm: Final = ALGORITHM

    def __init__(self, kid: str, private: Ed25519PrivateKey) -> None:
        self.kid = check_kid(kid)
        self._private = private
        self.public = PublicKey(kid, private.public_key())

    @classmethod
    def generate(cls, kid: str | None = None) -> SigningKey:
        """A fresh random key; its key id defaults to the key's RFC 7638 thumbprint."""
        private = Ed25519PrivateKey.generate()
        if kid is None:
            kid = _thumbprint(private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))
        return cls(kid, private)

    @classmethod
    def from_bytes(cls, kid: str, raw: bytes) -> SigningKey:
        """Build from the 32 raw private key bytes (the Ed25519 seed)."""
        if len(raw) != _KEY_BYTES:
            raise UsageError(f"an Ed25519 private key is {_KEY_BYTES} bytes, not {len(raw)}")
        return cls(kid, Ed25519PrivateKey.from_private_bytes(raw))

    @property
    def key_id(self) -> str:
        return self.kid

    def sign(self, data: bytes) -> bytes:
        """The 64-byte Ed25519 signature over ``data``."""
        return self._private.sign(data)

    def verify(self, key_id: str, data: bytes, signature: bytes) -> bool:
        """True if ``key_id`` is exactly this key's id and the signature is valid."""
        return self.public.verify(key_id, data, signature)

    def to_jwk(self, *, include_private: bool = True) -> dict[str, str]:
        """The JWK of this key; the private part ``d`` only if ``include_private``."""
        jwk = self.public.to_jwk()
        if include_private:
            seed = self._private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
            jwk["d"] = b64url_encode(seed)
        return jwk

    def __repr__(self) -> str:
        return f"SigningKey(kid={self.kid!r})"


def _jwk_bytes(jwk: Mapping[str, Any], member: str, where: str, source: str) -> bytes:
    value = jwk.get(member)
    try:
        if not isinstance(value, str):
            raise ValueError("not a string")
        raw = b64url_decode(value)
    except ValueError:
        raise ConfigError(
            f"{source}: {where}.{member} must be unpadded base64url text",
            context={"file": source, "key": f"{where}.{member}"},
        ) from None
    if len(raw) != _KEY_BYTES:
        raise ConfigError(
            f"{source}: {where}.{member} must encode {_KEY_BYTES} bytes, not {len(raw)}",
            context={"file": source, "key": f"{where}.{member}"},
        )
    return raw


def _key_from_jwk(jwk: object, where: str, source: str) -> SigningKey | PublicKey:
    if not isinstance(jwk, Mapping):
        raise ConfigError(
            f"{source}: {where} must be a JSON object (a JWK)",
            context={"file": source, "key": where},
        )
    expected = {"kty": "OKP", "crv": "Ed25519"}
    for member, value in expected.items():
        if jwk.get(member) != value:
            raise ConfigError(
                f"{source}: {where}.{member} is {jwk.get(member)!r}; only {value!r} keys are "
                "accepted (Ed25519, RFC 8037)",
                context={"file": source, "key": f"{where}.{member}"},
            )
    for member, value in (("alg", ALGORITHM), ("use", "sig")):
        if member in jwk and jwk[member] != value:
            raise ConfigError(
                f"{source}: {where}.{member} is {jwk[member]!r}; Ed25519 keys are pinned to "
                f"{value!r}",
                context={"file": source, "key": f"{where}.{member}"},
            )
    try:
        kid = check_kid(jwk.get("kid"))
    except UsageError as exc:
        raise ConfigError(
            f"{source}: {where}.kid: {exc.message}", context={"file": source, "key": f"{where}.kid"}
        ) from None
    x = _jwk_bytes(jwk, "x", where, source)
    if "d" not in jwk:
        return PublicKey.from_bytes(kid, x)
    key = SigningKey.from_bytes(kid, _jwk_bytes(jwk, "d", where, source))
    if key.public.raw != x:
        raise ConfigError(
            f"{source}: {where} (kid {kid!r}): the private part 'd' does not match the public "
            "part 'x'",
            context={"file": source, "key": f"{where}.d"},
        )
    return key


def _write_file(path: Path, text: str, mode: int, *, exclusive: bool) -> bool:
    """Write ``text`` to ``path`` atomically with ``mode``; if ``exclusive``, never overwrite.

    Returns False if ``exclusive`` and the file already existed (nothing written). Raises
    ConfigError if the file cannot be written.
    """
    try:
        return _write_file_unchecked(path, text, mode, exclusive=exclusive)
    except OSError as exc:
        raise ConfigError(
            f"cannot write key file {str(path)!r}: {exc.strerror or exc}",
            context={"file": str(path)},
        ) from None


def _write_file_unchecked(path: Path, text: str, mode: int, *, exclusive: bool) -> bool:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        if not exclusive:
            os.replace(tmp, path)
            return True
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError:  # hard links unsupported here: best effort
            if path.exists():
                return False
            os.replace(tmp, path)
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


class KeySet:
    """Verification keys by exact key id, each pinned to EdDSA, and one active signing key.

    A key set without private keys verifies only (``has_signing_key`` is False). ``version``
    increases whenever a key stops verifying, so caches of verified results can be dropped.
    """

    def __init__(
        self, keys: Iterable[SigningKey | PublicKey] = (), *, active: str | None = None
    ) -> None:
        signing: dict[str, SigningKey] = {}
        public: dict[str, PublicKey] = {}
        for key in keys:
            if key.kid in public:
                raise UsageError(f"key id {key.kid!r} appears twice in the key set")
            if isinstance(key, SigningKey):
                signing[key.kid] = key
                public[key.kid] = key.public
            else:
                public[key.kid] = key
        if active is not None and active not in signing:
            raise UsageError(
                f"the active key {active!r} must be a signing key (with its private part) in "
                "the key set"
            )
        self._lock = threading.Lock()
        self._signing = signing
        self._public = public
        self._active: SigningKey | None = signing[active] if active is not None else None
        self._version = 0

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def generate(cls, kid: str | None = None) -> KeySet:
        """A key set with one fresh active signing key."""
        key = SigningKey.generate(kid)
        return cls([key], active=key.kid)

    @classmethod
    def from_jwks(cls, data: object, *, source: str = "key set") -> KeySet:
        """Build from a decoded JWKS document; ConfigError (naming ``source``) if malformed."""
        if not isinstance(data, Mapping):
            raise ConfigError(
                f"{source}: a key set must be a JSON object", context={"file": source}
            )
        unknown = sorted(set(data) - {"keys", "active"})
        if unknown:
            raise ConfigError(
                f"{source}: unknown members {unknown}; a key set has 'keys' and 'active'",
                context={"file": source, "key": unknown[0]},
            )
        raw_keys = data.get("keys")
        if not isinstance(raw_keys, list):
            raise ConfigError(
                f"{source}: 'keys' must be a list of JWKs", context={"file": source, "key": "keys"}
            )
        keys = [_key_from_jwk(jwk, f"keys[{i}]", source) for i, jwk in enumerate(raw_keys)]
        active = data.get("active")
        if active is not None and not isinstance(active, str):
            raise ConfigError(
                f"{source}: 'active' must be a key id", context={"file": source, "key": "active"}
            )
        try:
            return cls(keys, active=active)
        except UsageError as exc:
            raise ConfigError(
                f"{source}: {exc.message}", context={"file": source, "key": "keys"}
            ) from None

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> KeySet:
        """Load a key set from a JWKS file.

        Raises ConfigError if the file is malformed, or holds private keys and is readable by
        group or others (POSIX; fix with ``chmod 600``).
        """
        file = Path(path)
        source = str(file)
        try:
            mode = file.stat().st_mode
            data = file.read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"cannot read key file {source!r}: {exc.strerror}", context={"file": source}
            ) from None
        try:
            document = parse_json(data, max_bytes=_MAX_FILE_BYTES, what=f"key file {source}")
        except InvalidRequestError as exc:
            raise ConfigError(exc.message, context={"file": source}) from None
        keyset = cls.from_jwks(document, source=source)
        if keyset._signing and os.name == "posix" and mode & 0o077:
            raise ConfigError(
                f"key file {source!r} holds private keys but is readable by group or others "
                f"(mode {mode & 0o777:o}); run `chmod 600 {source}`",
                context={"file": source, "mode": f"{mode & 0o777:o}"},
            )
        return keyset

    @classmethod
    def load_or_create(cls, path: str | os.PathLike[str]) -> KeySet:
        """Load the key set at ``path``; if there is no file, generate one and save it (0600).

        Safe against a concurrent creator: the file is never overwritten once it exists.
        """
        file = Path(path)
        if not file.exists():
            keyset = cls.generate()
            text = _dump(keyset.to_jwks())
            if _write_file(file, text, 0o600, exclusive=True):
                return keyset
        return cls.load(file)

    # -- persistence ---------------------------------------------------------------------------

    def to_jwks(self, *, include_private: bool = True) -> dict[str, Any]:
        """The JWKS document; private parts and ``active`` only if ``include_private``."""
        signing, public, active = self._signing, self._public, self._active
        keys: list[dict[str, str]] = []
        for kid, key in public.items():
            if include_private and kid in signing:
                keys.append(signing[kid].to_jwk(include_private=True))
            else:
                keys.append(key.to_jwk())
        document: dict[str, Any] = {"keys": keys}
        if include_private and active is not None:
            document["active"] = active.kid
        return document

    def save(self, path: str | os.PathLike[str], *, include_private: bool = True) -> None:
        """Write the key set atomically; mode 0600 if private parts are written, else 0644."""
        private = include_private and bool(self._signing)
        _write_file(
            Path(path),
            _dump(self.to_jwks(include_private=include_private)),
            0o600 if private else 0o644,
            exclusive=False,
        )

    # -- queries -------------------------------------------------------------------------------

    @property
    def version(self) -> int:
        """Increases whenever a key stops verifying (``retire``)."""
        return self._version

    @property
    def has_signing_key(self) -> bool:
        return self._active is not None

    @property
    def active(self) -> SigningKey:
        """The signing key new signatures use; UsageError if this set only verifies."""
        active = self._active
        if active is None:
            raise UsageError(
                "this key set has no active signing key (it holds public keys only); load the "
                "private key file or call rotate()",
                code="no_signing_key",
            )
        return active

    @property
    def key_id(self) -> str:
        """The key id of the active signing key."""
        return self.active.kid

    @property
    def kids(self) -> tuple[str, ...]:
        """Key ids that verify, oldest first."""
        return tuple(self._public)

    def public_key(self, kid: str) -> PublicKey | None:
        """The verification key with exactly this key id, or None. No normalization."""
        if type(kid) is not str:
            return None
        return self._public.get(kid)

    def __contains__(self, kid: object) -> bool:
        return isinstance(kid, str) and kid in self._public

    def __len__(self) -> int:
        return len(self._public)

    def public_only(self) -> KeySet:
        """A copy holding only the public keys (for verifiers on other machines)."""
        return KeySet(self._public.values())

    # -- signing -------------------------------------------------------------------------------

    def sign(self, data: bytes) -> bytes:
        """Sign with the active key (its id is ``key_id``)."""
        return self.active.sign(data)

    def verify(self, key_id: str, data: bytes, signature: bytes) -> bool:
        """True if a key with exactly ``key_id`` is in the set and the signature is valid."""
        key = self.public_key(key_id)
        return key is not None and key.verify_signature(data, signature)

    # -- rotation ------------------------------------------------------------------------------

    def rotate(self, kid: str | None = None) -> SigningKey:
        """Generate a new active signing key; older keys keep verifying until retired."""
        key = SigningKey.generate(kid)
        with self._lock:
            if key.kid in self._public:
                raise UsageError(f"key id {key.kid!r} is already in the key set")
            self._signing = {**self._signing, key.kid: key}
            self._public = {**self._public, key.kid: key.public}
            self._active = key
        return key

    def add(self, key: SigningKey | PublicKey) -> None:
        """Add a key that verifies (and, for a SigningKey, may later be made active)."""
        with self._lock:
            if key.kid in self._public:
                raise UsageError(f"key id {key.kid!r} is already in the key set")
            if isinstance(key, SigningKey):
                self._signing = {**self._signing, key.kid: key}
                self._public = {**self._public, key.kid: key.public}
            else:
                self._public = {**self._public, key.kid: key}

    def retire(self, kid: str) -> None:
        """Stop verifying with key ``kid``. The active key cannot be retired (rotate first)."""
        with self._lock:
            if kid not in self._public:
                raise UsageError(f"key id {kid!r} is not in the key set", code="unknown_key")
            if self._active is not None and self._active.kid == kid:
                raise UsageError(
                    f"key {kid!r} is the active signing key; rotate() before retiring it",
                    code="retire_active_key",
                )
            self._signing = {k: v for k, v in self._signing.items() if k != kid}
            self._public = {k: v for k, v in self._public.items() if k != kid}
            self._version += 1

    def __repr__(self) -> str:
        active = self._active.kid if self._active is not None else None
        return f"KeySet(kids={list(self._public)!r}, active={active!r})"


def _dump(document: Mapping[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=True) + "\n"
