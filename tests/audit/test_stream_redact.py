"""Redaction of streamed text (ATTACKS.md #33): a secret split across chunks is still caught,
however the stream is cut, and the result equals redacting the whole text at once."""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from keel.audit import Redactor, StreamRedactor

REDACTOR = Redactor(os.urandom(32))
SECRETS = [
    "4111 1111 1111 1111",
    "AKIAIOSFODNN7EXAMPLE",
    "sk-proj-ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
    "jane.roe@example.com",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl",
    "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----",
]
WORDS = st.sampled_from(["the", "order", "shipped", "refund", "42", "\n", "ok.", "a-b", "x"])
PARTS = st.lists(st.one_of(WORDS, st.sampled_from(SECRETS)), min_size=1, max_size=40)


def _stream(text: str, cuts: list[int], hold: int) -> str:
    redacting = StreamRedactor(REDACTOR, hold=hold)
    out = []
    position = 0
    for cut in sorted(set(cuts)):
        out.append(redacting.feed(text[position:cut]))
        position = cut
    out.append(redacting.feed(text[position:]))
    out.append(redacting.flush())
    return "".join(out)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(parts=PARTS, data=st.data(), hold=st.sampled_from([64, 128, 256]))
def test_any_cut_of_the_stream_redacts_like_the_whole(
    parts: list[str], data: st.DataObject, hold: int
) -> None:
    text = " ".join(parts)
    cuts = data.draw(st.lists(st.integers(min_value=0, max_value=len(text)), max_size=30))
    streamed = _stream(text, cuts, hold)
    assert streamed == REDACTOR.redact(text)
    for secret in SECRETS:
        assert secret not in streamed
    assert "4111" not in streamed and "-----BEGIN" not in streamed


def test_memory_stays_bounded_on_a_run_without_whitespace() -> None:
    redacting = StreamRedactor(REDACTOR, hold=64, max_hold=1024)
    released = "".join(redacting.feed("a" * 100) for _ in range(50))
    assert len(released) >= 5000 - 1024
    assert released + redacting.flush() == "a" * 5000
