"""Token estimates: how many tokens a request will use, before it is sent.

The ledger reserves a model call's worst-case cost before the call; that needs the input token
count, which only the provider's tokenizer knows exactly. This estimator approximates byte-pair
encoders (OpenAI's cl100k/o200k, Anthropic's, Llama's) without their vocabularies:

- a run of ASCII letters counts one token per started 6 letters (``the`` 1, ``governance`` 2);
- a run of digits counts one token per started 3 digits (GPT-4-family tokenizers split numbers
  into groups of three, so this part is exact for them);
- each ASCII punctuation or symbol character counts one token;
- a single space is free (tokenizers fold it into the next word); any other run of whitespace
  (newlines, indentation) counts one token;
- each other character counts one token, two outside the Basic Multilingual Plane (emoji).

A request adds 4 tokens per message (role and separators), 3 for priming the reply, and for each
tool 8 plus its canonical-JSON definition; the output schema likewise.

Error bound. For English prose the count lands close to those tokenizers' counts (within about
10–15% either way). For code and JSON it over-counts, by up to about 50%: identifiers and
punctuation runs that a real vocabulary merges are counted as split. Over-counting is the safe
direction for a budget reservation. It under-counts text in which one character takes several
tokens (rare CJK ideographs, some Indic scripts, composed emoji), by up to about 3x.

The estimate is only used to *reserve*: the ledger settles on the provider-reported usage, and
a provider that reports none is refused unless estimated usage is allowed (then
``Usage.estimated`` says so).

Pure functions; thread-safe; they do not block.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from typing import Final

from keel.canonical import canonical_json
from keel.models.types import ModelRequest, ToolCall

__all__ = [
    "MESSAGE_OVERHEAD",
    "REPLY_PRIMING",
    "TOOL_OVERHEAD",
    "estimate_input_tokens",
    "estimate_output_tokens",
    "estimate_text_tokens",
]

MESSAGE_OVERHEAD: Final = 4
REPLY_PRIMING: Final = 3
TOOL_OVERHEAD: Final = 8

_PIECES: Final = re.compile(r"[A-Za-z]+|[0-9]+|\s{2,}|\s|[\x00-\x7f]|[^\x00-\x7f]")


_LETTERS: Final = re.compile(r"[A-Za-z]+")
_DIGITS: Final = re.compile(r"[0-9]+")
_SPACES: Final = re.compile(r"\s+")
#: Texts up to this long are remembered (system prompts and history repeat call after call).
_CACHED_UP_TO: Final = 16384


def estimate_text_tokens(text: str) -> int:
    """Estimated tokens of ``text`` (see the module docstring for the rules and error bound)."""
    if not text:
        return 0
    if len(text) <= _CACHED_UP_TO:
        return _estimate_cached(text)
    return _estimate(text)


@functools.lru_cache(maxsize=1024)  # at most ~16 MB of remembered text
def _estimate_cached(text: str) -> int:
    return _estimate(text)


def _estimate(text: str) -> int:
    if text.isascii():
        # The same count as the general loop below, by runs instead of piece by piece.
        letters = _LETTERS.findall(text)
        digits = _DIGITS.findall(text)
        spaces = _SPACES.findall(text)
        total = sum((len(run) + 5) // 6 for run in letters)
        total += sum((len(run) + 2) // 3 for run in digits)
        total += sum(1 for run in spaces if run != " ")
        covered = sum(map(len, letters)) + sum(map(len, digits)) + sum(map(len, spaces))
        return total + len(text) - covered  # every other ASCII character is one token
    return _estimate_pieces(text)


def _estimate_pieces(text: str) -> int:
    total = 0
    for match in _PIECES.finditer(text):
        piece = match.group()
        first = piece[0]
        if first.isascii():
            if first.isalpha():
                total += -(-len(piece) // 6)
            elif first.isdigit():
                total += -(-len(piece) // 3)
            elif piece != " ":
                total += 1
        else:
            total += 2 if ord(first) > 0xFFFF else 1
    return total


def _tool_call_tokens(calls: Iterable[ToolCall]) -> int:
    return sum(
        MESSAGE_OVERHEAD + estimate_text_tokens(c.name) + estimate_text_tokens(c.arguments_json)
        for c in calls
    )


def estimate_input_tokens(request: ModelRequest) -> int:
    """Estimated input tokens of ``request``: messages, tool definitions and output schema."""
    total = REPLY_PRIMING
    for message in request.messages:
        total += MESSAGE_OVERHEAD
        if message.content:
            total += estimate_text_tokens(message.content)
        if message.name:
            total += estimate_text_tokens(message.name)
        total += _tool_call_tokens(message.tool_calls)
    for tool in request.tools:
        total += TOOL_OVERHEAD + estimate_text_tokens(canonical_json(tool.to_dict()))
    if request.output_schema is not None:
        total += TOOL_OVERHEAD + estimate_text_tokens(canonical_json(request.output_schema))
    return total


def estimate_output_tokens(text: str | None, tool_calls: Iterable[ToolCall] = ()) -> int:
    """Estimated tokens of an answer: its text and the tool calls it makes."""
    return estimate_text_tokens(text or "") + _tool_call_tokens(tool_calls)
