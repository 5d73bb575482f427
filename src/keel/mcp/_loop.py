"""One event loop on a thread of its own, where every upstream MCP connection lives.

The SDK's client sessions are bound to the event loop (and task) that opened them, while Keel
calls tools from many places: the server's loop, worker threads, ``asyncio.run`` in a CLI. So
the connections live here and callers hand coroutines over, from any thread or loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["LoopThread"]

T = TypeVar("T")


class LoopThread:
    """A daemon thread running an asyncio loop; started on first use, stopped by ``close``."""

    def __init__(self, name: str = "keel-mcp") -> None:
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._adopted = False
        self._lock = threading.Lock()

    def adopt(self, loop: asyncio.AbstractEventLoop) -> None:
        """Use ``loop`` (a server's own, running) instead of a thread of our own: coroutines
        handed over from it then run in place, with no thread hop and no GIL ping-pong. Only
        before first use."""
        with self._lock:
            if self._loop is not None and self._loop is not loop:
                raise RuntimeError("the MCP loop is already running elsewhere")
            self._loop, self._adopted = loop, True

    def release(self) -> None:
        """Forget an adopted loop (its owner is shutting down)."""
        with self._lock:
            if self._adopted:
                self._loop, self._adopted = None, False

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def run() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()

                thread = threading.Thread(target=run, name=self._name, daemon=True)
                thread.start()
                ready.wait()
                self._loop, self._thread = loop, thread
            return self._loop

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` there and wait for it here (a thread that is not the loop's)."""
        return self.submit(coro).result(timeout)

    async def arun(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await ``coro`` run there, from any event loop (or directly, from the loop itself)."""
        loop = self.loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            return await coro
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop))

    def close(self, shutdown: Coroutine[Any, Any, Any] | None = None) -> None:
        with self._lock:
            loop, thread = self._loop, self._thread
            if self._adopted:
                loop = thread = None  # the owner closes its loop; see McpGateway.aclose
            self._loop = self._thread = None
            self._adopted = False
        if loop is None or thread is None:
            if shutdown is not None:
                shutdown.close()
            return
        if shutdown is not None:
            with contextlib.suppress(Exception):  # best effort at shutdown
                asyncio.run_coroutine_threadsafe(shutdown, loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        if not thread.is_alive():
            loop.close()
