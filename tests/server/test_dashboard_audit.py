"""The dashboard's audit screen over real HTTP: search by every field with paging, one record
in full, the JSON-lines export, the chains' checkpoints and "Verify now" (roles, tenants, a
tampered record found), tenant isolation, and bad input answered with a message."""

from __future__ import annotations

import datetime as dt
import json
import re
import urllib.parse
from typing import Any

import httpx
import pytest

from keel.audit import Record, query

from .conftest import Served, csrf_of


def _login(served: Served, role: str, **options: Any) -> httpx.Client:
    return served.login(role, next="/audit", **options)[0]


def _activity(served: Served) -> str:
    """Records of every kind, two tenants, a run, a denial by policy and one by a guard, a
    minute apart; returns the run id."""
    clock = served.keel.clock
    for i in range(3):
        assert served.post({"tool": "orders.lookup", "arguments": {"n": i}}).status_code == 200
        clock.advance(minutes=1)  # type: ignore[attr-defined]
    big = {"tool": "billing.refund", "arguments": {"order_id": "A-1", "amount": 500}}
    assert served.post(big).status_code == 403
    clock.advance(minutes=1)  # type: ignore[attr-defined]
    stranger = served.keel.mint_token("stranger", tenant="globex", scopes=["orders:read"])
    assert served.post({"tool": "orders.lookup"}, token=stranger).status_code == 403
    clock.advance(minutes=1)  # type: ignore[attr-defined]
    served.keel.kill_switches.engage("tool", "ping.once", reason="drill", actor="ops")
    clock.advance(minutes=1)  # type: ignore[attr-defined]
    run = served.keel.runtime.submit("small-refund", {"order_id": "A-7"})
    served.keel.runtime.worker().drain()
    return run.run_id


def _listed(page: str) -> list[tuple[str, int]]:
    """The records the results table links to, in order."""
    assert '<table class="records">' in page, page[:2000]
    table = page.split('<table class="records">', 1)[1].split("</table>", 1)[0]
    found = re.findall(r'<a href="/audit/([^"?]+)/(\d+)"><code>', table)
    return [(urllib.parse.unquote(chain), int(seq)) for chain, seq in found]


def _keys(records: list[Record]) -> list[tuple[str, int]]:
    return [(r.chain, r.seq) for r in records]


def _clean(page: str) -> None:
    """What the CSP demands of every page: no inline style or script."""
    assert " style=" not in page
    assert re.search(r"<script(?![^>]*\ssrc=)", page) is None


def test_search_by_each_field_matches_the_query_api(served: Served) -> None:
    run_id = _activity(served)
    store = served.keel.store
    held = query(store, decision="require_approval")[0]
    refused = next(r for r in query(store, decision="deny") if r.entry.tenant == "globex")
    assert held.entry.rule_id and refused.entry.rule_id
    client = _login(served, "viewer")
    middle = query(store, limit=1000)[4].ts
    searches: list[dict[str, Any]] = [
        {},
        {"run_id": run_id},
        {"agent": "remote-bot"},
        {"tool": "billing.refund"},
        {"rule_id": held.entry.rule_id},
        {"rule_id": refused.entry.rule_id},
        {"decision": "deny"},
        {"kind": "control"},
        {"kind": "call", "tenant": "acme"},
        {"since": middle},
        {"until": middle},
        {"since": middle, "until": middle + dt.timedelta(seconds=1)},
    ]
    for search in searches:
        params = {
            k: v.strftime("%Y-%m-%dT%H:%M:%S.%f") if isinstance(v, dt.datetime) else v
            for k, v in search.items()
        }
        page = client.get("/audit", params=params)
        assert page.status_code == 200, page.text
        _clean(page.text)
        expected = _keys(query(store, **search, limit=50))
        assert expected, search
        assert _listed(page.text) == expected, search
    by_rule = _listed(client.get("/audit", params={"rule_id": held.entry.rule_id}).text)
    assert (held.chain, held.seq) in by_rule and (refused.chain, refused.seq) not in by_rule
    row = client.get("/audit", params={"run_id": run_id}).text
    assert f'href="/runs/{run_id}"' in row and "refund-bot" in row


def test_results_page_with_the_older_link(served: Served) -> None:
    for i in range(56):
        assert served.post({"tool": "orders.lookup", "arguments": {"n": i}}).status_code == 200
    client = _login(served, "viewer")
    first = client.get("/audit", params={"tool": "orders.lookup"}).text
    assert len(_listed(first)) == 50
    older = re.search(r'<a href="(/audit\?[^"]+)" rel="next">', first)
    assert older is not None
    link = older.group(1).replace("&amp;", "&")
    assert "tool=orders.lookup" in link and "cursor=" in link
    second = client.get(link).text
    assert "Back to the newest" in second
    assert 'rel="next"' not in second
    expected = _keys(query(served.keel.store, tool="orders.lookup", limit=1000))
    assert len(expected) == 56
    assert _listed(first) + _listed(second) == expected


def test_one_record_in_full(served: Served) -> None:
    secret = {
        "tool": "orders.lookup",
        "arguments": {"order_id": "A-5", "api_key": "sk-" + "x" * 40},
    }
    assert served.post(secret).status_code == 200
    (record,) = query(served.keel.store, kind="call", limit=1)
    stored = record.to_dict()
    assert "sk-" + "x" * 40 not in json.dumps(stored["body"]["args"])  # redacted when stored
    client = _login(served, "viewer")
    page = client.get(f"/audit/{record.chain}/{record.seq}")
    assert page.status_code == 200, page.text
    _clean(page.text)
    text = page.text
    for value in (
        stored["hash"],
        stored["prev_hash"],
        stored["body"]["args_digest"],
        stored["body"]["outcome_digest"],
        "orders.lookup",
        "remote-bot",
    ):
        assert value in text, value
    assert "sk-" + "x" * 40 not in text
    redacted = json.dumps(stored["body"]["args"]["api_key"])
    assert redacted.replace('"', "&#34;") in text or redacted in text
    assert "&#34;status&#34;: &#34;paid&#34;" in text  # the outcome
    for missing in (
        f"/audit/{record.chain}/999999",
        f"/audit/{record.chain}/abc",
        f"/audit/{record.chain}/{'9' * 40}",
        "/audit/no-such-chain/1",
        f"/audit/{'c' * 300}/1",
        "/audit/ma%00in/1",
        "/audit/ma%0Ain/%00",
    ):
        gone = client.get(missing)
        assert gone.status_code == 303, missing
        assert "err=1" in gone.headers["location"] and "No+audit+record" in gone.headers["location"]


def test_export_streams_the_search_as_json_lines(served: Served) -> None:
    _activity(served)
    client = _login(served, "viewer")
    page = client.get("/audit", params={"tool": "billing.refund"}).text
    link = re.search(r'<a href="(/audit/export\?[^"]+)" download>', page)
    assert link is not None
    answer = client.get(link.group(1).replace("&amp;", "&"))
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("application/x-ndjson")
    assert answer.headers["content-disposition"].startswith("attachment; filename=")
    assert answer.headers["content-disposition"].endswith('.jsonl"')
    assert answer.headers["x-content-type-options"] == "nosniff"
    lines = [json.loads(line) for line in answer.text.splitlines()]
    expected = query(served.keel.store, tool="billing.refund", limit=1000)
    assert lines == [json.loads(json.dumps(r.to_dict())) for r in expected]
    assert len(lines) >= 2
    everything = client.get("/audit/export").text.splitlines()
    assert len(everything) == len(query(served.keel.store, limit=1000))
    anonymous = httpx.get(f"{served.base}/audit/export")
    assert anonymous.status_code == 303 and anonymous.headers["location"].startswith("/login")


def test_verify_now_needs_an_operator_for_every_tenant(served: Served) -> None:
    _activity(served)
    viewer = _login(served, "viewer")
    page = viewer.get("/audit").text
    assert ">Verify now</button>" not in page and "needs the operator role" in page
    refused = viewer.post("/audit/verify", data={"csrf": csrf_of(page)})
    assert refused.status_code == 303 and "err=1" in refused.headers["location"]
    assert "operator+role" in refused.headers["location"]
    tenant_admin = _login(served, "admin", tenant="acme")
    page = tenant_admin.get("/audit").text
    assert ">Verify now</button>" not in page and "acts for tenant acme only" in page
    refused = tenant_admin.post("/audit/verify", data={"csrf": csrf_of(page)})
    assert refused.status_code == 303 and "tenant+acme+only" in refused.headers["location"]
    operator = _login(served, "operator")
    page = operator.get("/audit").text
    assert ">Verify now</button>" in page
    assert operator.post("/audit/verify", data={"csrf": "forged"}).status_code == 403
    done = operator.post("/audit/verify", data={"csrf": csrf_of(page)})
    assert done.status_code == 200, done.text
    _clean(done.text)
    assert "Verified: the log is intact." in done.text
    total = len(query(served.keel.store, limit=1000))
    assert f"{total} records in" in done.text


def test_verify_now_finds_a_record_tampered_with(served: Served) -> None:
    _activity(served)
    victim = query(served.keel.store, tool="billing.refund", limit=1)[0]
    with served.keel.store.write() as tx:
        changed = tx.execute(
            "UPDATE audit_records SET tool = 'wire.money' WHERE chain = ? AND seq = ?",
            (victim.chain, victim.seq),
        )
    assert changed == 1
    operator = _login(served, "operator")
    csrf = csrf_of(operator.get("/audit").text)
    done = operator.post("/audit/verify", data={"csrf": csrf})
    assert done.status_code == 200
    assert "Verification FAILED" in done.text and "hash does not match" in done.text
    assert f'href="/audit/{victim.chain}/{victim.seq}"' in done.text
    assert "Verified: the log is intact." not in done.text


def test_the_last_checkpoint_of_each_chain_is_shown(served: Served) -> None:
    _activity(served)
    made = served.keel.audit.checkpoints()
    assert made
    client = _login(served, "viewer")
    page = client.get("/audit").text
    integrity = page.split('id="h-integrity"', 1)[1].split("</table>", 1)[0]
    for checkpoint in made:
        assert f"<code>{checkpoint.chain}</code>" in integrity
        assert f">seq {checkpoint.seq}</a>" in integrity
    assert '<span class="badge deny">' not in integrity  # every signature valid, every record
    first = made[0]
    with served.keel.store.write() as tx:
        tx.execute(
            "UPDATE audit_records SET hash = ? WHERE chain = ? AND seq = ?",
            ("0" * 64, first.chain, first.seq),
        )
    broken = client.get("/audit").text.split('id="h-integrity"', 1)[1].split("</table>", 1)[0]
    assert '<span class="badge deny">no</span>' in broken


def test_a_tenant_key_sees_its_tenant_only(served: Served) -> None:
    _activity(served)
    store = served.keel.store
    client = _login(served, "viewer", tenant="acme")
    page = client.get("/audit").text
    mine = _keys(query(store, tenant="acme", limit=50))
    assert _listed(page) == mine and mine
    assert "their status is shown to keys for all tenants" in page
    assert 'name="tenant"' not in page
    globex = query(store, tenant="globex", limit=1)[0]
    assert (globex.chain, globex.seq) not in _listed(page)
    hidden = client.get(f"/audit/{globex.chain}/{globex.seq}")
    assert hidden.status_code == 303 and "err=1" in hidden.headers["location"]
    control = query(store, kind="control", decision="engage", limit=1)[0]
    assert control.entry.tenant is None
    assert client.get(f"/audit/{control.chain}/{control.seq}").status_code == 303
    asked = client.get("/audit", params={"tenant": "globex"}).text
    assert "no tenant &#39;globex&#39; for this key" in asked and _listed(asked) == []
    lines = client.get("/audit/export").text.splitlines()
    assert {json.loads(line)["tenant"] for line in lines} == {"acme"}
    assert len(lines) == len(query(store, tenant="acme", limit=1000))
    sneaky = client.get("/audit/export", params={"tenant": "globex"})
    assert sneaky.status_code == 303 and "err=1" in sneaky.headers["location"]
    own = _login(served, "viewer", tenant="acme")
    record_page = own.get(f"/audit/{mine[0][0]}/{mine[0][1]}").text
    assert "previous record" not in record_page  # its neighbours may be another tenant's


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"since": "yesterday"}, "From &#39;yesterday&#39; is not a time"),
        ({"until": "2026-13-45T99:00"}, "To &#39;2026-13-45T99:00&#39; is not a time"),
        ({"since": "0001-01-01T00:30+01:00"}, "From is outside the years 1 to 9999"),
        ({"until": "9" * 5000}, "To is not a time"),
        ({"agent": "a" * 5000}, "Agent is longer than 200 characters"),
        ({"rule_id": "r" * 201}, "Rule is longer than 200 characters"),
        ({"tool": "ping\x01once"}, "Tool holds a control character"),
        ({"kind": "vote"}, "Kind must be one of decision, call, control"),
        ({"cursor": "not-a-cursor"}, "the cursor is not one this server gave out"),
        ({"cursor": "WyJ4IiwxLCJtYWluIl0"}, "the cursor is not one this server gave out"),
    ],
)
def test_bad_input_gets_a_message_not_an_error(
    served: Served, params: dict[str, str], message: str
) -> None:
    assert served.post({"tool": "orders.lookup", "arguments": {}}).status_code == 200
    client = _login(served, "viewer")
    page = client.get("/audit", params=params)
    assert page.status_code == 200, page.text
    assert message in page.text, page.text[-3000:]
    assert 'class="flash error" role="alert"' in page.text
    assert _listed(page.text) == []
    exported = client.get("/audit/export", params=params)
    assert exported.status_code == 303 and "err=1" in exported.headers["location"]
    assert "Not+exported" in exported.headers["location"]
