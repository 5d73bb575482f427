"""Pieces of the HTTP plumbing: Retry-After parsing, backoff bounds, wire names."""

from __future__ import annotations

import datetime as _dt
import random

import httpx
from hypothesis import given
from hypothesis import strategies as st

from keel.models import RetryPolicy
from keel.models._common import WireNames
from keel.models._http import parse_retry_after, upstream_error_details

NOW = _dt.datetime(2026, 1, 1, tzinfo=_dt.UTC)


def test_retry_after_forms() -> None:
    assert parse_retry_after(httpx.Headers({"retry-after": "2"}), NOW) == 2.0
    assert parse_retry_after(httpx.Headers({"retry-after": "0.25"}), NOW) == 0.25
    assert (
        parse_retry_after(httpx.Headers({"retry-after-ms": "150", "retry-after": "9"}), NOW) == 0.15
    )
    date = "Thu, 01 Jan 2026 00:00:30 GMT"
    assert parse_retry_after(httpx.Headers({"retry-after": date}), NOW) == 30.0
    assert parse_retry_after(httpx.Headers({"retry-after": "-3"}), NOW) == 0.0
    assert parse_retry_after(httpx.Headers({"retry-after": "soon"}), NOW) is None
    assert parse_retry_after(httpx.Headers({}), NOW) is None


@given(attempt=st.integers(1, 30), retry_after=st.none() | st.floats(0, 100), seed=st.integers())
def test_backoff_is_bounded_and_honours_retry_after(
    attempt: int, retry_after: float | None, seed: int
) -> None:
    policy = RetryPolicy(base_delay=0.5, max_delay=20)
    delay = policy.delay(attempt, retry_after, random.Random(seed))
    cap = min(20.0, 0.5 * 2 ** (attempt - 1))
    if retry_after is None:
        assert 0 <= delay <= cap
    else:
        assert retry_after <= delay <= max(retry_after, cap)


def test_error_details() -> None:
    assert upstream_error_details(b'{"error": {"message": "m", "type": "t", "code": "c"}}') == (
        "m",
        "t",
        "c",
    )
    assert upstream_error_details(
        b'{"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}'
    ) == (
        "busy",
        "overloaded_error",
        None,
    )
    assert upstream_error_details(b"<html>oops</html>")[0] == "<html>oops</html>"
    assert upstream_error_details(b"")[0] == "(empty body)"


def test_wire_names_round_trip_and_never_collide() -> None:
    names = WireNames(["billing.refund", "billing__refund", "a" * 70, "a" * 71, "ok-name"])
    wires = [
        names.to_wire(n)
        for n in ["billing.refund", "billing__refund", "a" * 70, "a" * 71, "ok-name"]
    ]
    assert len(set(wires)) == 5
    assert all(len(w) <= 64 for w in wires)
    assert names.to_wire("billing__refund") == "billing__refund"
    assert names.to_wire("ok-name") == "ok-name"
    for original, wire in zip(
        ["billing.refund", "billing__refund", "a" * 70, "a" * 71], wires, strict=False
    ):
        assert names.from_wire(wire) == original
    assert names.from_wire("invented") == "invented"
