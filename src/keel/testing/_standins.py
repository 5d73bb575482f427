"""HTTP stand-ins for model providers: real servers on 127.0.0.1 speaking the real wire formats.

Providers are tested against these over loopback, never against mocks of an SDK. Each stand-in
is a stdlib ``ThreadingHTTPServer`` on a free port in a daemon thread; use it as a context
manager and point the provider at ``.base_url``. It answers from a script of ``StandInReply``
(what the model says) and ``StandInFault`` (what goes wrong) items, consumed in order; when the
script is empty it echoes the last user message. Every request received is recorded
(``.requests``: method, path, query, headers, JSON body) so tests can assert on headers and on
what reached "upstream".

Thread-safe. ``close()`` (or leaving the ``with`` block) wakes slow handlers and stops the server.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, Literal, Self
from urllib.parse import parse_qsl, urlsplit

from keel.models.tokens import estimate_text_tokens

__all__ = [
    "AnthropicStandIn",
    "OpenAIStandIn",
    "RecordedRequest",
    "StandInFault",
    "StandInReply",
]

FaultKind = Literal[
    "status", "slow", "truncated", "wrong_content_type", "missing_usage", "missing_choices"
]


@dataclass(frozen=True)
class StandInReply:
    """What the stand-in's "model" answers.

    ``tool_calls`` are ``(name, arguments)``; arguments given as a string are sent verbatim
    (to test arguments that are not JSON). Token counts default to the Keel estimator's count
    of the request and answer. ``finish_reason`` is the wire value (``stop``, ``length`` … for
    OpenAI; ``end_turn``, ``max_tokens`` … for Anthropic); by default it follows the content.
    ``chunk`` is the size of streamed pieces.
    """

    text: str | None = None
    tool_calls: Sequence[tuple[str, Mapping[str, Any] | str]] = ()
    finish_reason: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cached_tokens: int = 0
    model: str | None = None
    chunk: int = 7


@dataclass(frozen=True)
class StandInFault:
    """Something going wrong, for one request.

    - ``status``: answer HTTP ``status`` with an error body in the provider's format and, if
      given, a ``Retry-After`` header (``retry_after``, verbatim);
    - ``slow``: wait ``delay`` seconds before answering (then answer the next script item);
    - ``truncated``: cut the JSON body in half (well framed), or end a stream before its end
      marker;
    - ``wrong_content_type``: a 200 HTML page;
    - ``missing_usage``: a normal answer without token usage;
    - ``missing_choices``: an answer without choices (OpenAI) or content (Anthropic).
    """

    kind: FaultKind
    status: int = 500
    retry_after: str | None = None
    message: str = "scripted failure"
    delay: float = 0.0
    reply: StandInReply | None = None


@dataclass(frozen=True)
class RecordedRequest:
    """One request the stand-in received. ``headers`` keys are lowercase."""

    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: Any
    raw: bytes = field(repr=False)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up (timeout test) is not an error of the stand-in


class _StandIn:
    """The server, the script and the record; subclasses speak one provider's format."""

    path: ClassVar[str]

    def __init__(self, *, api_key: str | None = None) -> None:
        self.api_key = api_key
        self._lock = threading.Lock()
        self._script: deque[StandInReply | StandInFault] = deque()
        self._requests: list[RecordedRequest] = []
        self._closing = threading.Event()
        self._counter = 0
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                stand_in._handle(self)

            def do_GET(self) -> None:
                stand_in._send_json(self, 404, {"error": {"message": "not found"}})

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = _Server(("127.0.0.1", 0), Handler)
        host, port = self._server.server_address[:2]
        self.base_url = self._base_url(f"http://{host!s}:{port}")
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.02},  # how long close() waits for the loop to notice
            name=type(self).__name__,
            daemon=True,
        )
        self._thread.start()

    def _base_url(self, root: str) -> str:
        return root

    # -- public API ------------------------------------------------------------------------------

    def script(self, *items: StandInReply | StandInFault) -> None:
        """Queue answers and faults, consumed one per request in order."""
        with self._lock:
            self._script.extend(items)

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def pending(self) -> int:
        """Script items not consumed yet."""
        with self._lock:
            return len(self._script)

    def close(self) -> None:
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing --------------------------------------------------------------------------------

    def _next_id(self) -> int:
        with self._lock:
            self._counter += 1
            return self._counter

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("content-length") or 0)
        raw = handler.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        split = urlsplit(handler.path)
        record = RecordedRequest(
            method=handler.command,
            path=split.path,
            query=dict(parse_qsl(split.query)),
            headers={k.lower(): v for k, v in handler.headers.items()},
            body=body,
            raw=raw,
        )
        with self._lock:
            self._requests.append(record)
        if not split.path.endswith(self.path):
            self._send_error(handler, 404, f"no route {split.path}")
            return
        if not isinstance(body, dict):
            self._send_error(handler, 400, "the body is not a JSON object")
            return
        refusal = self._check_request(record)
        if refusal is not None:  # refused like the real API would; the script is not consumed
            self._send_error(handler, *refusal)
            return
        with self._lock:
            item = self._script.popleft() if self._script else None
        while isinstance(item, StandInFault) and item.kind == "slow":
            if self._closing.wait(item.delay):
                return
            reply = item.reply
            if reply is None:
                with self._lock:
                    item = self._script.popleft() if self._script else None
            else:
                item = reply
        if isinstance(item, StandInFault) and item.kind == "status":
            headers = {"retry-after": item.retry_after} if item.retry_after is not None else {}
            self._send_error(handler, item.status, item.message, headers)
            return
        if isinstance(item, StandInFault) and item.kind == "wrong_content_type":
            self._send(handler, 200, b"<html><body>502 Bad Gateway</body></html>", "text/html")
            return
        fault = item if isinstance(item, StandInFault) else None
        reply = item if isinstance(item, StandInReply) else (fault.reply if fault else None)
        reply = reply or StandInReply(text=f"echo: {self._last_user_text(body)}")
        if body.get("stream"):
            self._stream(handler, body, reply, fault)
        else:
            self._complete(handler, body, reply, fault)

    def _send(
        self,
        handler: BaseHTTPRequestHandler,
        status: int,
        data: bytes,
        content_type: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        try:
            handler.send_response(status)
            handler.send_header("content-type", content_type)
            handler.send_header("content-length", str(len(data)))
            for key, value in (headers or {}).items():
                handler.send_header(key, value)
            handler.end_headers()
            handler.wfile.write(data)
        except OSError:
            pass

    def _send_json(
        self,
        handler: BaseHTTPRequestHandler,
        status: int,
        payload: Any,
        headers: Mapping[str, str] | None = None,
        *,
        truncate: bool = False,
    ) -> None:
        data = json.dumps(payload).encode("utf-8")
        if truncate:
            data = data[: len(data) // 2]
        self._send(handler, status, data, "application/json", headers)

    def _start_events(self, handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("content-type", "text/event-stream; charset=utf-8")
        handler.send_header("cache-control", "no-cache")
        handler.end_headers()

    def _event(self, handler: BaseHTTPRequestHandler, data: Any, event: str | None = None) -> None:
        text = data if isinstance(data, str) else json.dumps(data)
        prefix = f"event: {event}\n" if event else ""
        handler.wfile.write(f"{prefix}data: {text}\n\n".encode())
        handler.wfile.flush()

    def _usage(self, body: Mapping[str, Any], reply: StandInReply, n: int = 1) -> tuple[int, int]:
        if reply.input_tokens is not None:
            prompt = reply.input_tokens
        else:
            prompt = 3 + sum(4 + estimate_text_tokens(_text_of(m)) for m in _messages(body))
            prompt += estimate_text_tokens(json.dumps(body.get("tools") or body.get("system", "")))
        if reply.output_tokens is not None:
            completion = reply.output_tokens
        else:
            completion = estimate_text_tokens(reply.text or "") + sum(
                4 + estimate_text_tokens(name) + estimate_text_tokens(_arguments(args))
                for name, args in reply.tool_calls
            )
        return prompt, completion * n

    def _last_user_text(self, body: Mapping[str, Any]) -> str:
        for message in reversed(_messages(body)):
            if message.get("role") == "user":
                return _text_of(message)
        return ""

    # -- provider specifics ------------------------------------------------------------------------

    def _check_request(self, record: RecordedRequest) -> tuple[int, str] | None:
        raise NotImplementedError

    def _send_error(
        self,
        handler: BaseHTTPRequestHandler,
        status: int,
        message: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        raise NotImplementedError

    def _complete(
        self,
        handler: BaseHTTPRequestHandler,
        body: dict[str, Any],
        reply: StandInReply,
        fault: StandInFault | None,
    ) -> None:
        raise NotImplementedError

    def _stream(
        self,
        handler: BaseHTTPRequestHandler,
        body: dict[str, Any],
        reply: StandInReply,
        fault: StandInFault | None,
    ) -> None:
        raise NotImplementedError


def _messages(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    messages = body.get("messages")
    return [m for m in messages if isinstance(m, dict)] if isinstance(messages, list) else []


def _text_of(message: Mapping[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for block in content:
            if isinstance(block, dict):
                value = block.get("text", block.get("content", ""))
                parts.append(value if isinstance(value, str) else json.dumps(value))
        return "\n".join(parts)
    return ""


def _arguments(arguments: Mapping[str, Any] | str) -> str:
    return arguments if isinstance(arguments, str) else json.dumps(dict(arguments))


def _pieces(text: str, size: int) -> Iterator[str]:
    size = max(1, size)
    for start in range(0, len(text), size):
        yield text[start : start + size]


class OpenAIStandIn(_StandIn):
    """An OpenAI-compatible ``/v1/chat/completions`` server. ``base_url`` ends in ``/v1``.

    With ``api_key`` set, requests must carry ``Authorization: Bearer <key>`` (or ``api-key``
    when an ``api-version`` query parameter marks an Azure-style call), else 401.
    """

    path = "/chat/completions"

    def _base_url(self, root: str) -> str:
        return root + "/v1"

    def _check_request(self, record: RecordedRequest) -> tuple[int, str] | None:
        if self.api_key is None:
            return None
        if "api-version" in record.query:
            presented = record.headers.get("api-key")
        else:
            auth = record.headers.get("authorization", "")
            presented = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else None
        if presented != self.api_key:
            return 401, "Incorrect API key provided."
        return None

    def _send_error(
        self,
        handler: BaseHTTPRequestHandler,
        status: int,
        message: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        kind = {
            401: "invalid_request_error",
            404: "invalid_request_error",
            429: "rate_limit_exceeded",
        }.get(status, "server_error" if status >= 500 else "invalid_request_error")
        payload = {"error": {"message": message, "type": kind, "param": None, "code": None}}
        self._send_json(handler, status, payload, headers)

    def _calls(self, reply: StandInReply, number: int) -> list[dict[str, Any]]:
        return [
            {
                "id": f"call_{number}_{i}",
                "type": "function",
                "function": {"name": name, "arguments": _arguments(args)},
            }
            for i, (name, args) in enumerate(reply.tool_calls)
        ]

    def _finish(self, reply: StandInReply) -> str:
        return reply.finish_reason or ("tool_calls" if reply.tool_calls else "stop")

    def _usage_json(self, body: Mapping[str, Any], reply: StandInReply) -> dict[str, Any]:
        n = body.get("n", 1) if isinstance(body.get("n"), int) else 1
        prompt, completion = self._usage(body, reply, n)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": reply.cached_tokens},
        }

    def _complete(
        self,
        handler: BaseHTTPRequestHandler,
        body: dict[str, Any],
        reply: StandInReply,
        fault: StandInFault | None,
    ) -> None:
        number = self._next_id()
        n = body.get("n", 1) if isinstance(body.get("n"), int) else 1
        message: dict[str, Any] = {"role": "assistant", "content": reply.text, "refusal": None}
        if reply.tool_calls:
            message["tool_calls"] = self._calls(reply, number)
        payload: dict[str, Any] = {
            "id": f"chatcmpl-{number}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": reply.model or body.get("model"),
            "choices": [
                {
                    "index": i,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": self._finish(reply),
                }
                for i in range(n)
            ],
            "usage": self._usage_json(body, reply),
            "system_fingerprint": "fp_standin",
        }
        kind = fault.kind if fault else None
        if kind == "missing_usage":
            del payload["usage"]
        if kind == "missing_choices":
            del payload["choices"]
        self._send_json(handler, 200, payload, truncate=kind == "truncated")

    def _stream(
        self,
        handler: BaseHTTPRequestHandler,
        body: dict[str, Any],
        reply: StandInReply,
        fault: StandInFault | None,
    ) -> None:
        number = self._next_id()
        base = {
            "id": f"chatcmpl-{number}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": reply.model or body.get("model"),
            "system_fingerprint": "fp_standin",
        }

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return {**base, "choices": [choice], "usage": None}

        kind = fault.kind if fault else None
        try:
            self._start_events(handler)
            self._event(
                handler, chunk({"role": "assistant", "content": "" if reply.text else None})
            )
            for piece in _pieces(reply.text or "", reply.chunk):
                self._event(handler, chunk({"content": piece}))
            for i, call in enumerate(self._calls(reply, number)):
                head = {
                    "index": i,
                    "id": call["id"],
                    "type": "function",
                    "function": {"name": call["function"]["name"], "arguments": ""},
                }
                self._event(handler, chunk({"tool_calls": [head]}))
                for piece in _pieces(call["function"]["arguments"], reply.chunk):
                    part = {"index": i, "function": {"arguments": piece}}
                    self._event(handler, chunk({"tool_calls": [part]}))
            if kind == "truncated":
                return
            self._event(handler, chunk({}, self._finish(reply)))
            options = body.get("stream_options")
            wants_usage = isinstance(options, dict) and options.get("include_usage") is True
            if wants_usage and kind != "missing_usage":
                self._event(
                    handler, {**base, "choices": [], "usage": self._usage_json(body, reply)}
                )
            self._event(handler, "[DONE]")
        except OSError:
            pass


class AnthropicStandIn(_StandIn):
    """An Anthropic Messages API server (``/v1/messages``). ``base_url`` is the server root.

    Requests must carry ``anthropic-version`` (else 400) and, with ``api_key`` set, a matching
    ``x-api-key`` (else 401).
    """

    path = "/v1/messages"

    def _check_request(self, record: RecordedRequest) -> tuple[int, str] | None:
        if "anthropic-version" not in record.headers:
            return 400, "anthropic-version: header is required"
        if self.api_key is not None and record.headers.get("x-api-key") != self.api_key:
            return 401, "invalid x-api-key"
        return None

    def _send_error(
        self,
        handler: BaseHTTPRequestHandler,
        status: int,
        message: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        kind = {
            400: "invalid_request_error",
            401: "authentication_error",
            404: "not_found_error",
            429: "rate_limit_error",
            529: "overloaded_error",
        }.get(status, "api_error")
        payload = {"type": "error", "error": {"type": kind, "message": message}}
        self._send_json(handler, status, payload, headers)

    def _finish(self, reply: StandInReply) -> str:
        return reply.finish_reason or ("tool_use" if reply.tool_calls else "end_turn")

    def _usage_json(self, body: Mapping[str, Any], reply: StandInReply) -> dict[str, Any]:
        prompt, completion = self._usage(body, reply)
        return {
            "input_tokens": max(0, prompt - reply.cached_tokens),
            "output_tokens": completion,
            "cache_read_input_tokens": reply.cached_tokens,
            "cache_creation_input_tokens": 0,
        }

    def _blocks(self, reply: StandInReply, number: int) -> list[dict[str, Any]]:
        blocks: list[dict[str, Any]] = []
        if reply.text:
            blocks.append({"type": "text", "text": reply.text})
        for i, (name, args) in enumerate(reply.tool_calls):
            blocks.append(
                {
                    "type": "tool_use",
                    "id": f"toolu_{number}_{i}",
                    "name": name,
                    "input": args if isinstance(args, str) else dict(args),
                }
            )
        return blocks

    def _complete(
        self,
        handler: BaseHTTPRequestHandler,
        body: dict[str, Any],
        reply: StandInReply,
        fault: StandInFault | None,
    ) -> None:
        number = self._next_id()
        payload: dict[str, Any] = {
            "id": f"msg_{number}",
            "type": "message",
            "role": "assistant",
            "model": reply.model or body.get("model"),
            "content": self._blocks(reply, number),
            "stop_reason": self._finish(reply),
            "stop_sequence": None,
            "usage": self._usage_json(body, reply),
        }
        kind = fault.kind if fault else None
        if kind == "missing_usage":
            del payload["usage"]
        if kind == "missing_choices":
            del payload["content"]
        self._send_json(handler, 200, payload, truncate=kind == "truncated")

    def _stream(
        self,
        handler: BaseHTTPRequestHandler,
        body: dict[str, Any],
        reply: StandInReply,
        fault: StandInFault | None,
    ) -> None:
        number = self._next_id()
        kind = fault.kind if fault else None
        usage = self._usage_json(body, reply)
        start_usage: dict[str, Any] = {**usage, "output_tokens": 1}
        if kind == "missing_usage":
            start_usage = {}
        message: dict[str, Any] = {
            "id": f"msg_{number}",
            "type": "message",
            "role": "assistant",
            "model": reply.model or body.get("model"),
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": start_usage,
        }
        try:
            self._start_events(handler)
            self._event(handler, {"type": "message_start", "message": message}, "message_start")
            self._event(handler, {"type": "ping"}, "ping")
            for index, block in enumerate(self._blocks(reply, number)):
                start: dict[str, Any]
                if block["type"] == "text":
                    start = {"type": "text", "text": ""}
                    fragments = [
                        {"type": "text_delta", "text": p}
                        for p in _pieces(block["text"], reply.chunk)
                    ]
                else:
                    start = {**block, "input": {}}
                    raw = _arguments(block["input"])
                    fragments = [
                        {"type": "input_json_delta", "partial_json": p}
                        for p in _pieces(raw, reply.chunk)
                    ]
                self._event(
                    handler,
                    {"type": "content_block_start", "index": index, "content_block": start},
                    "content_block_start",
                )
                for delta in fragments:
                    self._event(
                        handler,
                        {"type": "content_block_delta", "index": index, "delta": delta},
                        "content_block_delta",
                    )
                self._event(
                    handler, {"type": "content_block_stop", "index": index}, "content_block_stop"
                )
            if kind == "truncated":
                return
            delta_usage = (
                {} if kind == "missing_usage" else {"output_tokens": usage["output_tokens"]}
            )
            self._event(
                handler,
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": self._finish(reply), "stop_sequence": None},
                    "usage": delta_usage,
                },
                "message_delta",
            )
            self._event(handler, {"type": "message_stop"}, "message_stop")
        except OSError:
            pass
