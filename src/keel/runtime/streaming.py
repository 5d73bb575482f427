"""Streamed model calls, governed: the same chokepoint as any call, with a meter on the stream.

``GovernedStream`` opens the call at the gateway (identity, policy, budget: the worst case of
``max_tokens`` × ``n`` is held before anything is sent), then relays the provider's chunks.
While they flow it

- meters output tokens (Keel's estimator). The worst-case hold covers a provider that honours
  ``max_tokens``; once the metered output passes it (an upstream that runs past its limit, or
  the estimator counting high) the hold must grow, a block at a time, against every cap
  (``Ledger.extend``) before the chunk is passed on. When a cap has no room the stream stops
  and that chunk is withheld: BudgetExceeded is raised to the consumer after the call is
  recorded;
- runs the checks that can change while a call runs (kill switches, the agent's token) about once
  a second, and stops the stream the same way when one refuses.

A stream that stopped early (a cap, a kill switch, the provider failing after the first chunk,
or the consumer going away) is recorded as a call whose outcome is what had arrived, with
estimated usage (at most what the hold covers: a cap is never passed), settled as spent: the
provider bills tokens it generated, delivered or not.
The record's ``notes.stream_stopped`` says why. A provider failure before the first chunk falls
back to the next routed target, like ``ModelCaller.complete``. A replayed or cached answer is
replayed as a stream of one chunk per choice.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from typing import Any

from keel.errors import KeelError, ModelResponseInvalid
from keel.gateway import CallRequest, CallResult, Gateway, OpenCall
from keel.models import (
    ModelRequest,
    ModelResponse,
    StreamChunk,
    ToolCall,
    Usage,
    estimate_input_tokens,
    estimate_text_tokens,
)
from keel.models.types import Choice, FinishReason, ToolCallDelta

__all__ = ["GovernedStream"]


class _Before(Exception):
    """The attempt failed before its first chunk (the next target may be tried)."""

    def __init__(self, error: KeelError) -> None:
        super().__init__(error.message)
        self.error = error


class _Meter:
    """Counts a stream's output tokens against what its hold covers."""

    def __init__(self, request: ModelRequest) -> None:
        self.input_tokens = estimate_input_tokens(request) * request.n
        self.covered = request.max_tokens * request.n
        self.block = max(64, request.max_tokens // 4)
        self.output_tokens = 0

    def add(self, chunk: StreamChunk) -> int:
        """Count ``chunk``; return how many tokens the hold must grow by now (0: none)."""
        tokens = estimate_text_tokens(chunk.delta) if chunk.delta else 0
        for piece in chunk.tool_calls:
            tokens += estimate_text_tokens(piece.arguments) + (1 if piece.name else 0)
        self.output_tokens += tokens
        if self.output_tokens <= self.covered:
            return 0
        return self.output_tokens - self.covered + self.block

    def grown(self, tokens: int) -> None:
        """The hold now covers ``tokens`` more."""
        self.covered += tokens


class _Partial:
    """What has arrived of a stream, to record when it stops before its final chunk."""

    def __init__(self) -> None:
        self.text: dict[int, list[str]] = {}
        self.calls: dict[tuple[int, int], list[str]] = {}
        self.names: dict[tuple[int, int], tuple[str | None, str | None]] = {}
        self.started = False

    def add(self, chunk: StreamChunk) -> None:
        self.started = True
        if chunk.delta:
            self.text.setdefault(chunk.index, []).append(chunk.delta)
        for piece in chunk.tool_calls:
            key = (chunk.index, piece.index)
            self.calls.setdefault(key, []).append(piece.arguments)
            old_id, old_name = self.names.get(key, (None, None))
            self.names[key] = (piece.id or old_id, piece.name or old_name)

    def response(self, request: ModelRequest, provider: str, meter: _Meter) -> ModelResponse:
        indexes = sorted({*self.text, *(i for i, _ in self.calls)}) or [0]
        choices = []
        for index in indexes:
            calls = []
            for (choice, number), pieces in sorted(self.calls.items()):
                if choice != index:
                    continue
                call_id, name = self.names[(choice, number)]
                calls.append(
                    ToolCall(
                        call_id or f"call_partial_{number}", name or "unknown", "".join(pieces)
                    )
                )
            text = "".join(self.text.get(index, ()))
            choices.append(Choice(text, tuple(calls), finish_reason="length"))
        first = choices[0]
        return ModelResponse(
            model=request.model,
            provider=provider,
            text=first.text,
            usage=Usage(
                meter.input_tokens, min(meter.output_tokens, meter.covered), estimated=True
            ),
            tool_calls=first.tool_calls,
            finish_reason="length",
            more_choices=tuple(choices[1:]),
        )


def replay_chunks(response: ModelResponse) -> list[StreamChunk]:
    """A whole answer as a stream: one chunk per choice, then the final chunk."""
    chunks: list[StreamChunk] = []
    for index, choice in enumerate(response.choices):
        deltas = tuple(
            ToolCallDelta(number, call.id, call.name, call.arguments_json)
            for number, call in enumerate(choice.tool_calls)
        )
        if choice.text or deltas:
            chunks.append(StreamChunk(delta=choice.text or "", tool_calls=deltas, index=index))
    last: FinishReason = response.finish_reason
    chunks.append(StreamChunk(finish_reason=last, usage=response.usage, response=response))
    return chunks


class GovernedStream:
    """One streamed, governed model call (with fallback over ``targets`` before the first
    chunk). Iterate ``chunks()`` once. After it ends, ``result`` is the recorded CallResult
    (also when the stream stopped early), ``stopped`` the KeelError that stopped it, if any.
    """

    def __init__(
        self,
        gateway: Gateway,
        targets: Sequence[str],
        attempt: Callable[[int, str, KeelError | None], CallRequest],
        fallback: tuple[type[KeelError], ...],
        recheck_every: float = 1.0,
    ) -> None:
        self._gateway = gateway
        self._targets = list(targets)
        self._attempt = attempt
        self._fallback = fallback
        self._recheck_every = recheck_every
        self.result: CallResult | None = None
        self.stopped: KeelError | None = None
        self.attempts: list[dict[str, Any]] = []

    def __aiter__(self) -> AsyncIterator[StreamChunk]:
        return self.chunks()

    async def chunks(self) -> AsyncIterator[StreamChunk]:
        last_error: KeelError | None = None
        for number, model in enumerate(self._targets):
            try:
                call = self._gateway.open(self._attempt(number, model, last_error))
            except self._fallback as exc:
                self.attempts.append({"model": model, "error": exc.code})
                last_error = exc
                continue
            if not call.executes:
                self.result = call.finish()
                self.attempts.append({"model": model, "cached": self.result.cached})
                for chunk in replay_chunks(_replayed(self.result, model)):
                    yield chunk
                return
            attempt = self._run(call)
            try:
                async for chunk in attempt:
                    yield chunk
            except _Before as failed:
                self.attempts.append({"model": model, "error": failed.error.code})
                if not isinstance(failed.error, self._fallback):
                    raise failed.error from None
                last_error = failed.error
                continue
            finally:
                await attempt.aclose()  # the consumer left: record the call now, not at GC
            return
        assert last_error is not None
        raise last_error

    async def _run(self, call: OpenCall) -> AsyncGenerator[StreamChunk, None]:
        target = call.tool
        astream = getattr(target, "astream", None)
        if astream is None:
            call.fail(ModelResponseInvalid(f"{target.spec.name} cannot stream"))
        request = ModelRequest.from_dict(call.arguments)
        meter = _Meter(request)
        partial = _Partial()
        provider = str(getattr(getattr(target, "provider", None), "name", "unknown"))
        upstream: AsyncIterator[StreamChunk] = astream(call.arguments, call.tool_context())
        next_check = time.monotonic() + self._recheck_every
        try:
            async for chunk in upstream:
                if chunk.response is not None:
                    self.result = call.finish(chunk.response.to_dict())
                    self.attempts.append(
                        {"model": target.spec.name, "cost_usd": str(self.result.cost.usd)}
                    )
                    yield chunk
                    return
                partial.add(chunk)
                grow = meter.add(chunk)
                if grow:
                    call.extend(target.output_cost(call.arguments, grow))  # type: ignore[attr-defined]
                    meter.grown(grow)
                if time.monotonic() >= next_check:
                    call.recheck()
                    next_check = time.monotonic() + self._recheck_every
                yield chunk
            raise ModelResponseInvalid(
                f"the stream from {target.spec.name} ended without its final chunk"
            )
        except KeelError as exc:
            if not partial.started:
                try:
                    call.fail(exc)
                except KeelError as recorded:
                    raise _Before(recorded) from None
            self._stop(call, request, provider, meter, partial, exc.code, exc.message)
            self.stopped = exc
            raise
        except BaseException as exc:  # the consumer went away (GeneratorExit, cancellation)
            if not call.ended:
                closed = isinstance(exc, (GeneratorExit, asyncio.CancelledError))
                reason = "consumer_closed" if closed else type(exc).__name__
                self._stop(call, request, provider, meter, partial, reason, str(exc) or reason)
            raise
        finally:
            close = getattr(upstream, "aclose", None)
            if close is not None:
                await close()

    def _stop(
        self,
        call: OpenCall,
        request: ModelRequest,
        provider: str,
        meter: _Meter,
        partial: _Partial,
        code: str,
        message: str,
    ) -> None:
        """Record a stream that stopped early: what arrived, spent at its estimated usage."""
        call.note(
            "stream_stopped",
            {"code": code, "message": message, "output_tokens": meter.output_tokens},
        )
        self.result = call.finish(partial.response(request, provider, meter).to_dict())


def _replayed(result: CallResult, model: str) -> ModelResponse:
    if result.value is None:  # shadow mode: recorded, nothing was sent
        return ModelResponse(
            model=model, provider="shadow", text="", usage=Usage(0, 0), finish_reason="other"
        )
    return ModelResponse.from_dict(result.value)
