"""Keel: a governed runtime for AI agents.

The names most programs need are importable from here (loaded lazily, so ``import keel.errors``
stays cheap): ``App``, ``Agent``, ``KeelConfig``, ``load_config``, the errors, and the core types.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Agent": "keel.app",
    "App": "keel.app",
    "KeelConfig": "keel.config",
    "load_config": "keel.configfile",
    "Call": "keel.core",
    "Principal": "keel.core",
    "Verdict": "keel.core",
    "CallResult": "keel.gateway",
    "ToolContext": "keel.tools",
    "KeelError": "keel.errors",
    "ApprovalRequired": "keel.errors",
    "AuthenticationError": "keel.errors",
    "AuthorizationError": "keel.errors",
    "PolicyDenied": "keel.errors",
    "KillSwitchEngaged": "keel.errors",
    "InvalidRequestError": "keel.errors",
    "ToolError": "keel.errors",
}

__all__ = [
    "Agent",
    "App",
    "ApprovalRequired",
    "AuthenticationError",
    "AuthorizationError",
    "Call",
    "CallResult",
    "InvalidRequestError",
    "KeelConfig",
    "KeelError",
    "KillSwitchEngaged",
    "PolicyDenied",
    "Principal",
    "ToolContext",
    "ToolError",
    "Verdict",
    "__version__",
    "load_config",
]

if TYPE_CHECKING:
    from keel.app import Agent, App
    from keel.config import KeelConfig
    from keel.configfile import load_config
    from keel.core import Call, Principal, Verdict
    from keel.errors import (
        ApprovalRequired,
        AuthenticationError,
        AuthorizationError,
        InvalidRequestError,
        KeelError,
        KillSwitchEngaged,
        PolicyDenied,
        ToolError,
    )
    from keel.gateway import CallResult
    from keel.tools import ToolContext


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'keel' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
