"""The OpenAI-compatible model proxy: ``POST /v1/chat/completions`` and ``GET /v1/models``.

Any OpenAI client points its base URL at Keel (``http://keel:8000/v1``) and uses an agent token
as its API key. Each request is one governed model call (``ModelCaller``): the token is
verified, policy decides, the worst case (``max_tokens`` × ``n``) is held against every budget
cap before anything is sent, the provider's reported usage settles it, and the call leaves an
audit record. A ``model`` that is not a configured model but a router tier is routed (with
fallback). Deterministic requests are answered from the response cache when it has them.

Redaction (on by default, see ``proxy_redact_prompts`` / ``proxy_redact_responses``): secrets
and personal data in prompts are replaced before the provider sees them, and in answers before
the client does — in streams too, where a value split across chunks is still caught
(``keel.audit.StreamRedactor``; text is released a little behind the provider).

Streaming (``stream: true``) answers with server-sent ``chat.completion.chunk`` events. Every
check that can refuse the call runs before the first byte, so a refusal is an HTTP error. A
stream stopped once under way (a budget cap with no room for an upstream that runs past its
``max_tokens``, a kill switch, a revoked token, a provider failure) ends with an error event
``{"error": {...}}`` — the OpenAI client raises ``APIError`` with its message.

Optional headers: ``Keel-Run-Id``, ``Keel-Step-Id``, ``Keel-Workflow``, ``Keel-Tainted: true``
(untrusted content is in the context), ``Keel-Task-Class`` (routing), ``traceparent``.
Response headers: ``Keel-Call-Id``, ``Keel-Cost-Usd``, ``Keel-Cached``, ``Keel-Record`` (chain
and sequence number of the audit record), ``Keel-Ignored-Fields``.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from keel.app import App
from keel.audit import StreamRedactor
from keel.canonical import parse_json
from keel.core import new_id
from keel.errors import InvalidRequestError, KeelError
from keel.gateway import CallResult
from keel.models import ModelResponse, StreamChunk
from keel.server._http import ERRORS, body_dependency
from keel.server.agents import AgentAuth
from keel.server.errors import error_body
from keel.server.openai_wire import ChunkWriter, ProxyRequest, completion, to_model_request

__all__ = ["proxy_router"]

_TRUE = frozenset({"1", "true", "yes"})


def _header(request: Request, name: str) -> str | None:
    value = request.headers.get(name)
    if value is None:
        return None
    if not value or len(value) > 200 or not value.isprintable():
        raise InvalidRequestError(
            f"header {name} must be 1 to 200 printable characters", context={"header": name}
        )
    return value


def _trace_id(request: Request) -> str | None:
    """The trace id of a W3C ``traceparent`` header (``00-<32 hex>-<16 hex>-<2 hex>``)."""
    value = request.headers.get("traceparent", "")
    parts = value.split("-")
    if len(parts) == 4 and len(parts[1]) == 32 and all(c in "0123456789abcdef" for c in parts[1]):
        return parts[1]
    return None


def _result_headers(result: CallResult | None, parsed: ProxyRequest) -> dict[str, str]:
    headers: dict[str, str] = {}
    shown = [name for name in parsed.ignored if name.isascii() and name.isprintable()]
    if shown:  # names only as header-safe text; the rest are ignored all the same
        headers["Keel-Ignored-Fields"] = ",".join(shown)[:500]
    if result is not None:
        headers["Keel-Call-Id"] = result.call_id
        headers["Keel-Cost-Usd"] = str(result.cost.usd)
        headers["Keel-Cached"] = "true" if result.cached else "false"
        if result.record_seq is not None:
            headers["Keel-Record"] = f"{result.record_chain}/{result.record_seq}"
        if result.shadow:
            headers["Keel-Shadow"] = "true"
    return headers


def proxy_router(keel: App, agents: AgentAuth) -> APIRouter:
    """The proxy routes over ``keel``'s configured models, router, gateway and redactor."""
    router = APIRouter(tags=["models"])
    config = keel.config
    caller = keel.model_caller()
    redactor = keel.redactor
    max_bytes = config.max_payload_bytes

    def route_options(request: Request, parsed: ProxyRequest, token: str) -> dict[str, Any]:
        tier = None
        routed = keel.router is not None and parsed.model in keel.router.config.tiers
        if routed and parsed.model not in keel.models.names():
            tier = parsed.model
            parsed.data.pop("model", None)
        return {
            "tier": tier,
            "task_class": _header(request, "keel-task-class"),
            "run_id": _header(request, "keel-run-id"),
            "step_id": _header(request, "keel-step-id"),
            "workflow": agents.workflow(token, _header(request, "keel-workflow")),
            "tainted": (request.headers.get("keel-tainted", "").lower() in _TRUE),
            "trace_id": _trace_id(request),
        }

    @router.get("/v1/models", responses={401: ERRORS[401]})
    def list_models(request: Request) -> dict[str, Any]:
        """The models (and router tiers) an agent token may name, in OpenAI's list format."""
        agents.verify(request)
        data = [
            {
                "id": name,
                "object": "model",
                "created": 0,
                "owned_by": keel.models.get(name).provider.name,
            }
            for name in keel.models.names()
        ]
        if keel.router is not None:
            data.extend(
                {"id": tier, "object": "model", "created": 0, "owned_by": "keel-router"}
                for tier in keel.router.config.tiers
                if tier not in keel.models.names()
            )
        return {"object": "list", "data": data}

    @router.post(
        "/v1/chat/completions",
        responses={
            200: {
                "description": "a chat.completion object, or with stream: true a stream of "
                "server-sent chat.completion.chunk events",
                "content": {
                    "text/event-stream": {
                        "schema": {
                            "description": "each event's data: a chat.completion.chunk, an "
                            "error object, or the text [DONE]"
                        }
                    }
                },
            },
            **ERRORS,
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["model", "messages"],
                            "properties": {
                                "model": {"type": "string"},
                                "messages": {"type": "array", "items": {"type": "object"}},
                                "max_tokens": {"type": "integer"},
                                "stream": {"type": "boolean"},
                            },
                        }
                    }
                },
            }
        },
    )
    async def chat_completions(request: Request, raw: bytes = body_dependency(max_bytes)) -> Any:
        """An OpenAI Chat Completions call, governed (see the module docstring)."""
        token = agents.token(request, raw)
        body = parse_json(
            raw, max_bytes=max_bytes, max_depth=config.max_json_depth, what="request body"
        )
        parsed = to_model_request(body, default_max_tokens=config.proxy_default_max_tokens)
        if config.proxy_redact_prompts:
            parsed.data["messages"] = redactor.redact(parsed.data["messages"])
        options = route_options(request, parsed, token)
        completion_id = "chatcmpl-" + new_id("")
        if not parsed.stream:
            outcome = await caller.acomplete(lambda: token, parsed.data, **options)
            response = outcome.response
            if config.proxy_redact_responses:
                response = ModelResponse.from_dict(redactor.redact(response.to_dict()))
            return JSONResponse(
                completion(response, completion_id=completion_id, model=parsed.model),
                headers=_result_headers(outcome.result, parsed),
            )
        stream = caller.astream(lambda: token, parsed.data, **options)
        chunks = stream.chunks()
        assert isinstance(chunks, AsyncGenerator)
        try:
            first = await chunks.__anext__()  # every refusal happens before this returns
        except StopAsyncIteration:  # pragma: no cover - a stream always has a final chunk
            raise InvalidRequestError("the model sent an empty stream") from None
        except BaseException:
            await chunks.aclose()
            raise
        headers = _result_headers(stream.result, parsed)
        headers["Cache-Control"] = "no-cache"
        return StreamingResponse(
            _events(
                first,
                chunks,
                ChunkWriter(completion_id, parsed.model),
                parsed,
                keel if config.proxy_redact_responses else None,
            ),
            media_type="text/event-stream",
            headers=headers,
        )

    return router


async def _events(
    first: StreamChunk,
    chunks: AsyncGenerator[StreamChunk, None],
    writer: ChunkWriter,
    parsed: ProxyRequest,
    redacting: App | None,
) -> AsyncIterator[bytes]:
    """The SSE body: text released through a redactor per choice, tool calls whole at the end
    (redacted), one finish event per choice, usage if asked for, then ``[DONE]``."""
    redactors: dict[int, StreamRedactor] = {}

    def released(index: int, text: str) -> str:
        if redacting is None:
            return text
        found = redactors.get(index)
        if found is None:
            found = redactors[index] = StreamRedactor(redacting.redactor)
        return found.feed(text)

    def flushed() -> list[bytes]:
        events = []
        for index, found in sorted(redactors.items()):
            rest = found.flush()
            if rest:
                events.append(writer.text(index, rest))
        return events

    chunk: StreamChunk | None = first
    try:
        while chunk is not None:
            response = chunk.response
            if response is not None:
                for event in flushed():
                    yield event
                if redacting is not None:
                    response = ModelResponse.from_dict(
                        redacting.redactor.redact(response.to_dict())
                    )
                for index, choice in enumerate(response.choices):
                    if choice.tool_calls:
                        yield writer.tool_calls(index, [c.to_dict() for c in choice.tool_calls])
                    yield writer.finish(index, choice.finish_reason)
                if parsed.include_usage:
                    yield writer.usage(response.usage)
                yield writer.done()
                return
            if chunk.delta:
                text = released(chunk.index, chunk.delta)
                if text:
                    yield writer.text(chunk.index, text)
            chunk = await chunks.__anext__()
    except KeelError as exc:
        for event in flushed():
            yield event
        yield writer.error(error_body(exc))
        yield writer.done()
    finally:
        await chunks.aclose()
