"""The public surface of keel.models is pinned, and it stays free of governance."""

from __future__ import annotations

import ast
import pathlib

import keel.models

EXPECTED = {
    "DEFAULT_ANTHROPIC_VERSION",
    "MAX_N",
    "MAX_STOP_SEQUENCES",
    "MAX_TOKENS_CAP",
    "AnthropicProvider",
    "CacheStats",
    "Choice",
    "FinishReason",
    "Message",
    "ModelPrice",
    "ModelRequest",
    "ModelResponse",
    "OpenAIProvider",
    "PriceBook",
    "PriceTier",
    "Provider",
    "ResponseCache",
    "RetryPolicy",
    "Role",
    "RouteDecision",
    "Router",
    "RouterConfig",
    "StreamChunk",
    "Target",
    "ToolCall",
    "ToolCallDelta",
    "ToolDef",
    "Usage",
    "collect",
    "complete_sync",
    "estimate_input_tokens",
    "estimate_output_tokens",
    "estimate_text_tokens",
    "worst_case",
}

ALLOWED_KEEL_IMPORTS = {"keel.errors", "keel.core", "keel.canonical", "keel.config", "keel.store"}


def test_public_surface_is_pinned() -> None:
    assert set(keel.models.__all__) == EXPECTED
    assert len(keel.models.__all__) == len(EXPECTED)
    for name in keel.models.__all__:
        assert getattr(keel.models, name) is not None


def test_models_import_only_lower_layers() -> None:
    package = pathlib.Path(keel.models.__file__).parent
    for module in package.glob("*.py"):
        tree = ast.parse(module.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            for name in names:
                if name.startswith("keel.") and not name.startswith("keel.models"):
                    top = ".".join(name.split(".")[:2])
                    assert top in ALLOWED_KEEL_IMPORTS, f"{module.name} imports {name}"
