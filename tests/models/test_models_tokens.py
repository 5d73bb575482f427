"""The token estimator: its rules, and the properties the ledger relies on."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from keel.models import (
    Message,
    ModelRequest,
    ToolCall,
    ToolDef,
    estimate_input_tokens,
    estimate_output_tokens,
    estimate_text_tokens,
)
from keel.models.tokens import MESSAGE_OVERHEAD, REPLY_PRIMING


def test_rules() -> None:
    assert estimate_text_tokens("") == 0
    assert estimate_text_tokens("the") == 1
    assert estimate_text_tokens("governance") == 2
    assert estimate_text_tokens("The quick brown fox jumps over the lazy dog.") == 10
    assert estimate_text_tokens("1234567") == 3  # digits in groups of three
    assert estimate_text_tokens("a  b") == 3  # a double space is a token
    assert estimate_text_tokens("a\nb") == 3
    assert estimate_text_tokens("日本語") == 3
    assert estimate_text_tokens("🙂") == 2


def test_request_overheads_and_tools() -> None:
    bare = ModelRequest("m", (Message.user("hi"),), max_tokens=1)
    assert estimate_input_tokens(bare) == REPLY_PRIMING + MESSAGE_OVERHEAD + 1
    tool = ToolDef(
        "lookup", "Look up", {"type": "object", "properties": {"id": {"type": "string"}}}
    )
    with_tool = ModelRequest("m", (Message.user("hi"),), max_tokens=1, tools=(tool,))
    assert estimate_input_tokens(with_tool) > estimate_input_tokens(bare) + 8
    schema = ModelRequest(
        "m", (Message.user("hi"),), max_tokens=1, output_schema={"type": "object"}
    )
    assert estimate_input_tokens(schema) > estimate_input_tokens(bare)


def test_output_counts_tool_calls() -> None:
    call = ToolCall.of("c", "lookup", {"id": "A-1"})
    assert estimate_output_tokens("hi", [call]) > estimate_output_tokens("hi")


@given(st.text(), st.text())
def test_concatenation_is_nearly_additive(a: str, b: str) -> None:
    joined = estimate_text_tokens(a + b)
    assert joined <= estimate_text_tokens(a) + estimate_text_tokens(b) + 1
    assert joined >= max(estimate_text_tokens(a), estimate_text_tokens(b)) - 2


@given(st.text(min_size=1))
def test_never_more_than_one_token_per_character_plus_astral(text: str) -> None:
    assert 0 <= estimate_text_tokens(text) <= 2 * len(text)


@given(st.text(alphabet=st.characters(codec="ascii"), min_size=1))
def test_ascii_text_is_at_least_a_sixth_of_its_letters(text: str) -> None:
    letters = sum(ch.isalpha() for ch in text)
    assert estimate_text_tokens(text) >= letters // 6
