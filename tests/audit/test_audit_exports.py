"""The public surface of keel.audit, pinned."""

from __future__ import annotations

import keel.audit

EXPECTED = {
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
}


def test_exported_members() -> None:
    assert set(keel.audit.__all__) == EXPECTED
    for name in keel.audit.__all__:
        assert getattr(keel.audit, name) is not None


def test_protocols_are_satisfied_structurally(keys: object) -> None:
    assert isinstance(keys, keel.audit.Signer)
    assert isinstance(keys, keel.audit.Verifier)
