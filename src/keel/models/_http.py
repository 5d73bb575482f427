"""HTTP plumbing shared by the HTTP providers: clients, retries, error mapping, SSE.

One ``HTTPCaller`` per provider. It keeps one ``httpx.AsyncClient`` per event loop (an async
client's connections belong to the loop that opened them), retries what a retry may fix (429,
408, 409, 5xx, connection failures before a response) with exponential backoff and full jitter,
never sooner than the server's ``Retry-After``, and maps everything else onto Keel's errors.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import email.utils
import random
import threading
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import httpx

from keel.canonical import canonical_json, parse_json
from keel.core import Clock
from keel.errors import (
    ConfigError,
    KeelError,
    ModelError,
    ModelResponseInvalid,
    ModelTimeout,
    RateLimited,
)

__all__ = ["DEFAULT_MAX_RESPONSE_BYTES", "HTTPCaller", "RetryPolicy", "sse_events"]

DEFAULT_MAX_RESPONSE_BYTES: Final = 8 * 1024 * 1024
_RETRY_STATUSES: Final = frozenset({408, 409, 429})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a provider retries a failed call.

    Up to ``max_attempts`` attempts in all (1 = never retry). Before attempt *k+1* it waits a
    random time in ``[0, min(max_delay, base_delay * 2**(k-1))]`` ("full jitter"), but never
    less than the server's ``Retry-After``; a ``Retry-After`` longer than ``max_retry_after``
    is not waited for (the error is raised at once, carrying it). Timeouts are retried only if
    ``retry_timeouts``: the provider may have done — and billed — the work.
    """

    max_attempts: int = 3
    base_delay: float = 0.5
    max_delay: float = 20.0
    max_retry_after: float = 60.0
    retry_timeouts: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.max_attempts <= 20:
            raise ConfigError(
                f"retry max_attempts must be from 1 to 20, got {self.max_attempts}",
                context={"key": "retry.max_attempts"},
            )
        for name in ("base_delay", "max_delay", "max_retry_after"):
            if not 0 <= getattr(self, name) <= 3600:
                raise ConfigError(
                    f"retry {name} must be from 0 to 3600 seconds", context={"key": f"retry.{name}"}
                )

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based)."""
        cap = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        jitter = rng.uniform(0.0, cap)
        return jitter if retry_after is None else max(retry_after, jitter)


def parse_retry_after(headers: httpx.Headers, now: _dt.datetime) -> float | None:
    """Seconds from ``retry-after-ms`` (OpenAI) or ``Retry-After`` (seconds or an HTTP date)."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms is not None:
        try:
            return max(0.0, float(raw_ms) / 1000.0)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.UTC)
    return max(0.0, (when - now).total_seconds())


def upstream_error_details(body: bytes) -> tuple[str, str | None, str | None]:
    """(message, type, code) of an OpenAI- or Anthropic-style error body, or its text."""
    try:
        data: Any = parse_json(body, what="error body")
    except KeelError:
        text = body.decode("utf-8", "replace").strip()
        return (text[:300] or "(empty body)"), None, None
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict):
            message = error.get("message")
            kind = error.get("type")
            code = error.get("code")
            return (
                str(message) if message is not None else canonical_json(error)[:300],
                str(kind) if kind is not None else None,
                str(code) if code is not None else None,
            )
        if isinstance(error, str):
            return error[:300], None, None
        if isinstance(data.get("message"), str):
            return str(data["message"])[:300], None, None
    return canonical_json(data)[:300], None, None


def _status_code_name(status: int) -> str:
    if status in (401, 403):
        return "model_unauthorized"
    if status == 404:
        return "model_not_found"
    if status >= 500:
        return "model_unavailable"
    return "model_rejected"


class HTTPCaller:
    """Sends JSON requests to one provider with retries. Safe to share between tasks and
    threads: each event loop gets its own ``httpx.AsyncClient`` unless one was injected."""

    def __init__(
        self,
        *,
        provider: str,
        base_url: str,
        timeout: float,
        retry: RetryPolicy,
        clock: Clock,
        client: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        rng: random.Random | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(
                f"provider {provider!r} base_url must start with http:// or https://, "
                f"got {base_url!r}",
                context={"key": "base_url", "provider": provider},
            )
        if not timeout > 0:
            raise ConfigError(
                f"provider {provider!r} timeout must be positive seconds, got {timeout}",
                context={"key": "timeout", "provider": provider},
            )
        self.provider = provider
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retry = retry
        self.clock = clock
        self.max_response_bytes = max_response_bytes
        self._injected = client
        self._transport = transport
        self._rng = rng or random.Random()
        self._rng_lock = threading.Lock()
        self._sleep = sleep or asyncio.sleep
        self._lock = threading.Lock()
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
            weakref.WeakKeyDictionary()
        )

    # -- clients ---------------------------------------------------------------------------------

    def client(self) -> httpx.AsyncClient:
        if self._injected is not None:
            return self._injected
        loop = asyncio.get_running_loop()
        with self._lock:
            client = self._clients.get(loop)
            if client is None or client.is_closed:
                client = httpx.AsyncClient(
                    transport=self._transport,
                    timeout=httpx.Timeout(self.timeout),
                    follow_redirects=False,
                )
                self._clients[loop] = client
        return client

    async def aclose(self) -> None:
        """Close the client of the running loop (an injected client is the caller's to close)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            client = self._clients.pop(loop, None)
        if client is not None:
            await client.aclose()

    # -- calls -----------------------------------------------------------------------------------

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        with self._rng_lock:
            return self.retry.delay(attempt, retry_after, self._rng)

    async def post_json(
        self,
        path: str,
        body: Mapping[str, Any],
        *,
        headers: Mapping[str, str],
        model: str,
        params: Mapping[str, str] | None = None,
    ) -> tuple[httpx.Headers, bytes]:
        """POST ``body``; return the headers and body of a 2xx answer, retrying as configured.

        The whole attempt (connect, send, read) is bounded by ``timeout``."""
        response, data = await self._call(path, body, headers, model, params, stream=False)
        return response.headers, data

    async def open_stream(
        self,
        path: str,
        body: Mapping[str, Any],
        *,
        headers: Mapping[str, str],
        model: str,
        params: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """POST ``body`` and return the open 2xx response (the caller must ``aclose`` it).

        Retries happen only before the response starts; ``timeout`` bounds the wait for the
        response headers and then each read of the body."""
        response, _ = await self._call(path, body, headers, model, params, stream=True)
        return response

    async def _call(
        self,
        path: str,
        body: Mapping[str, Any],
        headers: Mapping[str, str],
        model: str,
        params: Mapping[str, str] | None,
        *,
        stream: bool,
    ) -> tuple[httpx.Response, bytes]:
        client = self.client()
        content = canonical_json(body).encode("utf-8")
        all_headers = {"content-type": "application/json", **headers}
        context = {"provider": self.provider, "model": model}
        attempt = 0
        while True:
            attempt += 1
            request = client.build_request(
                "POST", self.base_url + path, content=content, headers=all_headers, params=params
            )
            retry_after: float | None = None
            try:
                async with asyncio.timeout(self.timeout):
                    response = await client.send(request, stream=True)
                    if response.is_success and stream:
                        return response, b""
                    try:
                        data = await read_capped(response, self.max_response_bytes, context)
                    finally:
                        await response.aclose()
            except (TimeoutError, httpx.TimeoutException):
                error: KeelError = ModelTimeout(
                    f"{self.provider} did not answer within {self.timeout:g} s "
                    f"(attempt {attempt} of {self.retry.max_attempts})",
                    context={**context, "timeout_seconds": self.timeout, "attempts": attempt},
                )
                if not self.retry.retry_timeouts or attempt >= self.retry.max_attempts:
                    raise error from None
            except httpx.TransportError as exc:
                error = ModelError(
                    f"cannot reach {self.provider} at {self.base_url}: {type(exc).__name__}: {exc}",
                    code="model_unreachable",
                    retryable=True,
                    context={**context, "attempts": attempt},
                )
                if attempt >= self.retry.max_attempts:
                    raise error from None
            else:
                if response.is_success:
                    return response, data
                error, retry_after = self._status_error(response, data, context, attempt)
                status = response.status_code
                retryable = status in _RETRY_STATUSES or status >= 500
                too_long = retry_after is not None and retry_after > self.retry.max_retry_after
                if not retryable or too_long or attempt >= self.retry.max_attempts:
                    raise error
            await self._sleep(self._delay(attempt, retry_after))

    def _status_error(
        self, response: httpx.Response, body: bytes, context: Mapping[str, Any], attempt: int
    ) -> tuple[KeelError, float | None]:
        status = response.status_code
        message, kind, code = upstream_error_details(body)
        retry_after = parse_retry_after(response.headers, self.clock.now())
        details = {
            **context,
            "status": status,
            "attempts": attempt,
            "upstream_type": kind,
            "upstream_code": code,
        }
        text = f"{self.provider} answered HTTP {status}: {message}"
        if status == 429:
            wait = retry_after if retry_after is not None else self._delay(attempt, None)
            return (
                RateLimited(text, retry_after=wait, code="upstream_rate_limited", context=details),
                retry_after,
            )
        retryable = status in _RETRY_STATUSES or status >= 500
        return (
            ModelError(text, code=_status_code_name(status), retryable=retryable, context=details),
            retry_after,
        )


async def read_capped(response: httpx.Response, limit: int, context: Mapping[str, Any]) -> bytes:
    """The whole body of ``response``, refusing more than ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            raise ModelResponseInvalid(
                f"{context.get('provider')} sent a response larger than {limit} bytes",
                context={**context, "limit": limit},
            )
        chunks.append(chunk)
    return b"".join(chunks)


def json_body(
    headers: httpx.Headers, body: bytes, context: Mapping[str, Any], *, limit: int
) -> dict[str, Any]:
    """The JSON object of a 2xx answer, or ``ModelResponseInvalid`` saying what is wrong."""
    provider = context.get("provider")
    content_type = headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != "application/json":
        raise ModelResponseInvalid(
            f"{provider} answered with content type {content_type or '(none)'!r}; expected "
            "application/json",
            context={**context, "content_type": content_type},
        )
    try:
        data = parse_json(body, max_bytes=limit, what=f"{provider} response")
    except KeelError as exc:
        raise ModelResponseInvalid(
            f"{provider} sent a body that is not valid JSON (truncated?): {exc.message}",
            context={**context, **exc.context},
        ) from None
    if not isinstance(data, dict):
        raise ModelResponseInvalid(
            f"{provider} sent a JSON {type(data).__name__}; expected an object", context=context
        )
    return data


def stream_error(exc: Exception, provider: str, context: Mapping[str, Any]) -> KeelError:
    """Map an exception raised while reading a stream onto Keel's errors."""
    if isinstance(exc, KeelError):
        return exc
    if isinstance(exc, (TimeoutError, httpx.TimeoutException)):
        return ModelTimeout(f"{provider} stopped sending the stream (timeout)", context=context)
    return ModelResponseInvalid(
        f"{provider} stream broke off: {type(exc).__name__}: {exc}", context=context
    )


async def sse_events(
    response: httpx.Response, context: Mapping[str, Any], *, limit: int
) -> AsyncIterator[tuple[str, str]]:
    """Server-sent events of ``response`` as ``(event, data)``; ``event`` is "" when unnamed.

    Refuses a content type other than ``text/event-stream`` and streams over ``limit`` bytes.
    An event cut off by the end of the stream is dropped (the caller notices the missing end).
    """
    provider = context.get("provider")
    content_type = response.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != "text/event-stream":
        raise ModelResponseInvalid(
            f"{provider} answered a streaming request with content type "
            f"{content_type or '(none)'!r}; expected text/event-stream",
            context={**context, "content_type": content_type},
        )
    event = ""
    data: list[str] = []
    size = 0
    async for line in response.aiter_lines():
        size += len(line) + 1
        if size > limit:
            raise ModelResponseInvalid(
                f"{provider} sent a stream larger than {limit} bytes",
                context={**context, "limit": limit},
            )
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = "", []
        elif line.startswith(":"):
            continue
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                event = value
            elif name == "data":
                data.append(value)
