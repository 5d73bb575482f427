"""The OpenAI Chat Completions wire format, server side: requests in, responses and chunks out.

``to_model_request`` turns a client's ``POST /v1/chat/completions`` body into a Keel model
request (a ``ModelRequest`` in dict form); ``completion`` and ``ChunkWriter`` turn Keel's answer
back into what an OpenAI client expects. Pure functions over JSON values: no I/O, no governance.

Accepted: ``model``, ``messages`` (text content, or a list of ``text`` parts), ``max_tokens`` /
``max_completion_tokens``, ``temperature``, ``top_p``, ``n``, ``stop``, ``seed``, ``tools``
(functions), ``tool_choice``, ``response_format`` (``json_schema``; ``text``), ``stream``,
``stream_options.include_usage``. Sampling fields Keel does not forward (``presence_penalty``,
``frequency_penalty``, ``logit_bias``, ``logprobs``, ``top_logprobs``) are refused unless they
are at their defaults, so a request never silently means something else. Other fields
(``user``, ``metadata``, ``parallel_tool_calls``, ``store``, ...) are ignored and reported in
the ``Keel-Ignored-Fields`` response header. Image and audio content parts are refused.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from keel.errors import InvalidRequestError
from keel.models import ModelResponse, Usage

__all__ = [
    "ChunkWriter",
    "ProxyRequest",
    "completion",
    "to_model_request",
    "usage_json",
]

_KNOWN = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "n",
        "stop",
        "seed",
        "tools",
        "tool_choice",
        "response_format",
        "stream",
        "stream_options",
    }
)
#: Fields Keel cannot forward: accepted only at the value that means "not used".
_DEFAULT_ONLY: Mapping[str, tuple[Any, ...]] = {
    "presence_penalty": (0, 0.0, None),
    "frequency_penalty": (0, 0.0, None),
    "logit_bias": (None, {}),
    "logprobs": (False, None),
    "top_logprobs": (None, 0),
    "functions": (None,),
    "function_call": (None,),
}
_FINISH = {"stop": "stop", "length": "length", "tool_calls": "tool_calls"}
_FINISH_OTHER = {"content_filter": "content_filter"}


def _bad(field: str, message: str) -> InvalidRequestError:
    return InvalidRequestError(message, code="invalid_request", context={"field": field})


class ProxyRequest:
    """A parsed Chat Completions request: the Keel request dict and the wire options."""

    __slots__ = ("data", "ignored", "include_usage", "model", "stream")

    def __init__(
        self,
        data: dict[str, Any],
        *,
        model: str,
        stream: bool,
        include_usage: bool,
        ignored: tuple[str, ...],
    ) -> None:
        self.data = data
        self.model = model
        self.stream = stream
        self.include_usage = include_usage
        self.ignored = ignored


def _text(content: object, where: str) -> str | None:
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for index, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") not in ("text", "input_text"):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise _bad(
                    f"{where}.content[{index}]",
                    f"{where}.content[{index}] is a {kind!r} part; the proxy accepts text only",
                )
            text = part.get("text")
            if not isinstance(text, str):
                raise _bad(f"{where}.content[{index}].text", "a text part needs a string 'text'")
            parts.append(text)
        return "".join(parts)
    raise _bad(f"{where}.content", f"{where}.content must be a string or a list of text parts")


def _message(raw: object, index: int) -> dict[str, Any]:
    where = f"messages[{index}]"
    if not isinstance(raw, dict):
        raise _bad(where, f"{where} must be an object")
    role = raw.get("role")
    if role == "developer":
        role = "system"
    if role not in ("system", "user", "assistant", "tool"):
        raise _bad(f"{where}.role", f"{where}.role {role!r} is not supported")
    message: dict[str, Any] = {"role": role, "content": _text(raw.get("content"), where)}
    calls = raw.get("tool_calls")
    if calls:
        if role != "assistant" or not isinstance(calls, list):
            raise _bad(f"{where}.tool_calls", "only assistant messages carry a tool_calls list")
        message["tool_calls"] = [
            _tool_call(call, f"{where}.tool_calls[{n}]") for n, call in enumerate(calls)
        ]
    if role == "tool":
        message["tool_call_id"] = raw.get("tool_call_id")
    name = raw.get("name")
    if name is not None and role != "tool":
        message["name"] = name
    return message


def _tool_call(raw: object, where: str) -> dict[str, Any]:
    function = raw.get("function") if isinstance(raw, dict) else None
    if not isinstance(raw, dict) or not isinstance(function, dict):
        raise _bad(where, f"{where} must be an object with a 'function'")
    arguments = function.get("arguments", "")
    if not isinstance(arguments, str):
        raise _bad(f"{where}.function.arguments", "tool call arguments must be a JSON string")
    return {"id": raw.get("id"), "name": function.get("name"), "arguments": arguments}


def _tools(raw: object) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise _bad("tools", "tools must be a list")
    tools = []
    for index, tool in enumerate(raw):
        function = tool.get("function") if isinstance(tool, dict) else None
        if (
            not isinstance(tool, dict)
            or tool.get("type") != "function"
            or not isinstance(function, dict)
        ):
            raise _bad(f"tools[{index}]", f"tools[{index}] must be a function tool")
        tools.append(
            {
                "name": function.get("name"),
                "description": function.get("description") or "",
                "parameters": function.get("parameters") or {"type": "object", "properties": {}},
            }
        )
    return tools


def _tool_choice(raw: object) -> str | None:
    if raw is None or isinstance(raw, str):
        return raw
    if isinstance(raw, dict) and isinstance(raw.get("function"), dict):
        name = raw["function"].get("name")
        if isinstance(name, str):
            return name
    raise _bad("tool_choice", "tool_choice must be a string or {type: function, function: {name}}")


def _output_schema(raw: object) -> dict[str, Any] | None:
    if raw is None:
        return None
    kind = raw.get("type") if isinstance(raw, dict) else None
    if kind == "text":
        return None
    if kind == "json_schema" and isinstance(raw, dict):
        spec = raw.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if isinstance(schema, dict):
            return schema
        raise _bad(
            "response_format.json_schema.schema", "a json_schema response format needs a schema"
        )
    raise _bad(
        "response_format",
        f"response_format type {kind!r} is not supported (use 'text' or 'json_schema')",
    )


def to_model_request(body: object, *, default_max_tokens: int) -> ProxyRequest:
    """Parse a Chat Completions body (already strict-JSON-parsed); InvalidRequestError names the
    field that is wrong. The model request is validated later, by the gateway."""
    if not isinstance(body, dict):
        raise _bad("body", "the request body must be a JSON object")
    for field, defaults in _DEFAULT_ONLY.items():
        if field in body and body[field] not in defaults:
            raise _bad(field, f"{field} is not supported by the Keel proxy; leave it unset")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("model", "model must be a non-empty string")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages", "messages must be a non-empty list")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is None:
        max_tokens = default_max_tokens
    stop = body.get("stop")
    stream = body.get("stream", False)
    if not isinstance(stream, bool) and stream is not None:
        raise _bad("stream", "stream must be true or false")
    options = body.get("stream_options")
    include_usage = bool(isinstance(options, dict) and options.get("include_usage"))
    data: dict[str, Any] = {
        "model": model,
        "messages": [_message(m, i) for i, m in enumerate(messages)],
        "max_tokens": max_tokens,
        "tools": _tools(body.get("tools")),
        "tool_choice": _tool_choice(body.get("tool_choice")),
        "output_schema": _output_schema(body.get("response_format")),
        "temperature": body.get("temperature"),
        "top_p": body.get("top_p"),
        "n": 1 if body.get("n") is None else body.get("n"),
        "stop": [stop] if isinstance(stop, str) else (stop or []),
        "seed": body.get("seed"),
    }
    ignored = tuple(sorted(k for k in body if k not in _KNOWN and k not in _DEFAULT_ONLY))
    return ProxyRequest(
        data, model=model, stream=bool(stream), include_usage=include_usage, ignored=ignored
    )


def usage_json(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_input_tokens},
    }


def _finish(reason: str | None) -> str | None:
    if reason is None:
        return None
    return _FINISH.get(reason) or _FINISH_OTHER.get(reason) or "stop"


def _wire_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "id": call["id"],
            "type": "function",
            "function": {"name": call["name"], "arguments": call["arguments"]},
        }
        for call in calls
    ]


def completion(
    response: ModelResponse, *, completion_id: str, model: str, created: int | None = None
) -> dict[str, Any]:
    """A ``chat.completion`` object for ``response`` (its record form, already redacted)."""
    choices = []
    for index, choice in enumerate(response.choices):
        message: dict[str, Any] = {
            "role": "assistant",
            "content": choice.text,
            "refusal": choice.refusal,
        }
        if choice.tool_calls:
            message["tool_calls"] = _wire_calls([c.to_dict() for c in choice.tool_calls])
        choices.append(
            {
                "index": index,
                "message": message,
                "finish_reason": _finish(choice.finish_reason),
                "logprobs": None,
            }
        )
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()) if created is None else created,
        "model": model,
        "choices": choices,
        "usage": usage_json(response.usage),
        "system_fingerprint": None,
    }


class ChunkWriter:
    """Server-sent events of one ``chat.completion.chunk`` stream. Not thread-safe."""

    def __init__(self, completion_id: str, model: str) -> None:
        self._id = completion_id
        self._model = model
        self._created = int(time.time())
        self._started: set[int] = set()

    def _event(self, choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> bytes:
        data: dict[str, Any] = {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "choices": choices,
            "system_fingerprint": None,
        }
        if usage is not None:
            data["usage"] = usage
        return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"

    def _delta(self, index: int) -> dict[str, Any]:
        if index in self._started:
            return {}
        self._started.add(index)
        return {"role": "assistant"}

    def text(self, index: int, text: str) -> bytes:
        delta = self._delta(index)
        delta["content"] = text
        return self._event(
            [{"index": index, "delta": delta, "finish_reason": None, "logprobs": None}]
        )

    def tool_calls(self, index: int, calls: list[dict[str, Any]]) -> bytes:
        delta = self._delta(index)
        delta["tool_calls"] = [{"index": n, **call} for n, call in enumerate(_wire_calls(calls))]
        return self._event(
            [{"index": index, "delta": delta, "finish_reason": None, "logprobs": None}]
        )

    def finish(self, index: int, reason: str | None) -> bytes:
        delta = self._delta(index)
        return self._event(
            [
                {
                    "index": index,
                    "delta": delta,
                    "finish_reason": _finish(reason) or "stop",
                    "logprobs": None,
                }
            ]
        )

    def usage(self, usage: Usage) -> bytes:
        return self._event([], usage_json(usage))

    @staticmethod
    def error(body: Mapping[str, Any]) -> bytes:
        """An error event: the OpenAI client raises ``APIError`` with its message."""
        return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"

    @staticmethod
    def done() -> bytes:
        return b"data: [DONE]\n\n"
