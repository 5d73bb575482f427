"""Policy: YAML documents, compiled once, deciding every governed call.

The file format, the evaluation semantics and the autonomy levels are documented in
:mod:`keel.policy.document`. Typical use::

    from keel.policy import PolicySet, load_policy_file

    policies = PolicySet([load_policy_file("examples/policies/support.yaml")])
    verdict = policies.evaluate(call, "irreversible", clock.now())

Loading raises :class:`keel.errors.ConfigError` naming the file, line and dotted key.
"""

from __future__ import annotations

from keel.policy.compiler import CompiledPolicy, compile_policy
from keel.policy.document import (
    AUTONOMY_LEVELS,
    ArgumentCondition,
    Autonomy,
    CapSpec,
    EmailPolicy,
    Limits,
    PolicyCaps,
    PolicyDocument,
    RateLimitSpec,
    Rule,
    Scope,
    Threshold,
    TimeSlot,
    TimeWindow,
    ToolConstraint,
)
from keel.policy.engine import PolicySet, combined_hash
from keel.policy.loader import (
    load_policies,
    load_policy,
    load_policy_file,
    parse_policy,
)

__all__ = [
    "AUTONOMY_LEVELS",
    "ArgumentCondition",
    "Autonomy",
    "CapSpec",
    "CompiledPolicy",
    "EmailPolicy",
    "Limits",
    "PolicyCaps",
    "PolicyDocument",
    "PolicySet",
    "RateLimitSpec",
    "Rule",
    "Scope",
    "Threshold",
    "TimeSlot",
    "TimeWindow",
    "ToolConstraint",
    "combined_hash",
    "compile_policy",
    "load_policies",
    "load_policy",
    "load_policy_file",
    "parse_policy",
]
