"""The registry of tools a Keel instance can execute."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from keel.errors import AuthorizationError, InvalidRequestError, UsageError
from keel.tools.function import Tool
from keel.tools.names import check_tool_name

__all__ = ["ToolRegistry"]


class ToolRegistry:
    """Tools by canonical name. Registration is thread-safe; lookups take no lock."""

    def __init__(self) -> None:
        self._tools: dict[str, Tool] = {}
        self._disabled: dict[str, str] = {}
        self._lock = threading.Lock()

    def register(self, tool: Tool) -> Tool:
        with self._lock:
            if tool.spec.name in self._tools:
                raise UsageError(f"a tool named {tool.spec.name!r} is already registered")
            self._tools = {**self._tools, tool.spec.name: tool}
        return tool

    def replace(self, tool: Tool) -> Tool:
        """Register ``tool``, replacing a tool of the same name (tools whose contract comes
        from elsewhere, such as upstream MCP servers, change over time)."""
        with self._lock:
            self._tools = {**self._tools, tool.spec.name: tool}
            self._disabled = {k: v for k, v in self._disabled.items() if k != tool.spec.name}
        return tool

    def disable(self, name: str, reason: str) -> None:
        """Remove the tool called ``name``; resolving it is refused with ``reason`` (403)."""
        check_tool_name(name)
        with self._lock:
            self._tools = {k: v for k, v in self._tools.items() if k != name}
            self._disabled = {**self._disabled, name: reason}

    def disabled(self) -> dict[str, str]:
        """Disabled tool names and why."""
        return dict(self._disabled)

    def get(self, name: object) -> Tool:
        """The tool called ``name``; InvalidRequestError if the name is not canonical or unknown,
        AuthorizationError (``tool_disabled``) if it was disabled."""
        tool = self._tools.get(name) if isinstance(name, str) else None
        if tool is not None:
            return tool
        checked = check_tool_name(name)
        reason = self._disabled.get(checked)
        if reason is not None:
            raise AuthorizationError(
                f"tool {checked} is disabled: {reason}",
                code="tool_disabled",
                context={"tool": checked},
            )
        raise InvalidRequestError(
            f"no tool named {checked!r} is registered",
            code="unknown_tool",
            context={"tool": checked},
        )

    def resolve(self, kind: str, name: object) -> Tool:
        """The gateway's resolver interface: tools only (models come from a model catalog)."""
        if kind != "tool":
            raise InvalidRequestError(
                f"this Keel has no models configured, so a {kind} call cannot be resolved",
                code="unknown_model",
            )
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __iter__(self) -> Iterator[Tool]:
        return iter(sorted(self._tools.values(), key=lambda t: t.spec.name))

    def __len__(self) -> int:
        return len(self._tools)
