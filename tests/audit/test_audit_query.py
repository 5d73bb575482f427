"""Searching the audit log."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import pytest

import keel.audit
from keel.audit import AuditEntry, query
from keel.errors import InvalidRequestError
from keel.store import Store

Entry = Callable[..., AuditEntry]


def test_newest_first_with_limit(filled: Store) -> None:
    records = query(filled, limit=5)
    assert [r.seq for r in records] == [30, 29, 28, 27, 26]


def test_filters(filled: Store) -> None:
    by_run = query(filled, run_id="run-1", limit=1000)
    assert by_run and all(r.entry.run_id == "run-1" for r in by_run)
    assert len(by_run) == 10
    refunds = query(filled, agent="agent-1", tool="refund", limit=1000)
    assert refunds and all((r.entry.agent, r.entry.tool) == ("agent-1", "refund") for r in refunds)
    denied = query(filled, decision="deny", limit=1000)
    assert denied and all(r.entry.kind == "decision" for r in denied)
    controls = query(filled, kind="control", limit=1000)
    assert len(controls) == 10 and all(r.entry.tool == "kill_switch" for r in controls)
    assert len(query(filled, tenant="zürich", limit=1000)) == 8
    assert query(filled, chain="other") == []
    assert query(filled, agent="nobody") == []


def test_time_window(filled: Store) -> None:
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    window = query(
        filled, since=start + dt.timedelta(minutes=10), until=start + dt.timedelta(minutes=15)
    )
    assert [r.seq for r in window] == [15, 14, 13, 12, 11]
    other_zone = dt.timezone(dt.timedelta(hours=-5))
    same = query(
        filled,
        since=(start + dt.timedelta(minutes=10)).astimezone(other_zone),
        until=(start + dt.timedelta(minutes=15)).astimezone(other_zone),
    )
    assert same == window


def test_paging_backwards(filled: Store) -> None:
    pages, before = [], None
    while page := query(filled, limit=7, before_seq=before):
        pages.append([r.seq for r in page])
        before = page[-1].seq
    assert [seq for page in pages for seq in page] == list(range(30, 0, -1))


def test_limit_is_validated(filled: Store) -> None:
    with pytest.raises(InvalidRequestError):
        query(filled, limit=0)
    with pytest.raises(InvalidRequestError):
        query(filled, limit=keel.audit.query.__globals__["MAX_LIMIT"] + 1)
