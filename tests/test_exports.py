"""The public surface of the packages owned here, pinned: a change to it is a deliberate one."""

from __future__ import annotations

import importlib

import pytest

EXPECTED = {
    "keel": [
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
    ],
    "keel.gateway": [
        "BreakerState",
        "BreakerStatus",
        "CircuitBreakerGuard",
        "CircuitOpen",
        "ApprovalGuard",
        "AuthenticateGuard",
        "Authenticator",
        "CallContext",
        "CallRequest",
        "CallObserver",
        "CallResult",
        "Decider",
        "Gateway",
        "Guard",
        "IdempotencyGuard",
        "IdempotencyKeys",
        "KillScope",
        "KillSwitch",
        "KillSwitchGuard",
        "KillSwitches",
        "LedgerGuard",
        "LimitsCache",
        "LimitsSource",
        "OpenCall",
        "PolicyGuard",
        "RateLimitGuard",
        "ResolveGuard",
        "Resolver",
        "ResponseCacheGuard",
        "ScopeGuard",
    ],
    "keel.tools": [
        "ArgumentValidator",
        "FunctionTool",
        "HttpEndpoint",
        "HttpTool",
        "JSONSchemaValidator",
        "ModelValidator",
        "ReconcileHook",
        "Tool",
        "ToolContext",
        "ToolRegistry",
        "ToolSpec",
        "check_model_name",
        "check_tool_name",
        "load_http_tools",
    ],
    "keel.store": [
        "RUNS_CHANNEL",
        "SCHEMA_VERSION",
        "Row",
        "SQLiteStore",
        "Store",
        "Transaction",
        "open_store",
    ],
    "keel.testing": [
        "AnthropicStandIn",
        "FaultPlan",
        "FrozenClock",
        "OpenAIStandIn",
        "RecordedRequest",
        "RecordingTool",
        "Reply",
        "Rule",
        "ScriptedModel",
        "StandInFault",
        "StandInReply",
    ],
}


@pytest.mark.parametrize("module", sorted(EXPECTED))
def test_public_surface(module: str) -> None:
    mod = importlib.import_module(module)
    assert sorted(mod.__all__) == sorted(EXPECTED[module])
    for name in mod.__all__:
        assert getattr(mod, name) is not None
