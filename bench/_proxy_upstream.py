"""A fast fake OpenAI-compatible upstream for ``bench/proxy.py``: raw asyncio, HTTP/1.1 keep-alive.

    python bench/_proxy_upstream.py --key sk-upstream [--port 0]

Prints one JSON line ``{"port": N}`` on stdout when it listens on 127.0.0.1, then serves until
stdin closes or it gets SIGTERM. No framework: the request head is split by hand and every answer
is pre-encoded, so that one request costs tens of microseconds and the upstream is never the
bottleneck of a proxy measured against it.

Routes:

- ``POST /v1/chat/completions``: a non-streaming chat completion of realistic size (about 700
  bytes with ``usage``, the shape OpenAI answers), a fresh ``id`` per answer. 401 with OpenAI's
  error body unless ``Authorization: Bearer <key>`` carries the configured upstream key.
- ``GET /v1/models``: the model list (same key check).
- ``POST /tool/orders.lookup``: the benchmark's tool as a plain HTTP endpoint (the direct baseline
  of ``POST /v1/calls``): parse the same JSON body as ``/v1/calls`` (``{"tool": ...,
  "arguments": {...}}``), call :func:`lookup_order` with the arguments, answer
  ``{"tool": ..., "value": ...}``.
- ``GET /stats``: counters since start (``chat_ok``, ``chat_bad_key``, ``models``, ``tool``,
  ``other``), so the benchmark can check that every proxied request arrived with the upstream's
  key (a proxy that forwarded the caller's token instead would show up as ``chat_bad_key``).

It records nothing else: no bodies, no logs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from typing import Any

MODEL = "gpt-4o-mini"
ANSWER = (
    "Your order ORD-1001 shipped on Tuesday and should arrive within two business days. "
    "You can follow it with the tracking link in your confirmation email; if it has not "
    "arrived by Friday, reply here and I will open a claim with the carrier."
)


def lookup_order(order_id: str) -> dict[str, Any]:
    """The benchmark's tool: the same function behind Keel's ``orders.lookup`` and the direct
    route. Deterministic and cheap, like a cached read."""
    return {
        "order_id": order_id,
        "status": "shipped",
        "carrier": "UPS",
        "total": "41.90",
        "currency": "USD",
        "items": 2,
    }


def _completion_parts() -> tuple[bytes, bytes]:
    """The chat completion body split around its id, so each answer costs one concatenation."""
    body = {
        "id": "@@ID@@",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": f"{MODEL}-2024-07-18",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": ANSWER, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 42,
            "completion_tokens": 48,
            "total_tokens": 90,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        },
        "service_tier": "default",
        "system_fingerprint": "fp_bench0001",
    }
    text = json.dumps(body, separators=(",", ":"))
    before, after = text.split("@@ID@@")
    return before.encode(), after.encode()


def _response(status: bytes, body: bytes, extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 "
        + status
        + b"\r\ncontent-type: application/json\r\ncontent-length: "
        + str(len(body)).encode()
        + b"\r\n"
        + extra
        + b"\r\n"
        + body
    )


_HEAD_BEFORE, _HEAD_AFTER = _completion_parts()
_ID_LEN = len("chatcmpl-") + 12
_CHAT_LEN = len(_HEAD_BEFORE) + _ID_LEN + len(_HEAD_AFTER)
_CHAT_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nopenai-processing-ms: 1\r\n"
    b"content-length: " + str(_CHAT_LEN).encode() + b"\r\n\r\n"
)
_UNAUTHORIZED = _response(
    b"401 Unauthorized",
    json.dumps(
        {
            "error": {
                "message": "Incorrect API key provided.",
                "type": "invalid_request_error",
                "param": None,
                "code": "invalid_api_key",
            }
        }
    ).encode(),
)
_NOT_FOUND = _response(b"404 Not Found", b'{"error": {"message": "no such route"}}')
_BAD_REQUEST = _response(b"400 Bad Request", b'{"error": {"message": "malformed request"}}')
_MODELS = _response(
    b"200 OK",
    json.dumps(
        {
            "object": "list",
            "data": [{"id": MODEL, "object": "model", "created": 1721172741, "owned_by": "system"}],
        }
    ).encode(),
)


class Stats:
    def __init__(self) -> None:
        self.counts = {"chat_ok": 0, "chat_bad_key": 0, "models": 0, "tool": 0, "other": 0}
        self.next_id = 0


def _chunked(buf: bytes, start: int) -> tuple[bytes, int] | None:
    """Decode a chunked body starting at ``start``: (body, end offset), or None if incomplete."""
    parts: list[bytes] = []
    pos = start
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        size = int(buf[pos:eol].split(b";", 1)[0], 16)
        pos = eol + 2
        if size == 0:
            end = buf.find(b"\r\n\r\n", pos - 2)
            return (b"".join(parts), end + 4) if end >= 0 else None
        if len(buf) < pos + size + 2:
            return None
        parts.append(buf[pos : pos + size])
        pos += size + 2


class UpstreamProtocol(asyncio.Protocol):
    """One keep-alive connection: requests are parsed from the buffer and answered in order."""

    def __init__(self, key: bytes, stats: Stats) -> None:
        self.auth = b"bearer " + key
        self.stats = stats
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        transport = self.transport
        assert transport is not None
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            lines = buf[:end].split(b"\r\n")
            try:
                method, target, _version = lines[0].split(b" ", 2)
            except ValueError:
                transport.write(_BAD_REQUEST)
                transport.close()
                return
            length = 0
            auth = b""
            chunked = close = False
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"authorization":
                    auth = value.strip()
                elif name == b"transfer-encoding":
                    chunked = b"chunked" in value.lower()
                elif name == b"connection":
                    close = value.strip().lower() == b"close"
            if chunked:
                decoded = _chunked(buf, end + 4)
                if decoded is None:
                    break
                body, consumed = decoded
            else:
                consumed = end + 4 + length
                if len(buf) < consumed:
                    break
                body = buf[end + 4 : consumed]
            buf = buf[consumed:]
            transport.write(self.answer(method, target, auth, body))
            if close:
                transport.close()
                return
        self.buf = buf

    def answer(self, method: bytes, target: bytes, auth: bytes, body: bytes) -> bytes:
        counts = self.stats.counts
        path = target.split(b"?", 1)[0]
        if method == b"POST" and path == b"/v1/chat/completions":
            # Scheme names are case-insensitive; the key is compared exactly.
            if auth[:7].lower() + auth[7:] != self.auth:
                counts["chat_bad_key"] += 1
                return _UNAUTHORIZED
            counts["chat_ok"] += 1
            self.stats.next_id += 1
            ident = b"chatcmpl-%012d" % self.stats.next_id
            return _CHAT_HEAD + _HEAD_BEFORE + ident + _HEAD_AFTER
        if method == b"POST" and path == b"/tool/orders.lookup":
            counts["tool"] += 1
            try:
                call = json.loads(body)
                value = lookup_order(**call["arguments"])
            except (ValueError, TypeError, KeyError):
                return _BAD_REQUEST
            return _response(b"200 OK", json.dumps({"tool": call["tool"], "value": value}).encode())
        if method == b"GET" and path == b"/v1/models":
            counts["models"] += 1
            return _MODELS if auth[:7].lower() + auth[7:] == self.auth else _UNAUTHORIZED
        if method == b"GET" and path == b"/stats":
            return _response(b"200 OK", json.dumps(counts).encode())
        counts["other"] += 1
        return _NOT_FOUND


async def serve(key: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    stats = Stats()
    server = await loop.create_server(
        lambda: UpstreamProtocol(key.encode(), stats), "127.0.0.1", port, backlog=1024
    )
    bound = server.sockets[0].getsockname()[1]
    print(json.dumps({"port": bound}), flush=True)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    # The parent closes our stdin when it goes away: stop then too, never outlive the bench.
    loop.add_reader(sys.stdin.fileno(), lambda: stop.set() if not sys.stdin.read(1) else None)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--key", required=True, help="the upstream API key callers must send")
    parser.add_argument("--port", type=int, default=0, help="loopback port (0: a free one)")
    args = parser.parse_args()
    asyncio.run(serve(args.key, args.port))


if __name__ == "__main__":
    main()
