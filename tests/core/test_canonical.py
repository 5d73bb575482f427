from __future__ import annotations

import json
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keel.canonical import canonical_json, check_limits, digest, parse_json
from keel.errors import InvalidRequestError, PayloadTooLargeError

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=20,
)


@given(json_values)
def test_canonical_json_round_trips_and_is_stable(value: object) -> None:
    text = canonical_json(value)
    assert json.loads(text) == value
    assert canonical_json(json.loads(text)) == text


def test_key_order_does_not_change_the_digest() -> None:
    assert digest({"a": 1, "b": [1, 2]}) == digest({"b": [1, 2], "a": 1})
    assert digest({"a": 1}) != digest({"a": 2})


def test_decimal_is_encoded_exactly() -> None:
    assert canonical_json({"amount": Decimal("10.10")}) == '{"amount":"10.10"}'


def test_duplicate_keys_are_refused() -> None:
    with pytest.raises(InvalidRequestError) as info:
        parse_json('{"name":"read_file","name":"delete_file"}')
    assert info.value.code == "duplicate_key"
    assert "name" in info.value.message


def test_nan_and_infinity_are_refused() -> None:
    for text in ('{"a": NaN}', '{"a": Infinity}', "[-Infinity]"):
        with pytest.raises(InvalidRequestError):
            parse_json(text)


def test_truncated_json_names_the_position() -> None:
    with pytest.raises(InvalidRequestError) as info:
        parse_json('{"tool": "x", "arguments": {')
    assert info.value.code == "malformed_json"
    assert "line 1" in info.value.message


def test_oversized_body_is_refused_before_parsing() -> None:
    body = b'{"a":"' + b"x" * 2000 + b'"}'
    with pytest.raises(PayloadTooLargeError) as info:
        parse_json(body, max_bytes=1000)
    assert "1000" in info.value.message


def test_deep_nesting_is_refused_without_recursion_error() -> None:
    text = "[" * 5000 + "]" * 5000
    with pytest.raises(PayloadTooLargeError) as info:
        parse_json(text)
    assert info.value.code == "too_deep"
    deep: object = []
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(PayloadTooLargeError):
        check_limits(deep)


def test_brackets_inside_strings_do_not_count_as_depth() -> None:
    assert parse_json(json.dumps({"s": "[" * 500})) == {"s": "[" * 500}


def test_invalid_utf8_is_refused() -> None:
    with pytest.raises(InvalidRequestError):
        parse_json(b'{"a": "\xff"}')


def test_check_limits_returns_canonical_text_and_enforces_size() -> None:
    assert check_limits({"b": 1, "a": 2}) == '{"a":2,"b":1}'
    with pytest.raises(PayloadTooLargeError):
        check_limits({"a": "é" * 600}, max_bytes=1000)
