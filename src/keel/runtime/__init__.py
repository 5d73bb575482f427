"""The runtime: what runs above the gateway — durable workflows and model calls with routing."""

from __future__ import annotations

from keel.runtime.engine import NonDeterminism, Run, Runtime, StepFailed, Worker, WorkflowDef
from keel.runtime.journal import JournalEntry, RunRecord, RunStore
from keel.runtime.models import ModelCaller, ModelCatalog, ModelOutcome, ModelTarget, Targets
from keel.runtime.payloads import (
    PayloadIntegrityError,
    PayloadNotFound,
    Payloads,
    key_from_env,
    load_or_create_key,
)
from keel.runtime.reconcile import Finding, ReconcileReport, reconcile
from keel.runtime.retry import RetryDecision, RetryPolicy, proves_not_executed

__all__ = [
    "Finding",
    "JournalEntry",
    "ModelCaller",
    "ModelCatalog",
    "ModelOutcome",
    "ModelTarget",
    "NonDeterminism",
    "PayloadIntegrityError",
    "PayloadNotFound",
    "Payloads",
    "ReconcileReport",
    "RetryDecision",
    "RetryPolicy",
    "Run",
    "RunRecord",
    "RunStore",
    "Runtime",
    "StepFailed",
    "Targets",
    "Worker",
    "WorkflowDef",
    "key_from_env",
    "load_or_create_key",
    "proves_not_executed",
    "reconcile",
]
