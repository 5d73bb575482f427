"""Requests, responses and their validation: bad input is refused naming the field."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keel.errors import InvalidRequestError
from keel.models import (
    MAX_N,
    MAX_TOKENS_CAP,
    Choice,
    Message,
    ModelRequest,
    ModelResponse,
    ToolCall,
    ToolDef,
    Usage,
)

from .conftest import request


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_tokens", 0),
        ("max_tokens", -5),
        ("max_tokens", MAX_TOKENS_CAP + 1),
        ("max_tokens", 10**12),
        ("max_tokens", 1.5),
        ("max_tokens", True),
        ("n", 0),
        ("n", MAX_N + 1),
        ("n", 100),
        ("temperature", -0.1),
        ("temperature", 2.5),
        ("temperature", float("nan")),
        ("top_p", 0.0),
        ("top_p", 1.1),
        ("seed", "7"),
        ("stop", ("a", "b", "c", "d", "e")),
        ("stop", ("",)),
        ("tool_choice", "unknown_tool"),
        ("tool_choice", "required"),
        ("metadata", {"k": 1}),
        ("model", ""),
        ("model", "gpt 4"),
    ],
)
def test_bad_values_are_refused_naming_the_field(field: str, value: Any) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        request(**{field: value})
    assert caught.value.context["field"] == field
    assert field in caught.value.message


def test_absurd_max_tokens_message_says_what_is_accepted() -> None:
    with pytest.raises(InvalidRequestError, match=f"from 1 to {MAX_TOKENS_CAP}, got 10000000"):
        request(max_tokens=10_000_000)


def test_messages_are_checked() -> None:
    with pytest.raises(InvalidRequestError, match="at least one message"):
        ModelRequest("m", (), max_tokens=1)
    with pytest.raises(InvalidRequestError, match="tool_call_id"):
        Message("tool", "result")
    with pytest.raises(InvalidRequestError, match="only assistant"):
        Message("user", "x", tool_calls=(ToolCall.of("1", "t", {}),))
    with pytest.raises(InvalidRequestError, match="needs content"):
        Message("user", None)
    with pytest.raises(InvalidRequestError, match="role"):
        Message("robot", "x")  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestError, match="unique"):
        request(tools=(ToolDef("a"), ToolDef("a")))


def test_tool_call_parsing() -> None:
    assert ToolCall("1", "t", '{"a": 1}').arguments == {"a": 1}
    assert ToolCall("1", "t", "").arguments == {}
    assert ToolCall("1", "t", "[1]").error == "tool call arguments must be a JSON object, got list"
    assert "duplicate" in (ToolCall("1", "t", '{"a": 1, "a": 2}').error or "")
    assert "NaN" in (ToolCall("1", "t", '{"a": NaN}').error or "")
    assert not ToolCall("1", "t", "{").ok


def test_digest_ignores_metadata_and_argument_formatting() -> None:
    call_a = ToolCall("c1", "t", '{"b": 1, "a": 2}')
    call_b = ToolCall("c1", "t", '{ "a":2,"b":1 }')
    base = [Message.user("hi")]
    one = ModelRequest("m", (*base, Message.assistant(None, [call_a])), max_tokens=5)
    two = ModelRequest(
        "m", (*base, Message.assistant(None, [call_b])), max_tokens=5, metadata={"trace": "x"}
    )
    assert one.digest() == two.digest()
    assert one.digest() != ModelRequest("m", tuple(base), max_tokens=6).digest()
    assert request(temperature=1).digest() == request(temperature=1.0).digest()


def test_deterministic() -> None:
    assert request(temperature=0).deterministic
    assert request(seed=1).deterministic
    assert not request().deterministic
    assert not request(temperature=0.2, seed=1).deterministic
    assert not request(temperature=0, n=2).deterministic


def test_newer_records_are_refused() -> None:
    data = request().to_dict()
    data["v"] = 99
    with pytest.raises(InvalidRequestError) as caught:
        ModelRequest.from_dict(data)
    assert caught.value.code == "schema_version"


def test_response_round_trip_with_choices() -> None:
    response = ModelResponse(
        model="m",
        provider="p",
        text=None,
        usage=Usage(10, 5, 2),
        tool_calls=(ToolCall.of("c", "t", {"x": 1}),),
        finish_reason="tool_calls",
        response_id="r",
        more_choices=(Choice("second"),),
    )
    again = ModelResponse.from_dict(response.to_dict())
    assert again == response
    assert [c.text for c in again.choices] == [None, "second"]
    assert again.to_message().tool_calls == response.tool_calls


def test_usage_rules() -> None:
    assert (Usage(10, 1, 5) + Usage(1, 1, estimated=True)) == Usage(11, 2, 5, estimated=True)
    with pytest.raises(InvalidRequestError):
        Usage(1, 1, cached_input_tokens=2)
    with pytest.raises(InvalidRequestError):
        Usage(-1, 0)


_texts = st.text(min_size=1, max_size=40)
_messages = st.lists(
    st.builds(Message.user, _texts) | st.builds(Message.system, _texts), min_size=1, max_size=4
)


@given(
    messages=_messages,
    max_tokens=st.integers(1, MAX_TOKENS_CAP),
    n=st.integers(1, MAX_N),
    temperature=st.none() | st.floats(0, 2),
    seed=st.none() | st.integers(-(2**63), 2**63 - 1),
    metadata=st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
)
def test_records_round_trip(
    messages: list[Message],
    max_tokens: int,
    n: int,
    temperature: float | None,
    seed: int | None,
    metadata: dict[str, str],
) -> None:
    req = ModelRequest(
        "model-x",
        tuple(messages),
        max_tokens=max_tokens,
        n=n,
        temperature=temperature,
        seed=seed,
        metadata=metadata,
    )
    again = ModelRequest.from_dict(req.to_dict())
    assert again == req
    assert again.digest() == req.digest()


@given(max_tokens=st.integers(), n=st.integers())
def test_out_of_range_sizes_never_construct(max_tokens: int, n: int) -> None:
    valid = 1 <= max_tokens <= MAX_TOKENS_CAP and 1 <= n <= MAX_N
    if valid:
        assert request(max_tokens=max_tokens, n=n).max_tokens == max_tokens
    else:
        with pytest.raises(InvalidRequestError) as caught:
            request(max_tokens=max_tokens, n=n)
        assert caught.value.context["field"] in ("max_tokens", "n")


def test_an_empty_answer_still_makes_a_message() -> None:
    refused = ModelResponse("m", "p", None, Usage(1, 0), finish_reason="content_filter")
    assert refused.to_message() == Message.assistant("")
