"""OpenAI-compatible chat completions: OpenAI, Azure OpenAI, vLLM, Ollama, llama.cpp server, ...

``POST {base_url}/chat/completions`` over httpx, non-streaming and streaming (server-sent
events with ``stream_options.include_usage``), with tools, JSON-schema structured output
(``response_format: {type: json_schema}``) and usage (``prompt_tokens_details.cached_tokens``
read as cached input).

Azure OpenAI: pass ``base_url="https://RESOURCE.openai.azure.com/openai/deployments/DEPLOYMENT"``
and ``azure_api_version="2024-10-21"``; the key then travels in the ``api-key`` header and the
version as the ``api-version`` query parameter.

Failures: 429, 408, 409 and 5xx are retried (``RetryPolicy``) honouring ``Retry-After``;
an exhausted 429 raises ``RateLimited`` (code ``upstream_rate_limited``), other HTTP errors
``ModelError`` with the provider's own message and ``context["status"]``; timeouts
``ModelTimeout``; a malformed answer (not JSON, wrong content type, no choices, no usage, tool
arguments that are not a JSON object, structured output that does not match its schema)
``ModelResponseInvalid``. Missing usage is estimated instead when ``allow_estimated_usage``.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Literal

import httpx

from keel.canonical import canonical_json, parse_json
from keel.core import Clock, SystemClock
from keel.errors import KeelError, ModelError, ModelResponseInvalid
from keel.models._common import (
    InvalidToolArguments,
    StreamAssembler,
    WireNames,
    build_response,
    elapsed_ms,
    estimated_usage,
    is_count,
    json_list,
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

__all__ = ["OpenAIProvider"]

_FINISH: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
}


class OpenAIProvider:
    """A provider for any OpenAI-compatible ``/chat/completions`` endpoint.

    ``max_tokens_field`` names the request field for ``max_tokens`` (OpenAI's reasoning models
    want ``max_completion_tokens``). ``strict_schema`` sends structured-output schemas with
    ``strict: true``. ``client`` / ``transport`` inject httpx parts (the caller owns an injected
    client; it must belong to the event loop that uses it); ``rng`` draws the retry jitter and
    ``sleep`` waits between attempts (default ``asyncio.sleep``).

    Thread/task safety: share one instance freely; see ``keel.models.provider``. Use it as an
    ``async with`` block, or call ``aclose()``, to release connections.
    """

    def __init__(
        self,
        base_url: str = "https://api.openai.com/v1",
        api_key: str | None = None,
        *,
        name: str = "openai",
        azure_api_version: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 60.0,
        retry: RetryPolicy | None = None,
        max_tokens_field: Literal["max_tokens", "max_completion_tokens"] = "max_tokens",
        strict_schema: bool = True,
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
        self._headers = dict(headers or {})
        self._params: dict[str, str] | None = None
        if azure_api_version is not None:
            self._params = {"api-version": azure_api_version}
            if api_key is not None:
                self._headers["api-key"] = api_key
        elif api_key is not None:
            self._headers["authorization"] = f"Bearer {api_key}"
        self._max_tokens_field = max_tokens_field
        self._strict_schema = strict_schema
        self._allow_estimated_usage = allow_estimated_usage
        self._invalid_tool_arguments: InvalidToolArguments = invalid_tool_arguments

    def __repr__(self) -> str:
        return f"OpenAIProvider(name={self.name!r}, base_url={self._http.base_url!r})"

    async def aclose(self) -> None:
        """Close this event loop's connections (the provider stays usable)."""
        await self._http.aclose()

    async def __aenter__(self) -> OpenAIProvider:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- requests --------------------------------------------------------------------------------

    def _message(self, message: Message, names: WireNames) -> dict[str, Any]:
        data: dict[str, Any] = {"role": message.role, "content": message.content}
        if message.tool_calls:
            data["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {
                        "name": names.to_wire(call.name),
                        "arguments": call.arguments_json,
                    },
                }
                for call in message.tool_calls
            ]
        if message.role == "tool":
            data["tool_call_id"] = message.tool_call_id
        elif message.name is not None:
            data["name"] = message.name
        return data

    def _body(self, request: ModelRequest, names: WireNames, *, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": request.model,
            "messages": [self._message(m, names) for m in request.messages],
            self._max_tokens_field: request.max_tokens,
        }
        if request.tools:
            body["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": names.to_wire(tool.name),
                        "description": tool.description,
                        "parameters": tool.parameters,
                    },
                }
                for tool in request.tools
            ]
        if request.tool_choice in ("auto", "none", "required"):
            body["tool_choice"] = request.tool_choice
        elif request.tool_choice is not None:
            body["tool_choice"] = {
                "type": "function",
                "function": {"name": names.to_wire(request.tool_choice)},
            }
        if request.output_schema is not None:
            schema_validator(request.output_schema)  # refuse an invalid schema before sending
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {
                    "name": "output",
                    "schema": request.output_schema,
                    "strict": self._strict_schema,
                },
            }
        optional = {
            "temperature": request.temperature,
            "top_p": request.top_p,
            "seed": request.seed,
            "stop": list(request.stop) or None,
            "n": request.n if request.n != 1 else None,
        }
        body.update({key: value for key, value in optional.items() if value is not None})
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body

    def _context(self, request: ModelRequest) -> dict[str, Any]:
        return {"provider": self.name, "model": request.model}

    async def complete(self, request: ModelRequest) -> ModelResponse:
        """Send ``request``; return the checked answer. See the module docstring for errors."""
        start = self._clock.monotonic()
        names = WireNames.for_request(request)
        context = self._context(request)
        headers, body = await self._http.post_json(
            "/chat/completions",
            self._body(request, names, stream=False),
            headers=self._headers,
            model=request.model,
            params=self._params,
        )
        data = json_body(headers, body, context, limit=self._http.max_response_bytes)
        raw_choices = data.get("choices")
        if not isinstance(raw_choices, list) or not raw_choices:
            raise ModelResponseInvalid(
                f"{self.name} sent a response without choices", context=context
            )
        choices = [
            self._choice(request, raw, names, context) for raw in sorted(raw_choices, key=_index_of)
        ]
        usage = self._usage(data.get("usage"), request, choices, context)
        return build_response(
            request,
            choices,
            provider=self.name,
            model=text_or_none(data.get("model")) or request.model,
            usage=usage,
            latency_ms=elapsed_ms(self._clock, start),
            response_id=text_or_none(data.get("id")),
        )

    def _choice(
        self, request: ModelRequest, raw: object, names: WireNames, context: Mapping[str, Any]
    ) -> Choice:
        if not isinstance(raw, dict) or not isinstance(raw.get("message"), dict):
            raise ModelResponseInvalid(
                f"{self.name} sent a choice without a message object", context=context
            )
        message: dict[str, Any] = raw["message"]
        content = message.get("content")
        refusal = message.get("refusal")
        if content is not None and not isinstance(content, str):
            raise ModelResponseInvalid(
                f"{self.name} sent message content that is not text", context=context
            )
        calls = [
            self._tool_call(raw_call, names, context)
            for raw_call in json_list(message.get("tool_calls"), "tool_calls", self.name, context)
        ]
        return make_choice(
            request,
            text=content,
            tool_calls=calls,
            finish_reason=_FINISH.get(str(raw.get("finish_reason")), "other"),
            refusal=refusal if isinstance(refusal, str) else None,
            invalid_tool_arguments=self._invalid_tool_arguments,
            context=context,
        )

    def _tool_call(self, raw: object, names: WireNames, context: Mapping[str, Any]) -> ToolCall:
        function = raw.get("function") if isinstance(raw, dict) else None
        if not isinstance(raw, dict) or not isinstance(function, dict):
            raise ModelResponseInvalid(
                f"{self.name} sent a tool call without a function object", context=context
            )
        name = function.get("name")
        arguments = function.get("arguments", "")
        if isinstance(arguments, dict):  # some servers send the object itself
            arguments = canonical_json(arguments)
        if not isinstance(name, str) or not name or not isinstance(arguments, str):
            raise ModelResponseInvalid(
                f"{self.name} sent a tool call without a name or with non-text arguments",
                context=context,
            )
        call_id = raw.get("id")
        return ToolCall(
            call_id if isinstance(call_id, str) and call_id else f"call_{name}",
            names.from_wire(name),
            arguments,
        )

    def _usage(
        self,
        raw: object,
        request: ModelRequest,
        choices: list[Choice],
        context: Mapping[str, Any],
    ) -> Usage:
        if isinstance(raw, dict):
            prompt = raw.get("prompt_tokens")
            completion = raw.get("completion_tokens")
            details = raw.get("prompt_tokens_details")
            cached = details.get("cached_tokens") if isinstance(details, dict) else 0
            if is_count(prompt) and is_count(completion) and is_count(cached or 0):
                assert isinstance(prompt, int) and isinstance(completion, int)
                return Usage(prompt, completion, min(int(cached or 0), prompt))
        if self._allow_estimated_usage:
            return estimated_usage(request, choices)
        raise ModelResponseInvalid(
            f"{self.name} sent no usable token usage (usage.prompt_tokens and "
            "usage.completion_tokens); Keel cannot meter the call. Set allow_estimated_usage=True "
            "to estimate it instead.",
            context=context,
        )

    # -- streaming -------------------------------------------------------------------------------

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamChunk]:
        """Stream the answer; the last chunk carries usage and the assembled response."""
        start = self._clock.monotonic()
        names = WireNames.for_request(request)
        context = self._context(request)
        response = await self._http.open_stream(
            "/chat/completions",
            self._body(request, names, stream=True),
            headers=self._headers,
            model=request.model,
            params=self._params,
        )
        assembler = StreamAssembler()
        raw_usage: object = None
        model: str | None = None
        response_id: str | None = None
        done = False
        try:
            async for _event, data in sse_events(
                response, context, limit=self._http.max_response_bytes
            ):
                if data.strip() == "[DONE]":
                    done = True
                    break
                chunk = self._parse_event(data, context)
                model = model or text_or_none(chunk.get("model"))
                response_id = response_id or text_or_none(chunk.get("id"))
                if chunk.get("usage") is not None:
                    raw_usage = chunk["usage"]
                for raw in json_list(chunk.get("choices"), "choices", self.name, context):
                    piece = self._delta(raw, assembler, names, context)
                    if piece is not None:
                        yield piece
        except Exception as exc:
            raise stream_error(exc, self.name, context) from None
        finally:
            await response.aclose()
        if not done:
            raise ModelResponseInvalid(
                f"{self.name} stream ended before its [DONE] marker (truncated)", context=context
            )
        if not assembler.indexes:
            raise ModelResponseInvalid(f"{self.name} stream carried no choices", context=context)
        choices = []
        for index in assembler.indexes:
            text, calls, finish, refusal = assembler.parts(index, names)
            choices.append(
                make_choice(
                    request,
                    text=text,
                    tool_calls=calls,
                    finish_reason=finish or "other",
                    refusal=refusal,
                    invalid_tool_arguments=self._invalid_tool_arguments,
                    context=context,
                )
            )
        usage = self._usage(raw_usage, request, choices, context)
        final = build_response(
            request,
            choices,
            provider=self.name,
            model=model or request.model,
            usage=usage,
            latency_ms=elapsed_ms(self._clock, start),
            response_id=response_id,
        )
        yield StreamChunk(finish_reason=final.finish_reason, usage=usage, response=final)

    def _parse_event(self, data: str, context: Mapping[str, Any]) -> dict[str, Any]:
        try:
            chunk = parse_json(data, max_bytes=self._http.max_response_bytes, what="stream event")
        except KeelError as exc:
            raise ModelResponseInvalid(
                f"{self.name} sent a stream event that is not valid JSON: {exc.message}",
                context=context,
            ) from None
        if not isinstance(chunk, dict):
            raise ModelResponseInvalid(
                f"{self.name} sent a stream event that is not a JSON object", context=context
            )
        if "error" in chunk:
            message, kind, code = upstream_error_details(data.encode("utf-8"))
            raise ModelError(
                f"{self.name} reported an error mid-stream: {message}",
                retryable=True,
                context={**context, "upstream_type": kind, "upstream_code": code},
            )
        return chunk

    def _delta(
        self,
        raw: object,
        assembler: StreamAssembler,
        names: WireNames,
        context: Mapping[str, Any],
    ) -> StreamChunk | None:
        if not isinstance(raw, dict):
            raise ModelResponseInvalid(
                f"{self.name} sent a malformed stream choice", context=context
            )
        index = raw.get("index", 0)
        if not isinstance(index, int) or not 0 <= index < 128:
            raise ModelResponseInvalid(f"{self.name} sent a bad choice index", context=context)
        delta = raw.get("delta") or {}
        if not isinstance(delta, dict):
            raise ModelResponseInvalid(f"{self.name} sent a malformed delta", context=context)
        text = delta.get("content")
        if isinstance(text, str):
            assembler.text(index, text)
        refusal = delta.get("refusal")
        if isinstance(refusal, str):
            assembler.refusal(index, refusal)
        pieces = []
        for call in json_list(delta.get("tool_calls"), "tool_calls", self.name, context):
            function = call.get("function") if isinstance(call, dict) else None
            if not isinstance(call, dict) or not isinstance(function or {}, dict):
                raise ModelResponseInvalid(
                    f"{self.name} sent a malformed tool-call delta", context=context
                )
            function = function or {}
            call_index = call.get("index", 0)
            call_id = text_or_none(call.get("id"))
            wire_name = text_or_none(function.get("name"))
            arguments = function.get("arguments") or ""
            if not isinstance(call_index, int) or not isinstance(arguments, str):
                raise ModelResponseInvalid(
                    f"{self.name} sent a malformed tool-call delta", context=context
                )
            assembler.tool_call(index, call_index, call_id, wire_name, arguments)
            name = names.from_wire(wire_name) if wire_name else None
            pieces.append(ToolCallDelta(call_index, call_id, name, arguments))
        finish = raw.get("finish_reason")
        if isinstance(finish, str):
            assembler.finish(index, _FINISH.get(finish, "other"))
        if (isinstance(text, str) and text) or pieces:
            return StreamChunk(
                delta=text if isinstance(text, str) else "", tool_calls=tuple(pieces), index=index
            )
        return None


def _index_of(raw: object) -> int:
    index = raw.get("index", 0) if isinstance(raw, dict) else 0
    return index if isinstance(index, int) else 0
