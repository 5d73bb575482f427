"""A light HTTP/1.1 load generator for ``bench/proxy.py``: raw asyncio, keep-alive, loopback only.

    python bench/_loadgen.py --port 8000 --path /v1/chat/completions --body-file req.json \\
        --header "Authorization: Bearer ..." --requests 2000 --concurrency 8 --warmup 200

``--concurrency`` connections each send one request at a time over one keep-alive connection (a
closed loop: a connection sends its next request as soon as the previous answer is complete).
First ``--warmup`` requests, untimed; then ``--requests`` timed requests. Each latency runs from
writing the request to reading the last byte of its answer. Prints one JSON line: counts by
status, p50/p90/p99/max latency in ms, requests per second over the timed phase, the first
answer's body (for sanity checks) and this process's own CPU time.

Bounded: at most ``--timeout`` seconds in all (then it reports what it has, with
``"timed_out": true``), and it refuses any host outside 127.0.0.0/8. The request is encoded once;
the answer is parsed only as far as its status and length (``Content-Length`` or chunked).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import resource
import sys
import time
from typing import Any


class Connection(asyncio.Protocol):
    """One client connection; ``request()`` sends the encoded request and awaits its answer."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"connection closed: {exc}"))

    def request(self) -> asyncio.Future[tuple[int, bytes]]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(self.payload)
        return self.waiter

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            self.buf = buf
            return
        lines = buf[:end].split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length = -1
        chunked = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
        start = end + 4
        if chunked:
            decoded = _chunked(buf, start)
            if decoded is None:
                self.buf = buf
                return
            body, consumed = decoded
        else:
            if length < 0:
                length = 0
            consumed = start + length
            if len(buf) < consumed:
                self.buf = buf
                return
            body = buf[start:consumed]
        self.buf = buf[consumed:]
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result((status, body))


def _chunked(buf: bytes, start: int) -> tuple[bytes, int] | None:
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


def encode_request(
    host: str, port: int, method: str, path: str, headers: list[str], body: bytes
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: keep-alive"]
    lines += headers
    if body or method in ("POST", "PUT", "PATCH"):
        if not any(h.lower().startswith("content-type:") for h in headers):
            lines.append("Content-Type: application/json")
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Load:
    def __init__(self, host: str, port: int, payload: bytes, total: int, timed_from: int) -> None:
        self.host = host
        self.port = port
        self.payload = payload
        self.total = total
        self.timed_from = timed_from  # requests numbered below this are warm-up
        self.issued = 0
        self.completed = 0  # answers received, warm-up included
        self.latencies: list[float] = []
        self.statuses: dict[int, int] = {}
        self.errors: list[str] = []
        self.first_body: bytes | None = None
        self.timed_start: float | None = None
        self.timed_end = 0.0

    async def connect(self) -> Connection:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(
            lambda: Connection(self.payload), self.host, self.port
        )
        return conn

    async def worker(self) -> None:
        conn = await self.connect()
        clock = time.perf_counter
        try:
            while self.issued < self.total:
                number = self.issued
                self.issued += 1
                if number == self.timed_from and self.timed_start is None:
                    self.timed_start = clock()
                if conn.closed:
                    conn = await self.connect()
                began = clock()
                try:
                    status, body = await conn.request()
                except ConnectionError as exc:
                    if number >= self.timed_from:
                        self.errors.append(str(exc))
                    conn = await self.connect()
                    continue
                done = clock()
                self.completed += 1
                if number >= self.timed_from:
                    self.latencies.append(done - began)
                    self.statuses[status] = self.statuses.get(status, 0) + 1
                    self.timed_end = done
                    if self.first_body is None:
                        self.first_body = body
        finally:
            if conn.transport is not None:
                conn.transport.close()


def pct(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    headers = list(args.header or [])
    body = b""
    if args.body_file:
        with open(args.body_file, "rb") as f:
            body = f.read()
    payload = encode_request(args.host, args.port, args.method, args.path, headers, body)
    load = Load(args.host, args.port, payload, args.warmup + args.requests, args.warmup)
    timed_out = False
    tasks = [asyncio.ensure_future(load.worker()) for _ in range(args.concurrency)]
    done, pending = await asyncio.wait(tasks, timeout=args.timeout)
    if pending:
        timed_out = True
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    for task in done:
        if task.exception() is not None:
            load.errors.append(repr(task.exception()))
    ordered = sorted(load.latencies)
    elapsed = (load.timed_end - load.timed_start) if load.timed_start is not None else 0.0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "requests": len(ordered),
        "completed": load.completed,
        "concurrency": args.concurrency,
        "statuses": {str(k): v for k, v in sorted(load.statuses.items())},
        "errors": len(load.errors),
        "error_sample": load.errors[:3],
        "timed_out": timed_out,
        "elapsed_s": elapsed,
        "req_per_s": len(ordered) / elapsed if elapsed > 0 else 0.0,
        "p50_ms": pct(ordered, 0.50) * 1e3,
        "p90_ms": pct(ordered, 0.90) * 1e3,
        "p99_ms": pct(ordered, 0.99) * 1e3,
        "max_ms": (ordered[-1] * 1e3) if ordered else float("nan"),
        "mean_ms": (sum(ordered) / len(ordered) * 1e3) if ordered else float("nan"),
        "first_body": (load.first_body or b"")[:2000].decode("utf-8", "replace"),
        "loadgen_cpu_s": usage.ru_utime + usage.ru_stime,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--method", default="POST")
    parser.add_argument("--path", required=True)
    parser.add_argument("--header", action="append", help="'Name: value' (repeat)")
    parser.add_argument("--body-file", help="request body, sent as is")
    parser.add_argument("--requests", type=int, default=2000, help="timed requests")
    parser.add_argument("--warmup", type=int, default=200, help="untimed requests first")
    parser.add_argument("--concurrency", type=int, default=1, help="connections")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds at most, in all")
    args = parser.parse_args()
    if not ipaddress.ip_address(args.host).is_loopback:
        sys.exit(f"refusing to send load to {args.host}: loopback addresses only")
    if not (1 <= args.concurrency <= 256 and 0 < args.requests <= 1_000_000):
        sys.exit("concurrency must be 1-256 and requests 1-1,000,000")
    print(json.dumps(asyncio.run(run(args))), flush=True)


if __name__ == "__main__":
    main()
