"""Content-addressed payload store: large values (prompts, tool outputs) stored once.

A run's journal stays small by keeping a *reference* to each large value instead of the value.
``Payloads.put`` stores the canonical JSON of a value once and returns its reference;
``Payloads.get`` returns the value, after proving that the bytes read are the bytes written.

References
    ``sha256:<hex>``       SHA-256 of the canonical JSON (``keel.canonical.digest``): equal values
                           get equal references, in any deployment.
    ``hmac-sha256:<hex>``  sensitive payloads: HMAC-SHA256 of the canonical JSON under a key
                           derived from the payload key. A plain hash of a low-entropy secret (a
                           card number, a password) could be reversed by guessing and would link
                           equal secrets across deployments; a keyed hash does neither. Equal
                           secrets still deduplicate inside one deployment (same key).

Encodings (the ``encoding`` column), applied in this order on write:
    ``json``               canonical JSON, UTF-8
    ``+zlib``              zlib-compressed when the JSON is over ``compress_above`` bytes and
                           compression makes it smaller
    ``+aesgcm``            sensitive payloads: AES-256-GCM, random 96-bit nonce, the reference as
                           associated data (a row cannot be moved under another reference).
                           Blob layout: ``0x01 | key id (8 bytes) | nonce (12) | ciphertext+tag``.

Integrity: ``get`` recomputes the digest of the decoded JSON and compares it with the reference;
an encrypted row must also pass GCM authentication. Tampered or truncated data raises
``PayloadIntegrityError`` — never wrong data. ``size`` is the length of the canonical JSON in bytes.

Keys: one 32-byte payload key. ``load_or_create_key(path)`` keeps it in a file created with mode
0600; ``key_from_env()`` reads ``KEEL_PAYLOAD_KEY`` (64 hex digits or base64 of 32 bytes), which
takes precedence where both are configured (the caller decides). The AES key, the HMAC key and the
key id are derived from it with HKDF-SHA256, so one secret serves all three without reuse. Rotate
by configuring the new key as ``key`` and the old one in ``previous_keys``: old payloads stay
readable (the blob names its key id), new ones use the new key.

Thread safety: a ``Payloads`` is immutable after construction and may be shared by threads; every
method blocks on the store.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
import stat
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from keel.canonical import canonical_json
from keel.core import Clock, SystemClock
from keel.errors import (
    ConfigError,
    InternalError,
    InvalidRequestError,
    PayloadTooLargeError,
)
from keel.store import Store, Transaction

__all__ = [
    "DEFAULT_PAYLOAD_KEY_ENV",
    "KEY_BYTES",
    "PayloadIntegrityError",
    "PayloadNotFound",
    "Payloads",
    "generate_key",
    "key_from_env",
    "load_or_create_key",
]

KEY_BYTES: Final = 32
DEFAULT_PAYLOAD_KEY_ENV: Final = "KEEL_PAYLOAD_KEY"
DEFAULT_MAX_BYTES: Final = 64 * 1024 * 1024

_REF = re.compile(r"(sha256|hmac-sha256):[0-9a-f]{64}")
_BLOB_VERSION: Final = 1
_KEY_ID_BYTES: Final = 8
_NONCE_BYTES: Final = 12
_HEADER: Final = 1 + _KEY_ID_BYTES + _NONCE_BYTES
_ZLIB_LEVEL: Final = 6
_EXISTS: Final = "SELECT 1 FROM payloads WHERE digest = ?"
_ENCODINGS: Final = frozenset({"json", "json+zlib", "json+aesgcm", "json+zlib+aesgcm"})


class PayloadNotFound(InternalError):
    """A reference names no stored payload (the journal and the payload table disagree)."""

    code = "payload_not_found"


class PayloadIntegrityError(InternalError):
    """A stored payload does not match its reference: tampered, truncated or corrupted."""

    code = "payload_integrity"


# -- keys ------------------------------------------------------------------------------------


def generate_key() -> bytes:
    """A fresh random 32-byte payload key."""
    return secrets.token_bytes(KEY_BYTES)


def load_or_create_key(path: str | os.PathLike[str]) -> bytes:
    """Read the 32-byte payload key at ``path``, creating it (mode 0600) if it does not exist.

    The file holds the raw 32 bytes. Creation is atomic (write a private temporary file, then
    hard-link it into place), so processes starting together agree on one key. An existing file
    that is not exactly 32 bytes, or that group or others may read (POSIX), is refused with a
    ConfigError: fix it rather than run with a key someone else may hold.
    """
    target = Path(path).expanduser()
    if not target.exists():
        _create_key_file(target)
    try:
        mode = target.stat().st_mode
        data = target.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"cannot read payload key file {str(target)!r}: {exc}", context={"file": str(target)}
        ) from None
    if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"payload key file {str(target)!r} is accessible by group or others "
            f"(mode {stat.S_IMODE(mode):o}); run `chmod 600 {target}`",
            context={"file": str(target)},
        )
    if len(data) != KEY_BYTES:
        raise ConfigError(
            f"payload key file {str(target)!r} holds {len(data)} bytes; a payload key is exactly "
            f"{KEY_BYTES} random bytes (delete the file to create a new key only if no sensitive "
            "payload was written with the old one)",
            context={"file": str(target)},
        )
    return data


def _create_key_file(target: Path) -> None:
    if not target.parent.is_dir():
        raise ConfigError(
            f"cannot create payload key file {str(target)!r}: its folder does not exist",
            context={"file": str(target)},
        )
    temp = target.with_name(f".{target.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(generate_key())
            handle.flush()
            os.fsync(handle.fileno())
        # Another process may have won the race: then its key stands and ours is discarded.
        with contextlib.suppress(FileExistsError):
            os.link(temp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)


def key_from_env(
    var: str = DEFAULT_PAYLOAD_KEY_ENV, *, environ: Mapping[str, str] | None = None
) -> bytes | None:
    """The payload key from environment variable ``var`` (default ``KEEL_PAYLOAD_KEY``).

    The value is 64 hex digits or the base64 (standard or URL-safe, padding optional) of exactly
    32 bytes. Returns None when the variable is unset or empty; raises ConfigError (without
    echoing the value) when it is set to anything else.
    """
    env = os.environ if environ is None else environ
    text = env.get(var, "").strip()
    if not text:
        return None
    key: bytes | None = None
    if len(text) == 2 * KEY_BYTES:
        with contextlib.suppress(ValueError):
            key = bytes.fromhex(text)
    if key is None:
        padded = text + "=" * (-len(text) % 4)
        with contextlib.suppress(binascii.Error, ValueError):
            key = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
    if key is None or len(key) != KEY_BYTES:
        raise ConfigError(
            f"environment variable {var} is not a payload key: expected 64 hex digits or the "
            f'base64 of {KEY_BYTES} bytes (for example: python -c "import secrets; '
            'print(secrets.token_hex(32))")',
            context={"key": var},
        )
    return key


@dataclass(frozen=True, slots=True)
class _Keys:
    """Subkeys derived from one payload key with HKDF-SHA256."""

    key_id: bytes
    aead: AESGCM
    mac: bytes

    @classmethod
    def derive(cls, key: bytes) -> _Keys:
        if not isinstance(key, bytes) or len(key) != KEY_BYTES:
            raise ConfigError(
                f"a payload key is exactly {KEY_BYTES} bytes "
                f"(got {len(key) if isinstance(key, bytes) else type(key).__name__})",
                context={"key": "payload_key"},
            )
        return cls(
            key_id=_hkdf(key, b"keel payloads key-id", _KEY_ID_BYTES),
            aead=AESGCM(_hkdf(key, b"keel payloads aes-256-gcm", KEY_BYTES)),
            mac=_hkdf(key, b"keel payloads hmac-sha256", KEY_BYTES),
        )


def _hkdf(key: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(key)


# -- the store -------------------------------------------------------------------------------


class Payloads:
    """Stores JSON values once, by content; compresses large ones, encrypts sensitive ones.

    ``key`` (32 bytes) is needed only for sensitive payloads; ``previous_keys`` keep payloads
    written under rotated-out keys readable. ``compress_above`` is the size in bytes of canonical
    JSON above which zlib is tried. ``max_bytes`` bounds one payload (and what ``get`` will
    decompress). ``clock`` stamps ``created_at``.
    """

    def __init__(
        self,
        store: Store,
        *,
        key: bytes | None = None,
        previous_keys: Sequence[bytes] = (),
        compress_above: int = 256,
        max_bytes: int = DEFAULT_MAX_BYTES,
        clock: Clock | None = None,
    ) -> None:
        if compress_above < 0:
            raise ConfigError("compress_above must not be negative", context={"key": "payloads"})
        if max_bytes <= 0:
            raise ConfigError("max_bytes must be positive", context={"key": "payloads"})
        self._store = store
        self._clock: Clock = clock or SystemClock()
        self._compress_above = compress_above
        self._max_bytes = max_bytes
        self._current = _Keys.derive(key) if key is not None else None
        by_id: dict[bytes, _Keys] = {}
        for candidate in (*previous_keys, *([key] if key is not None else [])):
            derived = _Keys.derive(candidate)
            by_id[derived.key_id] = derived
        self._by_id = by_id

    @property
    def has_key(self) -> bool:
        """Whether sensitive payloads can be written."""
        return self._current is not None

    # -- writing -------------------------------------------------------------------------------

    def put(self, value: Any, *, sensitive: bool = False, tx: Transaction | None = None) -> str:
        """Store ``value`` (anything ``canonical_json`` encodes) once; return its reference.

        Idempotent: storing an equal value again writes nothing and returns the same reference.
        ``sensitive`` encrypts it (ConfigError if no key is configured). ``tx`` writes inside the
        caller's transaction, so a journal entry and its payload commit together.
        """
        return self.put_json(canonical_json(value), sensitive=sensitive, tx=tx)

    def put_json(self, text: str, *, sensitive: bool = False, tx: Transaction | None = None) -> str:
        """Like ``put`` for text that is already canonical JSON (``keel.canonical``).

        Text that is valid but not canonical JSON is stored as given; only deduplication suffers.
        """
        raw = text.encode("utf-8")
        if len(raw) > self._max_bytes:
            raise PayloadTooLargeError(
                f"payload is {len(raw)} bytes; the limit is {self._max_bytes} bytes",
                context={"size": len(raw), "limit": self._max_bytes},
            )
        keys = self._current
        if sensitive:
            if keys is None:
                raise ConfigError(
                    "a sensitive payload must be encrypted but no payload key is configured: "
                    f"set {DEFAULT_PAYLOAD_KEY_ENV} or configure a key file",
                    context={"key": "payload_key"},
                )
            ref = "hmac-sha256:" + hmac.new(keys.mac, raw, hashlib.sha256).hexdigest()
        else:
            ref = "sha256:" + hashlib.sha256(raw).hexdigest()
        seal = keys if sensitive else None
        if tx is not None:
            if tx.fetchone(_EXISTS, (ref,)) is None:
                self._insert(tx, ref, raw, *self._encode(ref, raw, seal))
            return ref
        if self._store.read_one(_EXISTS, (ref,)) is not None:
            return ref  # stored before: skip compressing and encrypting again
        encoded = self._encode(ref, raw, seal)  # outside the write lock: may take a while
        with self._store.write(locks=()) as own:  # INSERT ... ON CONFLICT DO NOTHING: atomic
            self._insert(own, ref, raw, *encoded)
        return ref

    def _insert(self, tx: Transaction, ref: str, raw: bytes, encoding: str, data: bytes) -> None:
        tx.execute(
            "INSERT INTO payloads (digest, encoding, size, data, created_at) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (digest) DO NOTHING",
            (ref, encoding, len(raw), data, self._clock.now().isoformat()),
        )

    def _encode(self, ref: str, raw: bytes, keys: _Keys | None) -> tuple[str, bytes]:
        encoding = "json"
        data = raw
        if len(raw) > self._compress_above:
            packed = zlib.compress(raw, _ZLIB_LEVEL)
            if len(packed) < len(raw):
                encoding, data = "json+zlib", packed
        if keys is not None:
            nonce = secrets.token_bytes(_NONCE_BYTES)
            sealed = keys.aead.encrypt(nonce, data, ref.encode("ascii"))
            data = bytes((_BLOB_VERSION,)) + keys.key_id + nonce + sealed
            encoding += "+aesgcm"
        return encoding, data

    # -- reading -------------------------------------------------------------------------------

    def exists(self, ref: str) -> bool:
        """Whether a payload is stored under ``ref`` (InvalidRequestError if it is malformed)."""
        _check_ref(ref)
        return self._store.read_one(_EXISTS, (ref,)) is not None

    def get(self, ref: str) -> Any:
        """The value stored under ``ref``, verified against it.

        The value comes back as JSON decodes it (``Decimal`` and datetimes as strings, tuples as
        lists). Raises PayloadNotFound, PayloadIntegrityError (tampered data), or ConfigError (an
        encrypted payload and no matching key).
        """
        return json.loads(self.get_json(ref))

    def get_json(self, ref: str) -> str:
        """The verified canonical JSON text stored under ``ref`` (see ``get``)."""
        _check_ref(ref)
        row = self._store.read_one(
            "SELECT encoding, size, data FROM payloads WHERE digest = ?", (ref,)
        )
        if row is None:
            raise PayloadNotFound(f"no payload is stored under {ref}", context={"ref": ref})
        encoding, size, blob = str(row[0]), int(row[1]), bytes(row[2])
        if encoding not in _ENCODINGS:
            raise _integrity(ref, f"unknown encoding {encoding!r}")
        encrypted = encoding.endswith("+aesgcm")
        if encrypted != ref.startswith("hmac-"):
            raise _integrity(ref, f"encoding {encoding!r} does not fit the reference kind")
        keys: _Keys | None = None
        data = blob
        if encrypted:
            keys, data = self._decrypt(ref, blob)
        if "+zlib" in encoding:
            data = self._decompress(ref, data, size)
        if len(data) != size:
            raise _integrity(ref, f"{len(data)} bytes decoded, {size} recorded")
        if keys is not None:
            found = "hmac-sha256:" + hmac.new(keys.mac, data, hashlib.sha256).hexdigest()
        else:
            found = "sha256:" + hashlib.sha256(data).hexdigest()
        if not hmac.compare_digest(found, ref):
            raise _integrity(ref, "the content does not match its digest")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:  # pragma: no cover - the digest matched bytes we wrote
            raise _integrity(ref, "the content is not UTF-8") from None

    def _decrypt(self, ref: str, blob: bytes) -> tuple[_Keys, bytes]:
        if len(blob) < _HEADER + 16 or blob[0] != _BLOB_VERSION:
            raise _integrity(ref, "the encrypted blob is malformed")
        key_id = blob[1 : 1 + _KEY_ID_BYTES]
        nonce = blob[1 + _KEY_ID_BYTES : _HEADER]
        keys = self._by_id.get(key_id)
        if keys is None:
            configured = ", ".join(k.hex() for k in self._by_id) or "none"
            raise ConfigError(
                f"payload {ref} was encrypted with payload key {key_id.hex()}, which is not "
                f"configured (configured key ids: {configured}); configure that key, as the "
                "current or a previous key, to read it",
                code="payload_key_unknown",
                context={"ref": ref, "key_id": key_id.hex()},
            )
        try:
            return keys, keys.aead.decrypt(nonce, blob[_HEADER:], ref.encode("ascii"))
        except InvalidTag:
            raise _integrity(ref, "the encrypted data failed authentication") from None

    def _decompress(self, ref: str, data: bytes, size: int) -> bytes:
        limit = min(size, self._max_bytes) + 1  # one byte more reveals a lying size column
        inflater = zlib.decompressobj()
        try:
            out = inflater.decompress(data, limit)
        except zlib.error as exc:
            raise _integrity(ref, f"the compressed data is corrupt ({exc})") from None
        if not inflater.eof or inflater.unconsumed_tail or inflater.unused_data:
            raise _integrity(ref, "the compressed data does not decode to the recorded size")
        return out


def _check_ref(ref: object) -> None:
    if not isinstance(ref, str) or _REF.fullmatch(ref) is None:
        raise InvalidRequestError(
            f"{ref!r} is not a payload reference: expected sha256:<64 hex> or hmac-sha256:<64 hex>",
            code="invalid_payload_ref",
        )


def _integrity(ref: str, why: str) -> PayloadIntegrityError:
    return PayloadIntegrityError(
        f"payload {ref} failed its integrity check: {why}; it was altered or corrupted",
        context={"ref": ref},
    )
