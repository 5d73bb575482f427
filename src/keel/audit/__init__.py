"""Keel's audit log: redaction, typed records, a hash chain with signed checkpoints,
offline verification and search (paged with cursors, or streamed); ``keel.audit.summary``
counts a time window's calls and reads the last checkpoints from the indexes alone.

    from keel.audit import AuditEntry, AuditLog, Redactor, verify_chain

    log = AuditLog(store, clock, signer=signer, checkpoint_path="audit.anchors")
    log.record(AuditEntry(kind="control", tool="kill_switch", decision="engage", body={...}))
    report = verify_chain(store, verifier=keys, checkpoint_path="audit.anchors")

Owns the ``audit_records`` and ``audit_checkpoints`` tables. Imports only ``keel.errors``,
``keel.core``, ``keel.canonical`` and ``keel.store``.
"""

from __future__ import annotations

from keel.audit.checkpoint import Checkpoint, Signer, Verifier
from keel.audit.log import AuditLog
from keel.audit.query import Cursor, iter_query, iter_run_records, query, record_at
from keel.audit.record import (
    AUDIT_SCHEMA_VERSION,
    BODY_KEYS,
    GENESIS_HASH,
    RESERVED_BODY_KEYS,
    AuditEntry,
    EntryKind,
    Record,
    chain_hash,
)
from keel.audit.redact import KINDS as REDACTION_KINDS
from keel.audit.redact import Redactor, StreamRedactor
from keel.audit.verify import Problem, VerifyReport, verify_chain

__all__ = [
    "AUDIT_SCHEMA_VERSION",
    "BODY_KEYS",
    "GENESIS_HASH",
    "REDACTION_KINDS",
    "RESERVED_BODY_KEYS",
    "AuditEntry",
    "AuditLog",
    "Checkpoint",
    "Cursor",
    "EntryKind",
    "Problem",
    "Record",
    "Redactor",
    "Signer",
    "StreamRedactor",
    "Verifier",
    "VerifyReport",
    "chain_hash",
    "iter_query",
    "iter_run_records",
    "query",
    "record_at",
    "verify_chain",
]
