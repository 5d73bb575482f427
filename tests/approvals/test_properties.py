"""Property: whatever operators and agents do, in any order, an approval authorizes at most one
execution of exactly its call, only after enough distinct non-requesting approvers, never after a
denial, and never after its token lapsed."""

from __future__ import annotations

import contextlib
import datetime as _dt
import itertools

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from keel import App
from keel.approvals import Operator
from keel.core import Call, Principal, Verdict
from keel.errors import AuthorizationError
from keel.testing import FrozenClock

PEOPLE = {
    "ana": Operator("ana", frozenset({"approver"})),
    "ANA": Operator("ANA", frozenset({"approver"})),
    "bob": Operator("bob", frozenset({"admin"})),
    "bot": Operator("refund-bot", frozenset({"approver"})),  # the requester
    "carol": Operator("carol", frozenset({"approver"})),  # the human it acts for
    "vic": Operator("vic", frozenset({"viewer"})),
    "fraud": Operator("fiona", frozenset({"fraud_review"})),
}
REQUESTERS = {"refund-bot", "carol"}
_steps = itertools.count()

# Weighted towards people who may decide and towards using the approval, so that successful
# uses are common enough to check what they imply.
deciders = st.sampled_from(["ana", "bob", "fraud"])
operation = st.one_of(
    st.tuples(st.just("approve"), deciders),
    st.tuples(st.just("approve"), deciders),
    st.tuples(st.just("approve"), st.sampled_from(sorted(PEOPLE))),
    st.tuples(st.just("deny"), st.sampled_from(sorted(PEOPLE))),
    st.tuples(st.just("use"), st.just(300)),
    st.tuples(st.just("use"), st.sampled_from([300, 301])),
    st.tuples(st.just("advance"), st.sampled_from([1, 30, 61, 60 * 25])),
    st.tuples(st.just("expire"), st.just(0)),
)


def call(amount: int, step: str) -> Call:
    return Call(
        kind="tool",
        target="billing.refund",
        arguments={"order_id": "A-1", "amount": amount},
        principal=Principal("refund-bot", "acme", on_behalf_of="carol"),
        run_id="run_p",
        step_id=step,
    )


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    required=st.sampled_from([1, 2]),
    escalate=st.booleans(),
    ops=st.lists(operation, max_size=12),
)
def test_an_approval_authorizes_at_most_one_exact_execution(
    app: App,
    clock: FrozenClock,
    required: int,
    escalate: bool,
    ops: list[tuple[str, int | str]],
) -> None:
    step = str(next(_steps))  # a fresh bound call per example, in one store
    verdict = Verdict(
        "escalate" if escalate else "require_approval",
        "rule",
        "needs a person",
        "ph",
        required,
        (),
        "fraud_review",
    )
    request = app.approvals.request(call(300, step), verdict, redact=app.redactor.redact)
    aid = request.approval_id
    uses = 0
    for op, arg in ops:
        if op == "approve":
            with contextlib.suppress(AuthorizationError):
                app.approvals.approve(aid, PEOPLE[str(arg)])
        elif op == "deny":
            with contextlib.suppress(AuthorizationError):
                app.approvals.deny(aid, PEOPLE[str(arg)], reason="no")
        elif op == "advance":
            clock.advance(minutes=int(arg))
        elif op == "expire":
            app.approvals.expire_due()
        else:
            attempt = call(int(arg), step)
            try:
                app.approvals.claim(aid, attempt, verdict=verdict)
                with app.store.write() as tx:
                    app.approvals.consume(tx, aid, attempt)
            except AuthorizationError:
                continue
            uses += 1
            event("used")
            state = app.approvals.get(aid)
            assert attempt.arguments["amount"] == 300
            approvers = {p.casefold() for p in state.approved_by}
            assert len(approvers) == len(state.approved_by) >= required
            assert not approvers & REQUESTERS
            assert state.denial is None
            assert state.token_expires is not None and state.decided_at is not None
            assert state.used_at is not None and state.used_at < state.token_expires
            assert state.token_expires - state.decided_at == _dt.timedelta(hours=1)
    assert uses <= 1
    if uses:
        assert app.approvals.get(aid).status == "used"
