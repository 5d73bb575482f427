"""The provider interface: one small protocol every model endpoint implements.

A provider turns a ``ModelRequest`` into a ``ModelResponse`` (``complete``) or a stream of
``StreamChunk`` (``stream``). It knows nothing of governance: budgets, policy, approvals and
audit are the gateway's; a provider only speaks to its endpoint and says precisely what went
wrong (``ModelError`` and its subclasses, ``RateLimited`` for an upstream 429).

Contract for implementations:

- ``name`` is stable: prices, routes and cache entries are keyed on it.
- ``complete`` and ``stream`` may be called concurrently from many tasks of one event loop, and
  from several threads each running its own loop. They never block the loop.
- The last chunk of ``stream`` carries ``usage`` and the assembled ``response``. A consumer may
  stop iterating early (``aclose()`` on the iterator): the provider then stops reading and
  releases the connection.
- Cancelling a call cancels the HTTP request.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol, runtime_checkable

from keel.errors import ModelResponseInvalid, UsageError
from keel.models.types import ModelRequest, ModelResponse, StreamChunk

__all__ = ["Provider", "collect", "complete_sync"]


@runtime_checkable
class Provider(Protocol):
    """A model endpoint. See the module docstring for the concurrency contract."""

    name: str

    async def complete(self, request: ModelRequest) -> ModelResponse:
        """Send ``request`` and return the whole answer."""
        ...

    def stream(self, request: ModelRequest) -> AsyncIterator[StreamChunk]:
        """Send ``request`` and yield the answer as it arrives; the last chunk has usage."""
        ...


async def collect(chunks: AsyncIterator[StreamChunk]) -> ModelResponse:
    """Consume a stream and return its assembled response (from the final chunk)."""
    async for chunk in chunks:
        if chunk.response is not None:
            return chunk.response
    raise ModelResponseInvalid("the stream ended without a final chunk carrying the response")


def complete_sync(provider: Provider, request: ModelRequest) -> ModelResponse:
    """Run ``provider.complete(request)`` from synchronous code (no event loop running).

    Blocks until the answer arrives. Runs a fresh event loop and closes the provider's
    connections for it afterwards (``aclose``, when the provider has one), so repeated calls do
    not leak sockets; for throughput, use the async API. Raises ``UsageError`` if called from
    a thread that is running an event loop (``await provider.complete(request)`` there).
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise UsageError(
            "complete_sync() cannot run inside a running event loop; "
            "use `await provider.complete(request)` instead"
        )

    async def run() -> ModelResponse:
        try:
            return await provider.complete(request)
        finally:
            close: Callable[[], Awaitable[None]] | None = getattr(provider, "aclose", None)
            if close is not None:
                await close()

    return asyncio.run(run())
