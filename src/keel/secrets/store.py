"""Secrets for tools and upstreams: references, and values encrypted at rest in the store.

A **reference** says where a secret's value lives, so that config files never hold one:

- ``env:NAME`` — the environment variable ``NAME`` (unset or empty: not found);
- ``file:PATH`` — the contents of a file, trailing newlines removed; a relative ``PATH`` is
  taken from the Keel home folder (``home`` in keel.yaml), not from the working directory;
- ``store:NAME`` — a value kept in the ``secrets`` table, put there with ``keel secret set``.

Stored values are sealed with AES-256-GCM under a **master key**: 32 random bytes in a file
(``<home>/master.key``, created with mode 0600 when the first secret is stored), or the unpadded
base64url of 32 bytes in the environment variable ``KEEL_MASTER_KEY``, which then takes
precedence. Each value has its own random 96-bit nonce; the secret's name is authenticated with
it, so a row copied under another name does not open. Rows record the ``key_id`` (the first 16
hex digits of SHA-256 of the key) they were sealed with, so a wrong key is told apart from a
tampered row. Secret names are ``[a-z][a-z0-9_.-]{0,127}``.

Values leave this module as ``str`` only when asked for explicitly (``get``, ``resolve``) or
wrapped in ``Secret``, whose ``repr`` and ``str`` are ``Secret('***')``. Errors name the
reference, never a value.

Thread safety: a SecretStore may be shared by threads; every method blocks (store and file I/O).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime as _dt
import hashlib
import hmac
import os
import re
import secrets
import stat
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from keel.errors import ConfigError, SecretNotFound
from keel.store import Store

__all__ = [
    "MASTER_KEY_ENV",
    "MASTER_KEY_FILE",
    "MAX_SECRET_BYTES",
    "Secret",
    "SecretInfo",
    "SecretRef",
    "SecretStore",
    "check_name",
    "default_key_path",
    "parse_ref",
]

MASTER_KEY_ENV: Final = "KEEL_MASTER_KEY"
MASTER_KEY_FILE: Final = "master.key"
#: The largest secret value accepted (stored, or read from a file or variable).
MAX_SECRET_BYTES: Final = 64 * 1024

_KEY_BYTES: Final = 32
_NONCE_BYTES: Final = 12
_AAD_PREFIX: Final = b"keel-secret-v1:"
_NAME = re.compile(r"[a-z][a-z0-9_.-]{0,127}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,255}")

RefKind = Literal["env", "file", "store"]


def default_key_path(home: str | os.PathLike[str]) -> Path:
    """Where the master key file lives in a Keel home folder."""
    return Path(home) / MASTER_KEY_FILE


class Secret:
    """A secret value that does not show itself: ``repr``/``str`` give ``Secret('***')``.

    ``reveal()`` returns the value; call it where the value is used, nowhere else.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash((Secret, hashlib.sha256(self._value.encode()).digest()))

    def __reduce__(self) -> str:
        raise TypeError("a Secret cannot be pickled")


@dataclass(frozen=True, slots=True)
class SecretRef:
    """A parsed reference: ``kind`` (env, file, store) and ``name`` (variable, path, name)."""

    kind: RefKind
    name: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}"


def parse_ref(ref: str) -> SecretRef:
    """Parse ``env:NAME``, ``file:PATH`` or ``store:NAME``; raise ConfigError saying why not."""
    if not isinstance(ref, str):
        raise ConfigError(f"a secret reference must be a string, got {type(ref).__name__}")
    kind, sep, name = ref.partition(":")
    if not sep or kind not in ("env", "file", "store"):
        raise ConfigError(
            f"secret reference {ref[:200]!r} is not env:NAME, file:PATH or store:NAME",
            context={"ref": ref[:200]},
        )
    if kind == "env" and not _ENV_NAME.fullmatch(name):
        raise ConfigError(
            f"secret reference {ref[:200]!r}: {name[:100]!r} is not an environment variable name",
            context={"ref": ref[:200]},
        )
    if kind == "file" and (not name or "\0" in name):
        raise ConfigError(
            f"secret reference {ref[:200]!r} names no file", context={"ref": ref[:200]}
        )
    if kind == "store":
        check_name(name)
    return SecretRef(kind, name)  # type: ignore[arg-type]  # kind checked above


def check_name(name: object) -> str:
    """Return ``name`` if it is a valid stored-secret name, else raise ConfigError."""
    if isinstance(name, str) and _NAME.fullmatch(name):
        return name
    shown = name[:200] if isinstance(name, str) else type(name).__name__
    raise ConfigError(
        f"secret name {shown!r} is not valid: a lowercase letter, then up to 127 lowercase "
        "letters, digits, '_', '.' or '-'",
        context={"name": shown},
    )


class SecretInfo(NamedTuple):
    """What is listed about a stored secret (never its value)."""

    name: str
    updated_at: str
    updated_by: str


def _utcnow() -> _dt.datetime:
    return _dt.datetime.now(_dt.UTC)


class SecretStore:
    """Stored secrets (sealed in ``store``) and resolution of every kind of reference.

    ``key_path``: the master key file (created on the first ``put`` if absent and no
    ``KEEL_MASTER_KEY`` is set). ``environ``: where ``env:`` references and ``KEEL_MASTER_KEY``
    are read. ``base_dir``: where relative ``file:`` paths start (default: the key file's
    folder, i.e. the Keel home). ``now``: the clock for ``updated_at`` (timezone-aware UTC).
    """

    def __init__(
        self,
        store: Store,
        key_path: str | os.PathLike[str],
        *,
        environ: Mapping[str, str] | None = None,
        base_dir: str | os.PathLike[str] | None = None,
        now: Callable[[], _dt.datetime] = _utcnow,
    ) -> None:
        self._store = store
        self._key_path = Path(key_path)
        self._environ: Mapping[str, str] = os.environ if environ is None else environ
        self._base_dir = Path(base_dir) if base_dir is not None else self._key_path.parent
        self._now = now
        self._lock = threading.Lock()
        self._key: bytes | None = None

    def __repr__(self) -> str:
        return f"SecretStore(store={self._store.display_url!r}, key_path={str(self._key_path)!r})"

    # -- the master key ----------------------------------------------------------------------

    @property
    def key_id(self) -> str | None:
        """The current master key's id, or None when there is no key yet."""
        key = self._load_key(create=False)
        return None if key is None else _key_id(key)

    def _load_key(self, *, create: bool) -> bytes | None:
        with self._lock:
            if self._key is None:
                self._key = _key_from_env(self._environ)
            if self._key is None:
                path = self._key_path
                if not path.exists():
                    if not create:
                        return None
                    _create_key_file(path)
                self._key = _read_key_file(path)
            return self._key

    def _require_key(self, name: str, key_id: str) -> bytes:
        key = self._load_key(create=False)
        if key is None:
            raise ConfigError(
                f"secret {name!r} cannot be opened: there is no master key (no "
                f"{MASTER_KEY_ENV} and no file {str(self._key_path)!r}); it was sealed with "
                f"master key {key_id}",
                code="secret_unreadable",
                context={"secret": name, "key_id": key_id},
            )
        return key

    # -- stored secrets ----------------------------------------------------------------------

    def put(self, name: str, value: str, *, actor: str) -> SecretInfo:
        """Store (or replace) ``name``'s value, sealed under the master key."""
        check_name(name)
        if not isinstance(value, str) or not value:
            raise ConfigError(f"secret {name!r}: the value is empty", context={"secret": name})
        data = value.encode("utf-8")
        if len(data) > MAX_SECRET_BYTES:
            raise ConfigError(
                f"secret {name!r} is {len(data)} bytes; at most {MAX_SECRET_BYTES} are accepted",
                context={"secret": name},
            )
        key = self._load_key(create=True)
        assert key is not None
        nonce = secrets.token_bytes(_NONCE_BYTES)
        sealed = nonce + AESGCM(key).encrypt(nonce, data, _AAD_PREFIX + name.encode("ascii"))
        now = self._now().astimezone(_dt.UTC).isoformat()
        actor = str(actor)[:200] or "unknown"
        with self._store.write(locks=()) as tx:
            tx.execute(
                "INSERT INTO secrets (name, sealed, key_id, created_at, updated_at, updated_by) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                "sealed = excluded.sealed, key_id = excluded.key_id, "
                "updated_at = excluded.updated_at, updated_by = excluded.updated_by",
                (name, sealed, _key_id(key), now, now, actor),
            )
        return SecretInfo(name, now, actor)

    def get(self, name: str) -> str:
        """The value of stored secret ``name``; SecretNotFound if there is none."""
        check_name(name)
        row = self._store.read_one("SELECT sealed, key_id FROM secrets WHERE name = ?", (name,))
        if row is None:
            raise SecretNotFound(
                f"secret reference store:{name}: no stored secret {name!r} "
                f"(set it with `keel secret set {name}`)",
                context={"ref": f"store:{name}"},
            )
        sealed, key_id = bytes(row[0]), str(row[1])
        key = self._require_key(name, key_id)
        if _key_id(key) != key_id:
            raise ConfigError(
                f"secret {name!r} cannot be opened: it was sealed with master key {key_id}, "
                f"the current master key is {_key_id(key)}",
                code="secret_unreadable",
                context={"secret": name, "key_id": key_id},
            )
        try:
            if len(sealed) <= _NONCE_BYTES:
                raise InvalidTag
            plain = AESGCM(key).decrypt(
                sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], _AAD_PREFIX + name.encode("ascii")
            )
            return plain.decode("utf-8")
        except (InvalidTag, UnicodeDecodeError):
            raise ConfigError(
                f"secret {name!r} cannot be opened: its stored row was altered or copied from "
                "another name (authentication failed); set it again",
                code="secret_unreadable",
                context={"secret": name, "key_id": key_id},
            ) from None

    def delete(self, name: str, *, actor: str) -> None:
        """Remove stored secret ``name``; SecretNotFound if there is none."""
        check_name(name)
        with self._store.write(locks=()) as tx:
            removed = tx.execute("DELETE FROM secrets WHERE name = ?", (name,))
        if not removed:
            raise SecretNotFound(f"no stored secret {name!r}", context={"ref": f"store:{name}"})

    def names(self) -> list[SecretInfo]:
        """Every stored secret's name, last update and who made it, sorted by name."""
        with self._store.read() as tx:
            rows = tx.fetchall("SELECT name, updated_at, updated_by FROM secrets ORDER BY name")
        return [SecretInfo(str(r[0]), str(r[1]), str(r[2])) for r in rows]

    # -- references --------------------------------------------------------------------------

    def resolve(self, ref: str | SecretRef) -> str:
        """The value a reference points to; SecretNotFound (naming the reference) if none."""
        parsed = ref if isinstance(ref, SecretRef) else parse_ref(ref)
        if parsed.kind == "store":
            return self.get(parsed.name)
        if parsed.kind == "env":
            value = self._environ.get(parsed.name, "")
            if not value:
                raise SecretNotFound(
                    f"secret reference {parsed}: the environment variable is not set",
                    context={"ref": str(parsed)},
                )
            return value
        return self._read_file(parsed)

    def secret(self, ref: str | SecretRef) -> Secret:
        """Like :meth:`resolve`, wrapped so the value does not show in logs or errors."""
        return Secret(self.resolve(ref))

    def _read_file(self, ref: SecretRef) -> str:
        path = Path(ref.name).expanduser()
        if not path.is_absolute():
            path = self._base_dir / path
        try:
            with path.open("rb") as handle:
                data = handle.read(MAX_SECRET_BYTES + 1)
        except FileNotFoundError:
            raise SecretNotFound(
                f"secret reference {ref}: no file {str(path)!r}", context={"ref": str(ref)}
            ) from None
        except OSError as exc:
            raise SecretNotFound(
                f"secret reference {ref}: cannot read {str(path)!r} ({exc.strerror})",
                context={"ref": str(ref)},
            ) from None
        if len(data) > MAX_SECRET_BYTES:
            raise ConfigError(
                f"secret reference {ref}: the file is over {MAX_SECRET_BYTES} bytes",
                context={"ref": str(ref)},
            )
        try:
            value = data.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            raise ConfigError(
                f"secret reference {ref}: the file is not UTF-8 text", context={"ref": str(ref)}
            ) from None
        if not value:
            raise SecretNotFound(
                f"secret reference {ref}: the file is empty", context={"ref": str(ref)}
            )
        return value


def _key_id(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:16]


def _key_from_env(environ: Mapping[str, str]) -> bytes | None:
    text = environ.get(MASTER_KEY_ENV, "").strip()
    if not text:
        return None
    try:
        key = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != _KEY_BYTES:
        raise ConfigError(
            f"{MASTER_KEY_ENV} is not the base64url of {_KEY_BYTES} bytes (make one with: "
            "python -c 'import secrets; print(secrets.token_urlsafe(32))')",
            context={"key": MASTER_KEY_ENV},
        )
    return key


def _read_key_file(path: Path) -> bytes:
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"cannot read master key file {str(path)!r}: {exc.strerror}",
            context={"file": str(path)},
        ) from None
    if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"master key file {str(path)!r} is accessible by group or others "
            f"(mode {stat.S_IMODE(mode):o}); run `chmod 600 {path}`",
            context={"file": str(path)},
        )
    if len(data) != _KEY_BYTES:
        raise ConfigError(
            f"master key file {str(path)!r} holds {len(data)} bytes; a master key is exactly "
            f"{_KEY_BYTES} random bytes",
            context={"file": str(path)},
        )
    return data


def _create_key_file(path: Path) -> None:
    """Write a new random key atomically (private temp file, then hard link into place), so
    processes starting together agree on one key."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(secrets.token_bytes(_KEY_BYTES))
                handle.flush()
                os.fsync(handle.fileno())
            with contextlib.suppress(FileExistsError):  # another process won: its key stands
                os.link(temp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
    except OSError as exc:
        raise ConfigError(
            f"cannot create master key file {str(path)!r}: {exc.strerror}",
            context={"file": str(path)},
        ) from None
