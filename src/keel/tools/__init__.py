"""Tools: contracts, canonical names, the registry and adapters (functions, HTTP endpoints).

Knows nothing of governance.
"""

from __future__ import annotations

from keel.tools.contract import (
    ArgumentValidator,
    JSONSchemaValidator,
    ModelValidator,
    ReconcileHook,
    ToolContext,
    ToolSpec,
)
from keel.tools.function import FunctionTool, Tool
from keel.tools.http import HttpEndpoint, HttpTool, load_http_tools
from keel.tools.names import check_model_name, check_tool_name
from keel.tools.registry import ToolRegistry

__all__ = [
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
]
