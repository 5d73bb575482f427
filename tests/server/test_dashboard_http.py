"""The dashboard over real HTTP: key → session cookie, CSRF on every form, roles on every
action, and the approvals queue deciding what a governed call waits for."""

from __future__ import annotations

import re
from typing import Any

import httpx

from keel.audit import query

from .conftest import Served, csrf_of

BIG_REFUND = {"tool": "billing.refund", "arguments": {"order_id": "A-9", "amount": 500}}


def _pending(served: Served) -> str:
    response = served.post(BIG_REFUND)
    assert response.status_code == 403, response.text
    return str(response.json()["error"]["context"]["approval_id"])


def _client(served: Served) -> httpx.Client:
    client = httpx.Client(base_url=served.base, follow_redirects=False)
    served.clients.append(client)
    return client


def _login(served: Served, role: str, **options: Any) -> tuple[httpx.Client, str]:
    client, key_id = served.login(role, **options)
    # the session cookie as the browser got it: HttpOnly, SameSite=Strict
    (cookie,) = [c for c in client.cookies.jar if c.name == "keel_session"]
    assert cookie.has_nonstandard_attr("HttpOnly")
    assert str(cookie.get_nonstandard_attr("SameSite")).lower() == "strict"
    return client, key_id


def test_an_approver_logs_in_sees_the_exact_call_and_approves_it(served: Served) -> None:
    approval_id = _pending(served)
    client, _ = _login(served, "approver", labels=("finance",))
    page = client.get("/approvals")
    assert page.status_code == 200
    assert approval_id in page.text and "billing.refund" in page.text
    assert "&#34;amount&#34;: 500" in page.text or '"amount": 500' in page.text
    assert "remote-bot" in page.text  # who asked
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    forged = client.post(f"/approvals/{approval_id}/approve", data={"csrf": "nope"})
    assert forged.status_code == 403
    assert served.keel.approvals.get(approval_id).status == "pending"
    done = client.post(f"/approvals/{approval_id}/approve", data={"csrf": csrf_of(page.text)})
    assert done.status_code == 303 and "approved" in done.headers["location"]
    assert served.keel.approvals.get(approval_id).status == "approved"
    assert served.post({**BIG_REFUND, "approval_id": approval_id}).status_code == 200
    assert approval_id not in client.get("/approvals").text  # no longer waiting


def test_a_viewer_sees_the_queue_but_cannot_decide(served: Served) -> None:
    approval_id = _pending(served)
    client, _ = _login(served, "viewer")
    page = client.get("/approvals").text
    assert approval_id in page and "cannot decide" not in page and "can look but not decide" in page
    refused = client.post(f"/approvals/{approval_id}/approve", data={"csrf": csrf_of(page)})
    assert refused.status_code == 303 and "err=1" in refused.headers["location"]
    assert served.keel.approvals.get(approval_id).status == "pending"


def test_a_denial_needs_a_reason_and_is_seen_by_the_agent(served: Served) -> None:
    approval_id = _pending(served)
    client, _ = _login(served, "approver", labels=("finance",))
    csrf = csrf_of(client.get("/approvals").text)
    empty = client.post(f"/approvals/{approval_id}/deny", data={"csrf": csrf, "reason": ""})
    assert "err=1" in empty.headers["location"]
    client.post(f"/approvals/{approval_id}/deny", data={"csrf": csrf, "reason": "not today"})
    assert served.keel.approvals.get(approval_id).status == "denied"
    retry = served.post({**BIG_REFUND, "approval_id": approval_id})
    assert retry.status_code == 403


def test_login_refusals_are_recorded_and_sessions_end_with_their_key(served: Served) -> None:
    anonymous = _client(served)
    assert anonymous.get("/approvals").headers["location"].startswith("/login")
    bad = anonymous.post("/login", data={"key": "keel_op_0000000000000000_" + "x" * 43})
    assert bad.status_code == 303 and "err=1" in bad.headers["location"]
    refusals = query(served.keel.store, kind="decision", decision="deny")
    assert any(r.entry.body.get("route") == "/login" for r in refusals)
    client, key_id = _login(served, "viewer")
    assert client.get("/approvals").status_code == 200
    served.keel.operator_keys.revoke(key_id)
    assert client.get("/approvals").headers["location"].startswith("/login")
    forged = _client(served)
    forged.cookies.set("keel_session", "eyJrIjoiYWJjIn0.c2ln")
    assert forged.get("/approvals").status_code == 303


def test_login_redirects_stay_on_this_server(served: Served) -> None:
    text, _ = served.keel.operator_keys.create("r", "viewer")
    client = _client(served)
    for target in ("//evil.example/x", "https://evil.example/", "/\\evil.example"):
        response = client.post("/login", data={"key": text, "next": target})
        assert response.headers["location"] == "/approvals"


def test_the_runs_screen_lists_runs_and_shows_their_steps(served: Served) -> None:
    client, _ = _login(served, "viewer")
    assert "No runs match." in client.get("/runs").text
    record = served.keel.runtime.submit("small-refund", {"order_id": "R-5"})
    served.keel.runtime.worker().drain()
    listing = client.get("/runs?workflow=small-refund&status=completed")
    assert record.run_id in listing.text
    shown = client.get(f"/runs/{record.run_id}")
    assert shown.status_code == 200 and "completed" in shown.text
    assert "orders.lookup" in shown.text and "billing.refund" in shown.text
    other = client.get("/runs?status=failed")
    assert record.run_id not in other.text
    for bad in ("status=bogus", "window=5y"):
        refused = client.get(f"/runs?{bad}")
        assert refused.status_code == 303 and "err=1" in refused.headers["location"], bad
    missing = client.get("/runs/run_nope")
    assert missing.status_code == 303 and "err=1" in missing.headers["location"]


def test_a_runs_timeline_shows_verdicts_rules_costs_and_links_to_its_records(
    served: Served,
) -> None:
    client, _ = _login(served, "viewer")
    record = served.keel.runtime.submit("small-refund", {"order_id": "R-7"}, on_behalf_of="ola")
    served.keel.runtime.worker().drain()
    page = client.get(f"/runs/{record.run_id}").text
    records = query(served.keel.store, run_id=record.run_id, limit=100)
    calls = [r for r in records if r.entry.kind == "call"]
    assert {r.entry.tool for r in calls} == {"orders.lookup", "billing.refund"}
    for call in calls:  # every executed call links to its record, with its rule
        assert f'href="/audit/{call.chain}/{call.seq}"' in page
        assert f"<code>{call.entry.rule_id}</code>" in page
        assert f"{call.entry.body['latency_ms']:.1f} ms" in page
    assert "on behalf of ola" in page and "run.completed" in page
    assert "&#34;order_id&#34;: &#34;R-7&#34;" in page  # the arguments, as recorded
    assert 'data-live="' not in page  # an ended run's page does not refresh itself


def test_the_runs_list_pages_filters_by_time_and_keeps_tenants_apart(served: Served) -> None:
    keel = served.keel
    made = []
    for i in range(105):
        keel.clock.advance(1)  # type: ignore[attr-defined]
        made.append(keel.runtime.submit("small-refund", {"order_id": f"P-{i}"}))
    client, _ = _login(served, "viewer")
    first = client.get("/runs").text
    assert made[-1].run_id in first and made[0].run_id not in first
    older = re.search(r'href="(/runs\?[^"]*before=[^"]+)"', first)
    assert older is not None
    second = client.get(older.group(1).replace("&amp;", "&")).text
    assert made[0].run_id in second and made[-1].run_id not in second
    assert "back to the newest" in second
    keel.clock.advance(3 * 86400)  # type: ignore[attr-defined]
    assert "No runs match." in client.get("/runs?window=24h").text
    assert made[-1].run_id in client.get("/runs?window=7d&before=junk").text
    other, _ = _login(served, "viewer", tenant="globex")
    assert "No runs match." in other.get("/runs?tenant=acme").text
    assert other.get(f"/runs/{made[0].run_id}").status_code == 303


def test_kill_switches_need_the_operator_role_a_reason_and_a_confirmation(
    served: Served,
) -> None:
    viewer, _ = _login(served, "viewer")
    page = viewer.get("/kill-switches").text
    assert "None: calls flow." in page and "can look but not flip" in page
    form = {"csrf": csrf_of(page), "scope": "tool", "target": "billing.refund", "reason": "x"}
    refused = viewer.post("/kill-switches/engage", data={**form, "confirm": "yes"})
    assert "err=1" in refused.headers["location"] and served.keel.kill_switches.list() == []
    operator, _ = _login(served, "operator")
    csrf = csrf_of(operator.get("/kill-switches").text)
    form["csrf"] = csrf
    unconfirmed = operator.post("/kill-switches/engage", data=form)
    assert "err=1" in unconfirmed.headers["location"]
    done = operator.post("/kill-switches/engage", data={**form, "confirm": "yes"})
    assert "err" not in done.headers["location"]
    assert [s.target for s in served.keel.kill_switches.list()] == ["billing.refund"]
    assert served.post(BIG_REFUND).json()["error"]["code"] == "kill_switch"
    tenant_key, _ = _login(served, "operator", tenant="acme")
    wide = tenant_key.post(
        "/kill-switches/engage",
        data={
            "csrf": csrf_of(tenant_key.get("/kill-switches").text),
            "scope": "global",
            "target": "*",
            "reason": "y",
            "confirm": "yes",
        },
    )
    assert "err=1" in wide.headers["location"]
    operator.post("/kill-switches/release", data={**form, "reason": "resolved"})
    assert served.keel.kill_switches.list() == []
    flips = query(served.keel.store, kind="control")
    assert (
        len(
            [
                r
                for r in flips
                if r.entry.tool == "billing.refund" or "billing.refund" in str(r.entry.body)
            ]
        )
        >= 2
    )


def test_policies_are_listed_with_hashes_and_a_pasted_call_is_explained(served: Served) -> None:
    client, _ = _login(served, "viewer")
    page = client.get("/policies").text
    policy = served.keel.policies[0]
    assert policy.name in page and policy.hash[:19] in page
    call = (
        '{"tool": "billing.refund", "arguments": {"order_id": "A-1", "amount": 500}, '
        '"agent": "remote-bot", "tenant": "acme"}'
    )
    explained = client.post("/policies/explain", data={"csrf": csrf_of(page), "call": call})
    assert explained.status_code == 200
    assert "require_approval" in explained.text
    assert "require_approval_if_over[billing.refund]" in explained.text
    broken = client.post("/policies/explain", data={"csrf": csrf_of(page), "call": "{nope"})
    assert broken.status_code == 303 and "err=1" in broken.headers["location"]
    assert client.post("/policies/explain", data={"call": call}).status_code == 403  # no CSRF
