"""Typed audit entries, stored records, and the hash that chains them.

An ``AuditEntry`` is what a caller records: a ``kind`` tag, the indexed fields the log is searched
by, and a ``body`` with everything else. A ``Record`` is an entry as stored: with its chain, its
sequence number and the hashes that chain it to the record before.

Kinds:

* ``"decision"`` - a call that was not executed: denied, or waiting for approval or escalation;
* ``"call"`` - an executed call, with its decision and its outcome;
* ``"control"`` - an operator action such as engaging a kill switch (``tool`` names what was
  acted on, e.g. ``"kill_switch"``; ``decision`` the action, e.g. ``"engage"``).

Body schema and compatibility policy (``AUDIT_SCHEMA_VERSION``)
----------------------------------------------------------------
The stored body is canonical JSON of the entry's ``body`` plus three reserved keys: ``schema``
(this version number), ``call_id`` and ``step_id`` (the latter two only when set). Well-known body
keys are listed in ``BODY_KEYS``; any other JSON-safe key may be added.

* Adding an optional body key does not change the version. Readers ignore keys they do not know.
* Renaming or removing a key, changing its meaning or type, or changing what the hash covers
  increments the version, with a note below. Records keep the version they were written with and
  are never rewritten: the hash chain covers the stored bytes, so old records verify forever.
* Readers accept every version up to their own and refuse newer records with
  ``SchemaVersionError`` (written by a newer Keel: upgrade to read them). ``verify_chain`` checks
  records of any version, since the chain hash does not depend on the body's schema.

Versions: 1 - first release.

The chain hash
--------------
``hash = sha256(canonical_json({"chain", "seq", "ts", "kind", "tenant", "agent", "run_id", "tool",
"decision", "rule_id", "body", "prev_hash"}))`` with every value exactly as stored (``body`` is the
stored JSON text, ``ts`` the stored ISO-8601 text, absent fields ``null``), hex-encoded. The first
record of a chain has ``prev_hash = GENESIS_HASH`` (64 zeros).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, get_args

from keel.canonical import canonical_json, digest
from keel.core import Call, Verdict
from keel.errors import InvalidRequestError, SchemaVersionError

__all__ = [
    "AUDIT_SCHEMA_VERSION",
    "BODY_KEYS",
    "GENESIS_HASH",
    "RESERVED_BODY_KEYS",
    "AuditEntry",
    "EntryKind",
    "Record",
    "chain_hash",
    "format_ts",
]

AUDIT_SCHEMA_VERSION: Final = 1
GENESIS_HASH: Final = "0" * 64

EntryKind = Literal["decision", "call", "control"]
_KINDS: Final[frozenset[str]] = frozenset(get_args(EntryKind))

#: Keys the log adds to every stored body; an entry's own body may not use them.
RESERVED_BODY_KEYS: Final = frozenset({"schema", "call_id", "step_id"})

#: Well-known body keys (all optional): who, what was decided, what was sent and what came back.
BODY_KEYS: Final[Mapping[str, str]] = {
    "principal": "Principal.to_record() of the caller",
    "verdict": "Verdict.to_record() of the decision",
    "call_kind": '"tool" or "model"',
    "workflow": "workflow name, if the call ran inside one",
    "args_digest": "keyed digest (HMAC with the redaction salt) of the arguments before "
    "redaction (binds approvals and replays)",
    "args": "the arguments after redaction (absent when no redactor was given)",
    "outcome_digest": "keyed digest of the outcome before redaction",
    "outcome": "the outcome after redaction",
    "latency_ms": "execution time in milliseconds",
    "error": "KeelError.to_dict() when the call failed",
    "idempotency_key": "the call's idempotency key",
    "trace_id": "OpenTelemetry trace id",
    "tainted": "true when untrusted content had entered the context",
    "approval": "approval ids and approvers, when approvals were required",
    "cost": "reserved and settled cost",
}

#: JSON string encoding exactly as ``canonical_json`` does it (``ensure_ascii=False``); raises
#: TypeError for anything that is not a str.
_enc: Final = json.encoder.encode_basestring


def format_ts(ts: _dt.datetime) -> str:
    """The stored text of a timestamp: UTC ISO-8601 with microseconds, fixed width, sortable."""
    if ts.tzinfo is None:
        raise InvalidRequestError("audit timestamps must be timezone-aware (UTC)")
    return ts.astimezone(_dt.UTC).isoformat(timespec="microseconds")


def chain_hash(
    chain: str,
    seq: int,
    ts: str,
    kind: str,
    tenant: str | None,
    agent: str | None,
    run_id: str | None,
    tool: str | None,
    decision: str | None,
    rule_id: str | None,
    body: str,
    prev_hash: str,
) -> str:
    """The hash of one stored record (see the module docstring).

    The text hashed is byte for byte ``canonical_json`` of the dict of these fields, built
    directly because this runs on every append and for every record verified. Text fields must be
    ``str`` (or None where nullable) and ``seq`` an ``int``: any other type raises ``TypeError``,
    and text that is not valid Unicode (lone surrogates) raises ``UnicodeEncodeError``; the
    verifier treats both as a modified record.
    """
    if type(seq) is not int:
        raise TypeError(f"seq must be an int, not {type(seq).__name__}")
    text = (
        f'{{"agent":{"null" if agent is None else _enc(agent)},"body":{_enc(body)},'
        f'"chain":{_enc(chain)},"decision":{"null" if decision is None else _enc(decision)},'
        f'"kind":{_enc(kind)},"prev_hash":{_enc(prev_hash)},'
        f'"rule_id":{"null" if rule_id is None else _enc(rule_id)},'
        f'"run_id":{"null" if run_id is None else _enc(run_id)},"seq":{seq},'
        f'"tenant":{"null" if tenant is None else _enc(tenant)},'
        f'"tool":{"null" if tool is None else _enc(tool)},"ts":{_enc(ts)}}}'
    )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One thing to record. ``ts`` defaults to the log's clock at append time.

    ``tool`` is the call's target (tool or model name); ``decision`` the verdict's decision
    (``allow``, ``deny``, ``require_approval``, ``escalate``) or, for ``control`` entries, the
    action taken. ``body`` must be JSON-safe (``keel.canonical``) and must not use the keys in
    ``RESERVED_BODY_KEYS``. Put only redacted data in it: the log stores what it is given.
    """

    kind: EntryKind
    tenant: str | None = None
    agent: str | None = None
    run_id: str | None = None
    step_id: str | None = None
    tool: str | None = None
    call_id: str | None = None
    decision: str | None = None
    rule_id: str | None = None
    body: Mapping[str, Any] = field(default_factory=dict)
    ts: _dt.datetime | None = None

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise InvalidRequestError(
                f"audit entry kind {self.kind!r} is not one of {sorted(_KINDS)}",
                context={"kind": self.kind},
            )
        if self.ts is not None and self.ts.tzinfo is None:
            raise InvalidRequestError("audit entry ts must be timezone-aware (UTC)")
        body = self.body
        if type(body) is not dict and not isinstance(body, Mapping):
            raise InvalidRequestError("audit entry body must be a mapping")
        if not RESERVED_BODY_KEYS.isdisjoint(body):
            key = sorted(RESERVED_BODY_KEYS.intersection(body))[0]
            raise InvalidRequestError(
                f"audit entry body may not use the reserved key {key!r}; "
                f"set the entry's own field instead (reserved: {sorted(RESERVED_BODY_KEYS)})",
                context={"key": key},
            )

    @classmethod
    def for_call(
        cls,
        kind: Literal["decision", "call"],
        call: Call,
        verdict: Verdict,
        *,
        redact: Callable[[Any], Any] | None = None,
        outcome: Any = None,
        has_outcome: bool = False,
        latency_ms: float | None = None,
        error: Mapping[str, Any] | None = None,
        trace_id: str | None = None,
        ts: _dt.datetime | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> AuditEntry:
        """The entry for a governed call (``kind="decision"``) or an executed one (``"call"``).

        ``redact`` is a callable such as ``Redactor.redact``; without it the arguments and the
        outcome are recorded only as digests. ``has_outcome`` says ``outcome`` is meaningful
        (``None`` can be a real outcome). ``extra`` adds more body keys (see ``BODY_KEYS``).
        """
        principal = call.principal
        body: dict[str, Any] = {
            "principal": principal.to_record(),
            "verdict": verdict.to_record(),
            "call_kind": call.kind,
            "args_digest": digest(dict(call.arguments)),
        }
        if redact is not None:
            body["args"] = redact(dict(call.arguments))
        if has_outcome:
            body["outcome_digest"] = digest(outcome)
            if redact is not None:
                body["outcome"] = redact(outcome)
        if call.workflow is not None:
            body["workflow"] = call.workflow
        if call.idempotency_key is not None:
            body["idempotency_key"] = call.idempotency_key
        if call.tainted:
            body["tainted"] = True
        if latency_ms is not None:
            body["latency_ms"] = latency_ms
        if error is not None:
            body["error"] = dict(error)
        if trace_id is not None:
            body["trace_id"] = trace_id
        if extra:
            body.update(extra)
        return cls(
            kind=kind,
            tenant=principal.tenant,
            agent=principal.agent_id,
            run_id=call.run_id or principal.run_id,
            step_id=call.step_id,
            tool=call.target,
            call_id=call.call_id,
            decision=verdict.decision,
            rule_id=verdict.rule_id,
            body=body,
            ts=ts,
        )


@dataclass(frozen=True, slots=True)
class Record:
    """An entry as stored: ``entry`` (with its ``ts`` set) plus its place in the chain."""

    entry: AuditEntry
    chain: str
    seq: int
    prev_hash: str
    hash: str
    schema: int = AUDIT_SCHEMA_VERSION

    @property
    def ts(self) -> _dt.datetime:
        ts = self.entry.ts
        assert ts is not None  # always set on stored entries
        return ts

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe view (for the CLI, the REST API and exports)."""
        e = self.entry
        return {
            "chain": self.chain,
            "seq": self.seq,
            "ts": format_ts(self.ts),
            "kind": e.kind,
            "tenant": e.tenant,
            "agent": e.agent,
            "run_id": e.run_id,
            "step_id": e.step_id,
            "tool": e.tool,
            "call_id": e.call_id,
            "decision": e.decision,
            "rule_id": e.rule_id,
            "body": dict(e.body),
            "schema": self.schema,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


def stored_body(entry: AuditEntry) -> str:
    """The body text stored for ``entry``: canonical JSON with the reserved keys added."""
    body = dict(entry.body)
    body["schema"] = AUDIT_SCHEMA_VERSION
    if entry.call_id is not None:
        body["call_id"] = entry.call_id
    if entry.step_id is not None:
        body["step_id"] = entry.step_id
    return canonical_json(body)


def ascii_body(text: str) -> str:
    """``text`` re-encoded with every non-ASCII character escaped.

    Used when a body holds text that is not valid Unicode (a lone surrogate from a JSON
    ``"\\ud800"`` escape), which cannot be stored as UTF-8 as it is.
    """
    return json.dumps(
        json.loads(text), sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )


def record_from_row(row: tuple[Any, ...]) -> Record:
    """Parse a row of ``SELECT chain, seq, ts, kind, tenant, agent, run_id, tool, decision,
    rule_id, body, prev_hash, hash FROM audit_records``."""
    chain, seq, ts, kind, tenant, agent, run_id, tool, decision, rule_id, body, prev, h = row
    data = json.loads(body)
    schema = data.pop("schema", None)
    if not isinstance(schema, int) or schema > AUDIT_SCHEMA_VERSION:
        raise SchemaVersionError(
            f"audit record {chain}/{seq} has body schema {schema!r}; this Keel reads schemas up "
            f"to {AUDIT_SCHEMA_VERSION}. Upgrade Keel to read it.",
            context={"chain": chain, "seq": seq, "found": schema},
        )
    call_id = data.pop("call_id", None)
    step_id = data.pop("step_id", None)
    entry = AuditEntry(
        kind=kind,
        tenant=tenant,
        agent=agent,
        run_id=run_id,
        step_id=step_id,
        tool=tool,
        call_id=call_id,
        decision=decision,
        rule_id=rule_id,
        body=data,
        ts=_dt.datetime.fromisoformat(ts),
    )
    return Record(entry=entry, chain=chain, seq=seq, prev_hash=prev, hash=h, schema=schema)
