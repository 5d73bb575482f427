"""Secrets: ``env:``/``file:``/``store:`` references, and values sealed at rest in the store."""

from __future__ import annotations

from keel.secrets.store import (
    MASTER_KEY_ENV,
    MASTER_KEY_FILE,
    MAX_SECRET_BYTES,
    Secret,
    SecretInfo,
    SecretRef,
    SecretStore,
    check_name,
    default_key_path,
    parse_ref,
)

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
