from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

from keel.core import Effect
from keel.errors import ToolError
from keel.tools import JSONSchemaValidator, Tool, ToolContext, ToolSpec

__all__ = ["RecordingTool"]

_PERMISSIVE: Mapping[str, Any] = {"type": "object", "additionalProperties": True}


class RecordingTool(Tool):
    """A fake tool that records every invocation and returns a programmed result.

    ``result`` is returned as is, or called with ``(arguments, context)`` if callable.
    ``fail_times`` makes the first N invocations raise ``ToolError`` (``retryable`` as given),
    to exercise retries and failure records. ``invocations`` lists ``(arguments, context)``
    of every execution: the proof that a denied call never reached the tool.
    """

    def __init__(
        self,
        name: str,
        *,
        scope: str = "test:use",
        effect: Effect = "read",
        result: Any = None,
        schema: Mapping[str, Any] | None = None,
        idempotent: bool = False,
        fail_times: int = 0,
        retryable: bool = True,
        cost_usd: Decimal | str = "0",
    ) -> None:
        self.spec = ToolSpec(
            name=name,
            description=f"fake tool {name}",
            arguments=JSONSchemaValidator(schema or _PERMISSIVE),
            scope=scope,
            effect=effect,
            idempotent=idempotent,
            cost_usd=Decimal(str(cost_usd)),
        )
        self._result = result
        self._fail_times = fail_times
        self._retryable = retryable
        self._lock = threading.Lock()
        self.invocations: list[tuple[dict[str, Any], ToolContext]] = []

    @property
    def calls(self) -> int:
        return len(self.invocations)

    def invoke(self, arguments: dict[str, Any], context: ToolContext) -> Any:
        with self._lock:
            self.invocations.append((dict(arguments), context))
            failing = self._fail_times > 0
            if failing:
                self._fail_times -= 1
        if failing:
            raise ToolError(f"{self.spec.name} failed (scripted)", retryable=self._retryable)
        result = self._result
        if callable(result):
            producer: Callable[[dict[str, Any], ToolContext], Any] = result
            return producer(arguments, context)
        return result
