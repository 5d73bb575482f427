"""Shared pieces for the model tests: stand-in servers, fast retries, a request factory."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from keel.models import Message, ModelRequest, RetryPolicy
from keel.testing._standins import AnthropicStandIn, OpenAIStandIn

T = TypeVar("T")

#: Retries without real waiting beyond a few milliseconds (Retry-After values in tests are tiny).
FAST = RetryPolicy(max_attempts=3, base_delay=0.001, max_delay=0.005)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def request(text: str = "hello", **kwargs: Any) -> ModelRequest:
    kwargs.setdefault("max_tokens", 64)
    return ModelRequest(kwargs.pop("model", "gpt-4o-mini"), (Message.user(text),), **kwargs)


class SleepLog:
    """Records the waits a provider asks for, then waits them (they are tiny in tests)."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        await asyncio.sleep(seconds)


@pytest.fixture
def openai_standin() -> Iterator[OpenAIStandIn]:
    with OpenAIStandIn(api_key="sk-upstream") as server:
        yield server


@pytest.fixture
def anthropic_standin() -> Iterator[AnthropicStandIn]:
    with AnthropicStandIn(api_key="ak-upstream") as server:
        yield server
