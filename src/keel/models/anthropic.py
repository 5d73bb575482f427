"""Anthropic Messages API: ``POST {base_url}/v1/messages`` with ``x-api-key`` and
``anthropic-version``, non-streaming and streaming (``message_start`` / ``content_block_*`` /
``message_delta`` / ``message_stop`` events).

Mapping from Keel's provider-neutral request:

- ``system`` messages become the top-level ``system`` prompt (joined by blank lines);
- assistant tool calls become ``tool_use`` blocks, tool messages ``tool_result`` blocks in a user
  turn; consecutive turns of the same role are merged, as the API requires alternation;
- ``tool_choice``: ``auto`` → ``auto``, ``required`` → ``any``, ``none`` → ``none``, a name →
  ``tool``;
- ``output_schema`` is served by a tool the model is made to call (``output_tool``, default
  ``keel_output``) whose input is the structured output; it is not reported as a tool call;
- ``n > 1`` and ``temperature > 1`` are refused (``InvalidRequestError``): the API has neither;
  ``seed`` is not supported by the API and is ignored.

Usage: ``input_tokens`` + ``cache_read_input_tokens`` + ``cache_creation_input_tokens`` is Keel's
``input_tokens``; cache reads are ``cached_input_tokens``, cache creation ``cache_write_tokens``.
Errors and retries as for ``OpenAIProvider`` (529 "overloaded" is retried like any 5xx).
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import httpx

from keel.canonical import canonical_json, parse_json
from keel.core import Clock, SystemClock
from keel.errors import InvalidRequestError, KeelError, ModelError, ModelResponseInvalid
from keel.models._common import (
    InvalidToolArguments,
    StreamAssembler,
    WireNames,
    build_response,
    elapsed_ms,
    estimated_usage,
    is_count,
    make_choice,
    schema_validator,
    text_or_none,
)
from keel.models._http import (
    DEFAULT_MAX_RESPONSE_BYTES,
    HTTPCaller,
    RetryPolicy,
    json_body,
    sse_events,
    stream_error,
    upstream_error_details,
)
from keel.models.types import (
    Choice,
    FinishReason,
    Message,
    ModelRequest,
    ModelResponse,
    StreamChunk,
    ToolCall,
    ToolCallDelta,
    Usage,
)

__all__ = ["DEFAULT_ANTHROPIC_VERSION", "AnthropicProvider"]

DEFAULT_ANTHROPIC_VERSION = "2023-06-01"

_FINISH: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


class AnthropicProvider:
    """A provider for the Anthropic Messages API (and endpoints that speak it).

    Options as for ``OpenAIProvider``; ``version`` is the ``anthropic-version`` header and
    ``output_tool`` the name of the tool that carries structured output.

    Thread/task safety: share one instance freely; see ``keel.models.provider``. Use it as an
    ``async with`` block, or call ``aclose()``, to release connections.
    """

    def __init__(
        self,
        base_url: str = "https://api.anthropic.com",
        api_key: str | None = None,
        *,
        name: str = "anthropic",
        version: str = DEFAULT_ANTHROPIC_VERSION,
        headers: Mapping[str, str] | None = None,
        timeout: float = 60.0,
        retry: RetryPolicy | None = None,
        output_tool: str = "keel_output",
        allow_estimated_usage: bool = False,
        invalid_tool_arguments: InvalidToolArguments = "raise",
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        client: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        self.name = name
        self._clock = clock or SystemClock()
        self._http = HTTPCaller(
            provider=name,
            base_url=base_url,
            timeout=timeout,
            retry=retry or RetryPolicy(),
            clock=self._clock,
            client=client,
            transport=transport,
            rng=rng,
            max_response_bytes=max_response_bytes,
            sleep=sleep,
        )
        self._headers = {"anthropic-version": version, **dict(headers or {})}
        if api_key is not None:
            self._headers["x-api-key"] = api_key
        self._output_tool = output_tool
        self._allow_estimated_usage = allow_estimated_usage
        self._invalid_tool_arguments: InvalidToolArguments = invalid_tool_arguments

    def __repr__(self) -> str:
        return f"AnthropicProvider(name={self.name!r}, base_url={self._http.base_url!r})"

    async def aclose(self) -> None:
        """Close this event loop's connections (the provider stays usable)."""
        await self._http.aclose()

    async def __aenter__(self) -> AnthropicProvider:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- requests --------------------------------------------------------------------------------

    def _blocks(self, message: Message, names: WireNames) -> list[dict[str, Any]]:
        if message.role == "tool":
            return [
                {
                    "type": "tool_result",
                    "tool_use_id": message.tool_call_id,
                    "content": message.content or "",
                }
            ]
        blocks: list[dict[str, Any]] = []
        if message.content:
            blocks.append({"type": "text", "text": message.content})
        for call in message.tool_calls:
            blocks.append(
                {
                    "type": "tool_use",
                    "id": call.id,
                    "name": names.to_wire(call.name),
                    "input": dict(call.arguments) if call.arguments is not None else {},
                }
            )
        return blocks

    def _body(self, request: ModelRequest, names: WireNames, *, stream: bool) -> dict[str, Any]:
        if request.n != 1:
            raise InvalidRequestError(
                f"{self.name} (Anthropic) returns one choice per request; n must be 1",
                context={"field": "n", "provider": self.name},
            )
        if request.temperature is not None and request.temperature > 1.0:
            raise InvalidRequestError(
                f"{self.name} (Anthropic) accepts temperature from 0 to 1, "
                f"got {request.temperature}",
                context={"field": "temperature", "provider": self.name},
            )
        system = [m.content for m in request.messages if m.role == "system" and m.content]
        turns: list[dict[str, Any]] = []
        for message in request.messages:
            if message.role == "system":
                continue
            role = "assistant" if message.role == "assistant" else "user"
            blocks = self._blocks(message, names)
            if turns and turns[-1]["role"] == role:
                turns[-1]["content"].extend(blocks)
            else:
                turns.append({"role": role, "content": blocks})
        body: dict[str, Any] = {
            "model": request.model,
            "max_tokens": request.max_tokens,
            "messages": turns,
        }
        if system:
            body["system"] = "\n\n".join(system)
        tools = [
            {
                "name": names.to_wire(tool.name),
                "description": tool.description,
                "input_schema": tool.parameters,
            }
            for tool in request.tools
        ]
        choice: dict[str, Any] | None = _tool_choice(request.tool_choice, names)
        if request.output_schema is not None:
            if any(tool.name == self._output_tool for tool in request.tools):
                raise InvalidRequestError(
                    f"a tool is named {self._output_tool!r}, which {self.name} reserves for "
                    "structured output; rename the tool or set output_tool",
                    context={"field": "tools", "provider": self.name},
                )
            schema_validator(request.output_schema)
            tools.append(
                {
                    "name": self._output_tool,
                    "description": "Give your final answer by calling this tool.",
                    "input_schema": request.output_schema,
                }
            )
            if not request.tools or request.tool_choice == "none":
                choice = {"type": "tool", "name": self._output_tool}
            elif request.tool_choice in (None, "auto", "required"):
                choice = {"type": "any"}
        if tools:
            body["tools"] = tools
        if choice is not None:
            body["tool_choice"] = choice
        optional = {
            "temperature": request.temperature,
            "top_p": request.top_p,
            "stop_sequences": list(request.stop) or None,
        }
        body.update({key: value for key, value in optional.items() if value is not None})
        if stream:
            body["stream"] = True
        return body

    def _names(self, request: ModelRequest) -> WireNames:
        return WireNames.for_request(request, (self._output_tool,))

    def _context(self, request: ModelRequest) -> dict[str, Any]:
        return {"provider": self.name, "model": request.model}

    async def complete(self, request: ModelRequest) -> ModelResponse:
        """Send ``request``; return the checked answer. See the module docstring."""
        start = self._clock.monotonic()
        names = self._names(request)
        context = self._context(request)
        headers, body = await self._http.post_json(
            "/v1/messages",
            self._body(request, names, stream=False),
            headers=self._headers,
            model=request.model,
        )
        data = json_body(headers, body, context, limit=self._http.max_response_bytes)
        blocks = data.get("content")
        if not isinstance(blocks, list):
            raise ModelResponseInvalid(
                f"{self.name} sent a response without a content list", context=context
            )
        texts: list[str] = []
        calls: list[ToolCall] = []
        output: str | None = None
        for block in blocks:
            if not isinstance(block, dict):
                raise ModelResponseInvalid(f"{self.name} sent a malformed block", context=context)
            kind = block.get("type")
            if kind == "text" and isinstance(block.get("text"), str):
                texts.append(block["text"])
            elif kind == "tool_use":
                call = self._tool_use(block, names, context)
                if call.name == self._output_tool and request.output_schema is not None:
                    output = call.arguments_json
                else:
                    calls.append(call)
        stop_reason = data.get("stop_reason")
        choice = self._choice(request, texts, calls, output, stop_reason, context)
        usage = self._usage(data.get("usage"), request, [choice], context)
        return build_response(
            request,
            [choice],
            provider=self.name,
            model=text_or_none(data.get("model")) or request.model,
            usage=usage,
            latency_ms=elapsed_ms(self._clock, start),
            response_id=text_or_none(data.get("id")),
        )

    def _choice(
        self,
        request: ModelRequest,
        texts: list[str],
        calls: list[ToolCall],
        output: str | None,
        stop_reason: object,
        context: Mapping[str, Any],
    ) -> Choice:
        finish = _FINISH.get(str(stop_reason), "other")
        if output is not None and finish == "tool_calls" and not calls:
            finish = "stop"
        text = output if output is not None else ("".join(texts) if texts else None)
        return make_choice(
            request,
            text=text,
            tool_calls=calls,
            finish_reason=finish,
            refusal=("".join(texts) or "refused") if finish == "content_filter" else None,
            invalid_tool_arguments=self._invalid_tool_arguments,
            context=context,
        )

    def _tool_use(
        self, block: Mapping[str, Any], names: WireNames, context: Mapping[str, Any]
    ) -> ToolCall:
        name = block.get("name")
        arguments = block.get("input", {})
        if not isinstance(name, str) or not name:
            raise ModelResponseInvalid(
                f"{self.name} sent a tool_use block without a name", context=context
            )
        call_id = text_or_none(block.get("id")) or f"toolu_{name}"
        if isinstance(arguments, dict):
            return ToolCall.of(call_id, names.from_wire(name), arguments)
        return ToolCall(call_id, names.from_wire(name), canonical_json(arguments))

    def _usage(
        self,
        raw: object,
        request: ModelRequest,
        choices: list[Choice],
        context: Mapping[str, Any],
    ) -> Usage:
        if isinstance(raw, dict):
            fresh = raw.get("input_tokens")
            output = raw.get("output_tokens")
            read = raw.get("cache_read_input_tokens") or 0
            write = raw.get("cache_creation_input_tokens") or 0
            if all(is_count(v) for v in (fresh, output, read, write)):
                assert isinstance(fresh, int) and isinstance(output, int)
                assert isinstance(read, int) and isinstance(write, int)
                return Usage(fresh + read + write, output, read, write)
        if self._allow_estimated_usage:
            return estimated_usage(request, choices)
        raise ModelResponseInvalid(
            f"{self.name} sent no usable token usage (usage.input_tokens and "
            "usage.output_tokens); Keel cannot meter the call. Set allow_estimated_usage=True "
            "to estimate it instead.",
            context=context,
        )

    # -- streaming -------------------------------------------------------------------------------

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamChunk]:
        """Stream the answer; the last chunk carries usage and the assembled response."""
        start = self._clock.monotonic()
        names = self._names(request)
        context = self._context(request)
        response = await self._http.open_stream(
            "/v1/messages",
            self._body(request, names, stream=True),
            headers=self._headers,
            model=request.model,
        )
        assembler = StreamAssembler()
        usage: dict[str, Any] = {}
        model: str | None = None
        response_id: str | None = None
        stop_reason: object = None
        kinds: dict[int, str] = {}
        output_blocks: set[int] = set()
        output_parts: list[str] = []
        ordinal: dict[int, int] = {}  # block index -> position among the tool calls
        done = False
        try:
            async for _event, data in sse_events(
                response, context, limit=self._http.max_response_bytes
            ):
                event = self._parse_event(data, context)
                kind = event.get("type")
                if kind == "message_start":
                    message = event.get("message")
                    if isinstance(message, dict):
                        model = text_or_none(message.get("model"))
                        response_id = text_or_none(message.get("id"))
                        if isinstance(message.get("usage"), dict):
                            usage.update(message["usage"])
                elif kind == "content_block_start":
                    index, block = _block_of(event, self.name, context)
                    kinds[index] = str(block.get("type"))
                    if block.get("type") == "tool_use":
                        wire = text_or_none(block.get("name")) or ""
                        call_id = text_or_none(block.get("id"))
                        if wire == self._output_tool and request.output_schema is not None:
                            output_blocks.add(index)
                        else:
                            ordinal[index] = len(ordinal)
                            assembler.tool_call(0, index, call_id, wire, "")
                            head = ToolCallDelta(ordinal[index], call_id, names.from_wire(wire))
                            yield StreamChunk(tool_calls=(head,))
                    elif block.get("type") == "text" and block.get("text"):
                        assembler.text(0, str(block["text"]))
                        yield StreamChunk(delta=str(block["text"]))
                elif kind == "content_block_delta":
                    piece = self._delta(
                        event, kinds, output_blocks, output_parts, ordinal, assembler, context
                    )
                    if piece is not None:
                        yield piece
                elif kind == "message_delta":
                    delta = event.get("delta")
                    if isinstance(delta, dict) and delta.get("stop_reason") is not None:
                        stop_reason = delta["stop_reason"]
                    if isinstance(event.get("usage"), dict):
                        usage.update({k: v for k, v in event["usage"].items() if v is not None})
                elif kind == "message_stop":
                    done = True
                    break
        except Exception as exc:
            raise stream_error(exc, self.name, context) from None
        finally:
            await response.aclose()
        if not done:
            raise ModelResponseInvalid(
                f"{self.name} stream ended before message_stop (truncated)", context=context
            )
        text, calls, _, _ = assembler.parts(0, names)
        output = "".join(output_parts) if output_blocks else None
        texts = [] if text is None else [text]
        choice = self._choice(request, texts, calls, output, stop_reason, context)
        final = build_response(
            request,
            [choice],
            provider=self.name,
            model=model or request.model,
            usage=self._usage(usage or None, request, [choice], context),
            latency_ms=elapsed_ms(self._clock, start),
            response_id=response_id,
        )
        yield StreamChunk(finish_reason=final.finish_reason, usage=final.usage, response=final)

    def _delta(
        self,
        event: Mapping[str, Any],
        kinds: Mapping[int, str],
        output_blocks: set[int],
        output_parts: list[str],
        ordinal: Mapping[int, int],
        assembler: StreamAssembler,
        context: Mapping[str, Any],
    ) -> StreamChunk | None:
        index = event.get("index")
        delta = event.get("delta")
        if not isinstance(index, int) or not isinstance(delta, dict) or index not in kinds:
            raise ModelResponseInvalid(
                f"{self.name} sent a content_block_delta for no open block", context=context
            )
        if delta.get("type") == "text_delta" and isinstance(delta.get("text"), str):
            assembler.text(0, delta["text"])
            return StreamChunk(delta=delta["text"])
        if delta.get("type") == "input_json_delta" and isinstance(delta.get("partial_json"), str):
            fragment = delta["partial_json"]
            if index in output_blocks:
                output_parts.append(fragment)
                return StreamChunk(delta=fragment) if fragment else None
            assembler.tool_call(0, index, None, None, fragment)
            if fragment and index in ordinal:
                return StreamChunk(tool_calls=(ToolCallDelta(ordinal[index], arguments=fragment),))
        return None  # thinking and signature deltas carry nothing Keel reports

    def _parse_event(self, data: str, context: Mapping[str, Any]) -> dict[str, Any]:
        try:
            event = parse_json(data, max_bytes=self._http.max_response_bytes, what="stream event")
        except KeelError as exc:
            raise ModelResponseInvalid(
                f"{self.name} sent a stream event that is not valid JSON: {exc.message}",
                context=context,
            ) from None
        if not isinstance(event, dict):
            raise ModelResponseInvalid(
                f"{self.name} sent a stream event that is not a JSON object", context=context
            )
        if event.get("type") == "error":
            message, kind, code = upstream_error_details(data.encode("utf-8"))
            raise ModelError(
                f"{self.name} reported an error mid-stream: {message}",
                retryable=kind in ("overloaded_error", "api_error", "rate_limit_error"),
                context={**context, "upstream_type": kind, "upstream_code": code},
            )
        return event


def _tool_choice(choice: str | None, names: WireNames) -> dict[str, Any] | None:
    if choice is None:
        return None
    if choice == "auto":
        return {"type": "auto"}
    if choice == "required":
        return {"type": "any"}
    if choice == "none":
        return {"type": "none"}
    return {"type": "tool", "name": names.to_wire(choice)}


def _block_of(
    event: Mapping[str, Any], provider: str, context: Mapping[str, Any]
) -> tuple[int, dict[str, Any]]:
    index = event.get("index")
    block = event.get("content_block")
    if not isinstance(index, int) or not isinstance(block, dict):
        raise ModelResponseInvalid(
            f"{provider} sent a malformed content_block_start", context=context
        )
    return index, block
