"""What flows through the guard chain: the caller's request, the per-call context, the result."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from keel.core import ZERO_COST, Call, Cost, Principal, Verdict
from keel.tools import Tool

__all__ = ["CallContext", "CallRequest", "CallResult"]


@dataclass(frozen=True, slots=True)
class CallRequest:
    """A governed call as a caller submits it, before anything is trusted.

    ``token`` is the agent's signed token. ``idempotency_key`` is optional; inside a run the key
    defaults to ``run_id`` + ``step_id``. ``tainted`` says untrusted content has entered the
    context that produced this call (policies may condition on it). ``approval_id`` presents an
    approval a person granted for exactly this call (the runtime passes it when it resumes the
    step); it is used at most once.
    """

    tool: str
    arguments: Mapping[str, Any]
    token: str
    kind: Literal["tool", "model"] = "tool"
    run_id: str | None = None
    step_id: str | None = None
    workflow: str | None = None
    idempotency_key: str | None = None
    tainted: bool = False
    trace_id: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    approval_id: str | None = None


@dataclass(frozen=True, slots=True)
class CallResult:
    """The outcome of an executed (or replayed, or shadowed) call.

    ``value`` is the tool's normalized result. ``replayed`` is True when an idempotency key
    returned a recorded outcome without executing. ``shadow`` is True when policy said to record
    the call and execute nothing (then ``value`` is None). ``cached`` is True when a model
    response came from the response cache (it cost nothing). ``cost`` is what the call cost.
    ``record_seq`` is the audit sequence number of the record that describes this call, in the
    audit chain ``record_chain``.
    """

    call_id: str
    tool: str
    value: Any
    verdict: Verdict
    replayed: bool = False
    shadow: bool = False
    cached: bool = False
    cost: Cost = ZERO_COST
    record_seq: int | None = None
    latency_ms: float = 0.0
    record_chain: str | None = None


class CallContext:
    """Mutable state of one call as it passes the guards. Guards read and fill it in order.

    Filled by: authenticate → ``principal``; resolve → ``tool``, ``arguments``, ``args_json``,
    ``call``; policy → ``verdict``; idempotency → ``idempotency_key``, ``replay``.
    ``notes`` collects extra facts guards want in the audit record.
    """

    __slots__ = (
        "args_json",
        "arguments",
        "call",
        "claimed",
        "cost",
        "error",
        "estimate",
        "fingerprint",
        "idempotency_key",
        "limits",
        "notes",
        "principal",
        "replay",
        "request",
        "reservation",
        "result",
        "result_json",
        "started",
        "tool",
        "verdict",
    )

    def __init__(self, request: CallRequest, started: float) -> None:
        self.request = request
        self.started = started
        self.principal: Principal | None = None
        self.tool: Tool | None = None
        self.arguments: dict[str, Any] | None = None
        self.args_json: str | None = None
        self.fingerprint: str | None = None
        self.call: Call | None = None
        self.verdict: Verdict | None = None
        self.idempotency_key: str | None = None
        self.claimed = False
        self.cost: Cost = ZERO_COST
        self.estimate: Cost | None = None
        self.reservation: str | None = None
        self.limits: Any = None  # (caps, rate limits) once the budget guards looked them up
        self.replay: dict[str, Any] | None = None
        self.result: Any = None
        self.result_json: str | None = None
        self.error: BaseException | None = None
        self.notes: dict[str, Any] = {}
