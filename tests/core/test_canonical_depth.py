"""The fast JSON depth scan agrees with the character-by-character reference on any text."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from keel.canonical import _text_depth, _text_depth_slow, parse_json

TEXT = st.text(alphabet='[]{}"\\ab,:\n', max_size=60)


@settings(max_examples=1000, deadline=None, derandomize=True)
@given(TEXT)
def test_the_fast_scan_equals_the_reference(text: str) -> None:
    assert _text_depth(text) == _text_depth_slow(text)


def test_brackets_in_strings_and_escapes_do_not_count() -> None:
    assert _text_depth(r'{"a": "[[[{{{\\\"]]]", "b": [[1]]}') == 3
    assert parse_json(b'{"x": "\\\\\\"[[["}') == {"x": '\\"[[['}
