"""The approval service on a real SQLite store: binding, decisions, tokens, deadlines."""

from __future__ import annotations

import datetime as _dt
import threading
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keel import App
from keel.approvals import ApprovalRequest, Approvals, Operator
from keel.audit import query
from keel.canonical import canonical_json
from keel.core import Call, Principal, Verdict
from keel.errors import AuthorizationError, InvalidRequestError, UsageError
from keel.testing import FrozenClock

from .conftest import ANA, BOB

APPROVAL = Verdict(
    "require_approval",
    "require_approval_if_over",
    "refunds over 200 need approval",
    "ph",
    1,
    (),
    "human_review",
)
TWO_PERSON = Verdict(
    "require_approval", "two_person_rule", "rotating keys needs two people", "ph", 2, (), None
)
ESCALATE = Verdict(
    "escalate", "fraud-review", "large refunds go to fraud review", "ph", 1, (), "fraud_review"
)


def make_call(
    amount: object = 300,
    *,
    agent: str = "refund-bot",
    tenant: str = "acme",
    on_behalf_of: str | None = "carol@example.com",
    run_id: str | None = None,
    step_id: str | None = None,
    act: tuple[str, ...] = (),
    target: str = "billing.refund",
) -> Call:
    return Call(
        kind="tool",
        target=target,
        arguments={"order_id": "A-1", "amount": amount},
        principal=Principal(agent, tenant, on_behalf_of=on_behalf_of, act=act),
        run_id=run_id,
        step_id=step_id,
    )


def ask(app: App, call: Call, verdict: Verdict = APPROVAL, **kw: Any) -> ApprovalRequest:
    return app.approvals.request(call, verdict, redact=app.redactor.redact, **kw)


def refused(fn: Any, *args: Any, **kwargs: Any) -> AuthorizationError:
    with pytest.raises(AuthorizationError) as info:
        fn(*args, **kwargs)
    return info.value


def actions(app: App) -> list[str]:
    return [r.entry.decision or "" for r in reversed(query(app.store, kind="control", limit=1000))]


# -- binding ---------------------------------------------------------------------------------


def test_binding_covers_tool_arguments_run_step_tenant_and_requester() -> None:
    base = Approvals.binding(make_call())
    assert base == Approvals.binding(make_call())
    assert base.startswith("sha256:")
    variants = [
        make_call(10_000),
        make_call(300.5),
        make_call(run_id="run_1"),
        make_call(step_id="2"),
        make_call(tenant="globex"),
        make_call(agent="other-bot"),
        make_call(on_behalf_of="mallory@example.com"),
        make_call(target="billing.refund2"),
    ]
    assert len({base, *(Approvals.binding(c) for c in variants)}) == len(variants) + 1


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=200, deadline=None)
@given(a=st.dictionaries(st.text(max_size=6), json_values, max_size=4), data=st.data())
def test_binding_is_canonical_and_separates_different_arguments(
    a: dict[str, Any], data: st.DataObject
) -> None:
    principal = Principal("bot", "acme")
    reordered = dict(reversed(list(a.items())))
    first = Call(kind="tool", target="t.x", arguments=a, principal=principal)
    same = Call(kind="tool", target="t.x", arguments=reordered, principal=principal)
    assert Approvals.binding(first) == Approvals.binding(same)
    b = data.draw(st.dictionaries(st.text(max_size=6), json_values, max_size=4))
    other = Call(kind="tool", target="t.x", arguments=b, principal=principal)
    # Equal exactly when the canonical arguments are equal (1 and True differ, as in JSON).
    assert (Approvals.binding(first) == Approvals.binding(other)) == (
        canonical_json(a) == canonical_json(b)
    )


# -- requests --------------------------------------------------------------------------------


def test_request_is_idempotent_per_bound_call_and_audited(app: App, clock: FrozenClock) -> None:
    call = make_call()
    first = ask(app, call)
    assert first.status == "pending"
    assert first.kind == "approval"
    assert first.deadline == clock.now() + _dt.timedelta(hours=24)
    assert first.requested_by == "refund-bot"
    assert first.on_behalf_of == "carol@example.com"
    again = ask(app, make_call())  # a new call id, the same bound call
    assert again.approval_id == first.approval_id
    other = ask(app, make_call(301))
    assert other.approval_id != first.approval_id
    assert actions(app) == ["approval.request", "approval.request"]
    record = query(app.store, kind="control", limit=1)[0]
    assert record.entry.body["args"] == {"order_id": "A-1", "amount": 301}
    assert record.entry.body["principal"]["agent"] == "refund-bot"


def test_arguments_shown_to_people_are_redacted(app: App) -> None:
    call = Call(
        kind="tool",
        target="billing.refund",
        arguments={"note": "card 4111 1111 1111 1111", "amount": 300},
        principal=Principal("bot", "acme"),
    )
    request = ask(app, call)
    assert "4111 1111 1111 1111" not in str(request.arguments)
    assert "4111 1111 1111 1111" not in str(app.approvals.get(request.approval_id).arguments)
    assert "4111 1111 1111 1111" not in str(query(app.store, kind="control", limit=1)[0].entry.body)


def test_only_approval_verdicts_make_requests(app: App) -> None:
    with pytest.raises(UsageError):
        ask(app, make_call(), Verdict("allow", "r", "ok"))


def test_explicit_deadline(app: App, clock: FrozenClock) -> None:
    request = ask(app, make_call(), deadline=_dt.timedelta(minutes=5))
    assert request.deadline == clock.now() + _dt.timedelta(minutes=5)


# -- ATTACKS #23 -----------------------------------------------------------------------------


def test_approve_small_then_execute_large_is_refused(app: App) -> None:
    small = make_call(10)
    request = ask(app, small)
    app.approvals.approve(request.approval_id, ANA)
    error = refused(app.approvals.claim, request.approval_id, make_call(10_000))
    assert error.code == "approval_binding_mismatch"
    # nor another step, run or agent
    for other in (make_call(10, step_id="9"), make_call(10, run_id="r"), make_call(10, agent="x")):
        assert refused(app.approvals.claim, request.approval_id, other).code == (
            "approval_binding_mismatch"
        )
    assert app.approvals.get(request.approval_id).status == "approved"  # nothing was taken


def test_an_approval_serves_one_execution(app: App) -> None:
    request = ask(app, make_call())
    app.approvals.approve(request.approval_id, ANA)
    call = make_call()
    claimed = app.approvals.claim(request.approval_id, call)
    assert claimed.status == "executing"
    with app.store.write() as tx:
        used = app.approvals.consume(tx, request.approval_id, call)
    assert used.status == "used"
    assert refused(app.approvals.claim, request.approval_id, make_call()).code == "approval_used"
    with app.store.write() as tx:
        error = refused(app.approvals.consume, tx, request.approval_id, make_call())
    assert error.code == "approval_used"


def test_a_claimed_approval_cannot_be_taken_by_a_second_call(app: App) -> None:
    request = ask(app, make_call())
    app.approvals.approve(request.approval_id, ANA)
    app.approvals.claim(request.approval_id, make_call())
    error = refused(app.approvals.claim, request.approval_id, make_call())
    assert error.code == "approval_in_use"
    with app.store.write() as tx:  # nor consumed by a call that does not hold the claim
        assert refused(app.approvals.consume, tx, request.approval_id, make_call()).code == (
            "approval_in_use"
        )


def test_concurrent_claims_let_exactly_one_call_through(app: App) -> None:
    request = ask(app, make_call())
    app.approvals.approve(request.approval_id, ANA)
    barrier = threading.Barrier(8)
    outcomes: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        barrier.wait()
        try:
            app.approvals.claim(request.approval_id, make_call())
            result = "claimed"
        except AuthorizationError as exc:
            result = exc.code
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["approval_in_use"] * 7 + ["claimed"]


@pytest.mark.parametrize(
    "operator",
    [
        Operator("refund-bot", frozenset({"approver"})),  # the requesting agent itself
        Operator("Refund-Bot ", frozenset({"admin"})),  # spelled differently
        Operator("carol@example.com", frozenset({"approver"})),  # the human it acts for
        Operator("CAROL@EXAMPLE.COM", frozenset({"approver"})),
        Operator("router-bot", frozenset({"approver"})),  # the agent that delegated to it
    ],
)
def test_the_requester_can_never_approve_its_own_call(app: App, operator: Operator) -> None:
    request = ask(app, make_call(act=("router-bot",)))
    error = refused(app.approvals.approve, request.approval_id, operator)
    assert error.code == "approval_self"
    assert app.approvals.get(request.approval_id).status == "pending"
    assert actions(app)[-1] == "approval.refused"


def test_approval_after_token_expiry_is_refused(app: App, clock: FrozenClock) -> None:
    request = ask(app, make_call())
    approved = app.approvals.approve(request.approval_id, ANA)
    assert approved.token_expires == clock.now() + _dt.timedelta(hours=1)
    clock.advance(hours=1)
    assert refused(app.approvals.claim, request.approval_id, make_call()).code == (
        "approval_expired"
    )
    changed = app.approvals.expire_due()
    assert [(r.approval_id, r.status) for r in changed] == [(request.approval_id, "expired")]
    assert refused(app.approvals.claim, request.approval_id, make_call()).code == (
        "approval_expired"
    )
    # The same call may ask again: a new request, a new decision.
    fresh = ask(app, make_call())
    assert fresh.approval_id != request.approval_id
    assert fresh.status == "pending"


def test_a_lapsed_token_is_replaced_when_the_call_asks_again(app: App, clock: FrozenClock) -> None:
    request = ask(app, make_call())
    app.approvals.approve(request.approval_id, ANA)
    clock.advance(hours=2)  # no expire_due run: the request itself applies the expiry
    fresh = ask(app, make_call())
    assert fresh.approval_id != request.approval_id
    assert app.approvals.get(request.approval_id).status == "expired"


def test_deadline_escalates_and_the_original_approvers_can_no_longer_decide(
    app: App, clock: FrozenClock
) -> None:
    request = ask(app, make_call())
    clock.advance(hours=24)
    error = refused(app.approvals.approve, request.approval_id, ANA)
    assert error.code == "approval_escalated"
    assert "human_review" in error.message
    stored = app.approvals.get(request.approval_id)
    assert stored.status == "escalated"  # the refused attempt still applied the deadline
    assert app.approvals.expire_due() == []  # already escalated
    reviewer = Operator("rita", frozenset({"human_review"}))
    approved = app.approvals.approve(request.approval_id, reviewer, note="checked the order")
    assert approved.status == "approved"
    assert approved.approved_by == ("rita",)


def test_expire_due_escalates_pending_requests_past_their_deadline(
    app: App, clock: FrozenClock
) -> None:
    late = ask(app, make_call(), deadline=_dt.timedelta(hours=1))
    ask(app, make_call(301), deadline=_dt.timedelta(hours=3))
    clock.advance(hours=2)
    changed = app.approvals.expire_due()
    assert [(r.approval_id, r.status) for r in changed] == [(late.approval_id, "escalated")]
    assert changed[0].history[-1].action == "escalate"
    assert "approval.escalate" in actions(app)
    admin = Operator("root", frozenset({"admin"}))
    assert app.approvals.approve(late.approval_id, admin).status == "approved"


def test_two_person_rule_needs_two_distinct_approvers(app: App) -> None:
    request = ask(app, make_call(target="admin.rotate"), TWO_PERSON)
    assert request.approvals_required == 2
    first = app.approvals.approve(request.approval_id, ANA)
    assert first.status == "pending"
    assert first.approved_by == ("ana",)
    assert refused(
        app.approvals.claim, request.approval_id, make_call(target="admin.rotate")
    ).code == ("approval_not_approved")
    for same in (ANA, Operator("ANA", frozenset({"admin"}))):
        error = refused(app.approvals.approve, request.approval_id, same)
        assert error.code == "approval_duplicate_approver"
    second = app.approvals.approve(request.approval_id, BOB)
    assert second.status == "approved"
    assert second.approved_by == ("ana", "bob")


def test_a_new_policy_asking_for_more_approvals_is_honoured(app: App) -> None:
    request = ask(app, make_call())
    app.approvals.approve(request.approval_id, ANA)
    error = refused(app.approvals.claim, request.approval_id, make_call(), verdict=TWO_PERSON)
    assert error.code == "approval_insufficient"


def test_cross_tenant_id_reads_exactly_like_an_unknown_id(app: App) -> None:
    request = ask(app, make_call())
    outsider = Operator("olga", frozenset({"admin"}), tenant="globex")

    def shape(error: AuthorizationError, approval_id: str) -> tuple[str, str, type[Exception]]:
        return error.code, error.message.replace(approval_id, "ID"), type(error)

    foreign = refused(app.approvals.approve, request.approval_id, outsider)
    unknown = refused(app.approvals.approve, "apr_" + "0" * 32, outsider)
    assert shape(foreign, request.approval_id) == shape(unknown, "apr_" + "0" * 32)
    assert foreign.code == "approval_not_found"
    assert refused(app.approvals.deny, request.approval_id, outsider, reason="x").code == (
        "approval_not_found"
    )
    assert refused(app.approvals.get, request.approval_id, tenant="globex").code == (
        "approval_not_found"
    )
    app.approvals.approve(request.approval_id, ANA)
    other_tenant = make_call(tenant="globex")
    assert refused(app.approvals.claim, request.approval_id, other_tenant).code == (
        "approval_not_found"
    )
    # The refused attempt is recorded, under the operator's tenant, without the request's data.
    record = next(
        r for r in query(app.store, kind="control", limit=100) if r.entry.tenant == "globex"
    )
    assert record.entry.decision == "approval.refused"
    assert record.entry.tool is None


def test_operators_need_an_approver_role_or_the_named_approvers(app: App) -> None:
    request = ask(app, make_call())
    nobody = Operator("nina", frozenset({"viewer"}))
    assert refused(app.approvals.approve, request.approval_id, nobody).code == (
        "approval_not_allowed"
    )
    assert refused(app.approvals.deny, request.approval_id, nobody, reason="no").code == (
        "approval_not_allowed"
    )
    named = Verdict("require_approval", "vendor-payments", "finance", "ph", 1, ("finance-lead",))
    pay = ask(app, make_call(target="vendor.pay"), named)
    error = refused(app.approvals.approve, pay.approval_id, ANA)  # approver, but not named
    assert error.code == "approval_not_allowed"
    assert "finance-lead" in error.message
    lead = Operator("fred", frozenset({"finance-lead"}))
    assert app.approvals.approve(pay.approval_id, lead).status == "approved"
    by_name = ask(app, make_call(target="vendor.pay", step_id="2"), named)
    person = Operator("finance-lead", frozenset())  # approvers may also name people
    assert app.approvals.approve(by_name.approval_id, person).status == "approved"


def test_deny_records_the_reason_and_the_call_sees_it(app: App) -> None:
    request = ask(app, make_call())
    with pytest.raises(InvalidRequestError):
        app.approvals.deny(request.approval_id, ANA, reason="  ")
    denied = app.approvals.deny(request.approval_id, ANA, reason="customer already refunded")
    assert denied.status == "denied"
    assert denied.denial is not None
    assert (denied.denial.actor, denied.denial.note) == ("ana", "customer already refunded")
    error = refused(app.approvals.claim, request.approval_id, make_call())
    assert error.code == "approval_denied"
    assert error.context["reason"] == "customer already refunded"
    assert refused(app.approvals.approve, request.approval_id, BOB).code == "approval_not_pending"
    record = next(
        r for r in query(app.store, kind="control", limit=10) if r.entry.decision == "approval.deny"
    )
    assert record.entry.body["actor"] == "ana"
    assert record.entry.body["note"] == "customer already refunded"
    assert ask(app, make_call()).approval_id != request.approval_id  # may ask again


def test_escalate_verdicts_start_escalated_and_an_operator_may_approve(app: App) -> None:
    request = ask(app, make_call(90_000), ESCALATE)
    assert (request.status, request.kind, request.escalate_to) == (
        "escalated",
        "escalation",
        "fraud_review",
    )
    assert refused(app.approvals.approve, request.approval_id, ANA).code == "approval_not_allowed"
    fraud = Operator("fiona", frozenset({"fraud_review"}))
    assert app.approvals.approve(request.approval_id, fraud).status == "approved"


def test_release_gives_the_claim_back_for_a_retry(app: App) -> None:
    request = ask(app, make_call())
    app.approvals.approve(request.approval_id, ANA)
    call = make_call()
    app.approvals.claim(request.approval_id, call)
    with app.store.write() as tx:
        assert app.approvals.release(tx, request.approval_id, make_call()) is None  # not its claim
        released = app.approvals.release(tx, request.approval_id, call)
    assert released is not None
    assert released.status == "approved"
    retry = make_call()
    app.approvals.claim(request.approval_id, retry)
    with app.store.write() as tx:
        assert app.approvals.consume(tx, request.approval_id, retry).status == "used"
    history = [e.action for e in app.approvals.get(request.approval_id).history]
    assert history == ["request", "approve", "claim", "release", "claim", "use"]


def test_list_and_get(app: App, clock: FrozenClock) -> None:
    a = ask(app, make_call())
    clock.advance(1)
    b = ask(app, make_call(tenant="globex", agent="g-bot"))
    app.approvals.approve(a.approval_id, ANA)
    assert [r.approval_id for r in app.approvals.list()] == [b.approval_id, a.approval_id]
    assert [r.approval_id for r in app.approvals.list(status="approved")] == [a.approval_id]
    assert [r.approval_id for r in app.approvals.list(tenant="globex")] == [b.approval_id]
    assert app.approvals.list(status="pending", tenant="acme") == []
    in_run = ask(app, make_call(run_id="run_7", step_id="1"))
    assert [r.approval_id for r in app.approvals.list(run_id="run_7")] == [in_run.approval_id]
    with pytest.raises(InvalidRequestError):
        app.approvals.list(status="bogus")  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestError):
        app.approvals.list(limit=0)
    got = app.approvals.get(a.approval_id)
    assert got.to_dict()["approved_by"] == ["ana"]
    assert refused(app.approvals.get, "nope").code == "approval_not_found"
    assert refused(app.approvals.get, "x" * 10_000).code == "approval_not_found"


def test_every_change_is_in_the_audit_log_and_the_chain_verifies(
    app: App, clock: FrozenClock
) -> None:
    request = ask(app, make_call())
    app.approvals.approve(request.approval_id, ANA, note="fine")
    call = make_call()
    app.approvals.claim(request.approval_id, call)
    with app.store.write() as tx:
        app.approvals.consume(tx, request.approval_id, call)
    assert actions(app) == [
        "approval.request",
        "approval.approve",
        "approval.claim",
        "approval.use",
    ]
    records = list(reversed(query(app.store, kind="control", limit=10)))
    assert all(r.entry.tool == "billing.refund" for r in records)
    assert all(r.entry.body["approval_id"] == request.approval_id for r in records)
    assert records[1].entry.body["actor"] == "ana"
    assert records[1].entry.body["note"] == "fine"
    assert records[1].entry.ts == clock.now()
    assert app.verify_audit().ok
