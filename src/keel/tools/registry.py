"""The registry of tools a Keel instance can execute."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from keel.errors import InvalidRequestError, UsageError
from keel.tools.function import Tool
from keel.tools.names import check_tool_name

__all__ = ["ToolRegistry"]


class ToolRegistry:
    """Tools by canonical name. Registration is thread-safe; lookups take no lock."""

    def __init__(self) -> None:
        self._tools: dict[str, Tool] = {}
        self._lock = threading.Lock()

    def register(self, tool: Tool) -> Tool:
        with self._lock:
            if tool.spec.name in self._tools:
                raise UsageError(f"a tool named {tool.spec.name!r} is already registered")
            self._tools = {**self._tools, tool.spec.name: tool}
        return tool

    def get(self, name: object) -> Tool:
        """The tool called ``name``; InvalidRequestError if the name is not canonical or unknown."""
        tool = self._tools.get(name) if isinstance(name, str) else None
        if tool is not None:
            return tool
        checked = check_tool_name(name)
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
