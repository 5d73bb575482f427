"""Signed checkpoints of the audit chain, and the external anchor file.

A checkpoint says "the chain ``chain`` had record ``seq`` with hash ``hash``", signed with an
Ed25519 key. The hash chain alone shows that records were changed, removed or reordered; only a
checkpoint shows that the end of the log was cut off (truncation), and only a checkpoint kept
outside the database (the anchor file, one JSON line per checkpoint, ideally on append-only or
remote storage) shows it when the attacker also emptied the checkpoint table.

Signed bytes: ``canonical_json({"chain", "seq", "hash", "ts", "key_id"}).encode()``. The signature
is stored hex-encoded.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from keel.canonical import canonical_json

__all__ = ["Checkpoint", "Signer", "Verifier", "append_anchor", "read_anchors"]


@runtime_checkable
class Signer(Protocol):
    """Signs checkpoints. ``identity``'s keys satisfy it. Must be thread-safe."""

    @property
    def key_id(self) -> str: ...

    def sign(self, data: bytes) -> bytes: ...


@runtime_checkable
class Verifier(Protocol):
    """Checks checkpoint signatures (``identity``'s KeySet satisfies it).

    Returns False for a bad signature or an unknown key; may also raise, which the verifier of the
    chain reports as an invalid signature.
    """

    def verify(self, key_id: str, data: bytes, signature: bytes) -> bool: ...


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A signed statement of the chain's hash at ``seq``. ``ts`` is the stored ISO-8601 text."""

    chain: str
    seq: int
    hash: str
    ts: str
    key_id: str
    signature: str

    @staticmethod
    def payload(chain: str, seq: int, hash: str, ts: str, key_id: str) -> bytes:
        """The exact bytes that are signed."""
        return canonical_json(
            {"chain": chain, "seq": seq, "hash": hash, "ts": ts, "key_id": key_id}
        ).encode("utf-8")

    @classmethod
    def create(cls, signer: Signer, chain: str, seq: int, hash: str, ts: str) -> Checkpoint:
        key_id = signer.key_id
        signature = signer.sign(cls.payload(chain, seq, hash, ts, key_id))
        return cls(chain, seq, hash, ts, key_id, signature.hex())

    def signed_bytes(self) -> bytes:
        return self.payload(self.chain, self.seq, self.hash, self.ts, self.key_id)

    def check(self, verifier: Verifier) -> bool:
        """True if the signature is valid for this checkpoint's content."""
        try:
            signature = bytes.fromhex(self.signature)
            return bool(verifier.verify(self.key_id, self.signed_bytes(), signature))
        except Exception:  # a verifier that raises (unknown key, bad encoding) means invalid
            return False

    def to_json(self) -> str:
        return canonical_json(
            {
                "chain": self.chain,
                "seq": self.seq,
                "hash": self.hash,
                "ts": self.ts,
                "key_id": self.key_id,
                "signature": self.signature,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Checkpoint:
        """Parse one anchor line; raises ValueError if it is not a checkpoint."""
        data: Any = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        chain, seq, hash_, ts, key_id, signature = (
            data.get("chain"),
            data.get("seq"),
            data.get("hash"),
            data.get("ts"),
            data.get("key_id"),
            data.get("signature"),
        )
        if not (
            isinstance(chain, str)
            and isinstance(seq, int)
            and not isinstance(seq, bool)
            and isinstance(hash_, str)
            and isinstance(ts, str)
            and isinstance(key_id, str)
            and isinstance(signature, str)
        ):
            raise ValueError("missing or mistyped checkpoint fields")
        return cls(chain, seq, hash_, ts, key_id, signature)


def append_anchor(path: str | os.PathLike[str], checkpoints: list[Checkpoint]) -> None:
    """Append checkpoints to the anchor file, one line each, and fsync.

    Each line is one ``write`` on a file opened with ``O_APPEND``, so lines from several threads or
    processes never interleave.
    """
    if not checkpoints:
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        for checkpoint in checkpoints:
            os.write(fd, (checkpoint.to_json() + "\n").encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)


def read_anchors(path: str | os.PathLike[str]) -> Iterator[tuple[int, Checkpoint | None]]:
    """Yield ``(line number, checkpoint)`` for each line; ``None`` for a malformed line.

    A missing file yields nothing (the caller decides whether that is a problem).
    """
    try:
        handle = open(path, encoding="utf-8", errors="replace")  # noqa: SIM115
    except FileNotFoundError:
        return
    with handle:
        for number, line in enumerate(handle, start=1):
            text = line.strip()
            if not text:
                continue
            try:
                yield number, Checkpoint.from_json(text)
            except ValueError:
                yield number, None
