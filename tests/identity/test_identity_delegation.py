"""Delegation: scopes only narrow, expiry never extends, the act chain records every actor."""

from __future__ import annotations

import datetime as dt

import jwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keel.errors import AuthenticationError, AuthorizationError, UsageError
from keel.identity import (
    MAX_DELEGATION_DEPTH,
    KeySet,
    TokenIssuer,
    TokenVerifier,
    delegate,
    scope_covers,
)
from keel.testing import FrozenClock


def parent_token(issuer: TokenIssuer, scopes: list[str], **extra: object) -> str:
    args: dict[str, object] = {
        "agent_id": "router",
        "tenant": "acme",
        "roles": ["orchestrator", "support"],
        "scopes": scopes,
        "audience": "gateway",
        "on_behalf_of": "alice@acme.test",
        "run_id": "run-1",
    }
    args.update(extra)
    return issuer.mint(**args)  # type: ignore[arg-type]


def test_child_keeps_tenant_human_and_run_and_records_the_parent(issuer, verifier):
    parent = parent_token(issuer, ["billing:read", "billing:refund", "tickets:write"])
    child = delegate(issuer, verifier, parent, "refunds", ["billing:refund"])
    principal = verifier.verify(child)
    assert principal.agent_id == "refunds"
    assert principal.scopes == frozenset({"billing:refund"})
    assert principal.tenant == "acme"
    assert principal.on_behalf_of == "alice@acme.test"
    assert principal.run_id == "run-1"
    assert principal.act == ("router",)
    assert principal.roles == frozenset()
    claims = jwt.decode(child, options={"verify_signature": False})
    assert claims["act"] == {"sub": "router", "jti": verifier.verify(parent).token_id}


def test_chain_of_three_lists_actors_nearest_first(issuer, verifier):
    root = parent_token(issuer, ["billing:*"])
    middle = delegate(issuer, verifier, root, "billing-agent", ["billing:refund", "billing:read"])
    leaf = delegate(issuer, verifier, middle, "refunds", ["billing:refund"])
    middle_principal = verifier.verify(middle)
    leaf_principal = verifier.verify(leaf)
    assert leaf_principal.act == ("billing-agent", "router")
    assert leaf_principal.act == (middle_principal.agent_id, *middle_principal.act)


def test_requesting_a_scope_the_parent_lacks_is_refused_naming_it(issuer, verifier):
    parent = parent_token(issuer, ["billing:read"])
    with pytest.raises(AuthorizationError) as info:
        delegate(issuer, verifier, parent, "payer", ["billing:read", "payments:write", "admin"])
    assert info.value.code == "scope_escalation"
    assert "payments:write" in info.value.message
    assert "admin" in info.value.message
    assert info.value.context["scopes"] == ["admin", "payments:write"]


@pytest.mark.parametrize(
    ("parent_scopes", "requested", "allowed"),
    [
        (["billing:*"], ["billing:refund"], True),
        (["billing:*"], ["billing:*"], True),
        (["*"], ["anything:at-all", "*"], True),
        (["billing:read"], ["billing:*"], False),
        (["billing:*"], ["*"], False),
        (["*:*"], ["*"], False),
        (["*:*"], ["*:*"], True),
        (["billing:*"], ["billing"], False),
        (["billing:*"], ["payments:write"], False),
    ],
)
def test_wildcards_narrow_but_never_widen(issuer, verifier, parent_scopes, requested, allowed):
    parent = parent_token(issuer, parent_scopes)
    if allowed:
        child = delegate(issuer, verifier, parent, "child", requested)
        assert verifier.verify(child).scopes == frozenset(requested)
    else:
        with pytest.raises(AuthorizationError) as info:
            delegate(issuer, verifier, parent, "child", requested)
        assert info.value.code == "scope_escalation"


def test_roles_may_only_narrow(issuer, verifier):
    parent = parent_token(issuer, ["billing:read"])
    child = delegate(issuer, verifier, parent, "child", [], roles=["support"])
    assert verifier.verify(child).roles == frozenset({"support"})
    with pytest.raises(AuthorizationError) as info:
        delegate(issuer, verifier, parent, "child", [], roles=["admin"])
    assert info.value.code == "role_escalation"


def test_child_expiry_is_clamped_to_the_parent(issuer, verifier, clock):
    parent = parent_token(issuer, ["a:b"], ttl=dt.timedelta(minutes=5))
    parent_expiry = verifier.verify(parent).expires_at
    clock.advance(minutes=2)
    child = delegate(issuer, verifier, parent, "child", ["a:b"], ttl=dt.timedelta(minutes=15))
    assert verifier.verify(child).expires_at == parent_expiry
    default = delegate(issuer, verifier, parent, "child", ["a:b"])
    assert verifier.verify(default).expires_at == parent_expiry
    shorter = delegate(issuer, verifier, parent, "child", ["a:b"], ttl=dt.timedelta(seconds=30))
    assert verifier.verify(shorter).expires_at == clock.now() + dt.timedelta(seconds=30)


def test_parent_past_expiry_cannot_delegate_even_within_leeway(issuer, verifier, clock):
    parent = parent_token(issuer, ["a:b"], ttl=dt.timedelta(minutes=1))
    clock.advance(seconds=90)  # the parent still verifies (leeway) but has no time left to give
    assert verifier.verify(parent).agent_id == "router"
    with pytest.raises(AuthenticationError) as info:
        delegate(issuer, verifier, parent, "child", ["a:b"])
    assert info.value.code == "token_expired"


def test_child_of_an_expired_chain_expires_with_it(issuer, verifier, clock):
    parent = parent_token(issuer, ["a:b"], ttl=dt.timedelta(minutes=2))
    child = delegate(issuer, verifier, parent, "child", ["a:b"])
    clock.advance(minutes=3, seconds=1)
    with pytest.raises(AuthenticationError) as info:
        verifier.verify(child)
    assert info.value.code == "token_expired"


def test_invalid_parent_token_is_refused(issuer, verifier):
    with pytest.raises(AuthenticationError) as info:
        delegate(issuer, verifier, "not.a.token", "child", [])
    assert info.value.code == "token_malformed"


def test_revoking_a_parent_revokes_its_descendants(issuer, verifier):
    root = parent_token(issuer, ["a:*"])
    middle = delegate(issuer, verifier, root, "middle", ["a:b", "a:c"])
    leaf = delegate(issuer, verifier, middle, "leaf", ["a:b"])
    verifier.verify(leaf)  # cached
    root_id = verifier.verify(root).token_id
    assert root_id is not None
    verifier.revoke(root_id)
    for token in (root, middle, leaf):
        with pytest.raises(AuthenticationError) as info:
            verifier.verify(token)
        assert info.value.code == "token_revoked"


def test_delegation_depth_is_bounded(issuer, verifier):
    token = parent_token(issuer, ["a:b"])
    for i in range(MAX_DELEGATION_DEPTH):
        token = delegate(issuer, verifier, token, f"agent-{i}", ["a:b"])
    assert len(verifier.verify(token).act) == MAX_DELEGATION_DEPTH
    with pytest.raises(AuthorizationError) as info:
        delegate(issuer, verifier, token, "one-too-many", ["a:b"])
    assert info.value.code == "delegation_too_deep"


def test_audience_defaults_to_the_verifier_and_may_be_changed(issuer, verifier, keyset, clock):
    parent = parent_token(issuer, ["a:b"])
    upstream = delegate(issuer, verifier, parent, "child", ["a:b"], audience="upstream")
    with pytest.raises(AuthenticationError) as info:
        verifier.verify(upstream)
    assert info.value.code == "token_audience"
    assert TokenVerifier(keyset, "keel", "upstream", clock=clock).verify(upstream).act == (
        "router",
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"ttl": dt.timedelta(0)},
        {"ttl": dt.timedelta(minutes=16)},
        {"requested_scopes": "a:b"},
        {"requested_scopes": ["a b"]},
        {"roles": "support"},
    ],
)
def test_bad_delegation_arguments_are_usage_errors(issuer, verifier, kwargs):
    parent = parent_token(issuer, ["a:b"])
    args: dict[str, object] = {"requested_scopes": ["a:b"]}
    args.update(kwargs)
    with pytest.raises(UsageError):
        delegate(issuer, verifier, parent, "child", **args)  # type: ignore[arg-type]


# -- properties ----------------------------------------------------------------------------------

SCOPES = st.sampled_from(
    ["*", "*:*", "a", "a:*", "a:b", "a:c", "a:b:c", "b:*", "b:x", "c", "*:b", "a:*:*"]
)
PROBES = st.lists(SCOPES | st.text("ab*:", min_size=1, max_size=5), max_size=12)

_KEYS = KeySet.generate("prop")


@settings(max_examples=300, deadline=None)
@given(
    parent_scopes=st.lists(SCOPES, max_size=5),
    requested=st.lists(SCOPES, max_size=5),
    parent_minutes=st.integers(min_value=1, max_value=15),
    elapsed=st.integers(min_value=0, max_value=15 * 60),
    ttl_seconds=st.none() | st.integers(min_value=1, max_value=15 * 60),
    probes=PROBES,
)
def test_delegation_never_widens_scopes_or_extends_expiry(
    parent_scopes, requested, parent_minutes, elapsed, ttl_seconds, probes
):
    clock = FrozenClock()
    issuer = TokenIssuer(_KEYS, "keel", clock)
    verifier = TokenVerifier(_KEYS, "keel", "gateway", clock, cache_size=0)
    parent = issuer.mint(
        "parent", "t", [], parent_scopes, "gateway", ttl=dt.timedelta(minutes=parent_minutes)
    )
    parent_principal = verifier.verify(parent)
    clock.advance(seconds=elapsed)
    ttl = None if ttl_seconds is None else dt.timedelta(seconds=ttl_seconds)
    remaining = parent_minutes * 60 - elapsed
    escalates = any(not scope_covers(parent_principal.scopes, s) for s in requested)
    if remaining <= -60:  # the parent no longer verifies (60 s leeway)
        with pytest.raises(AuthenticationError, match="expired"):
            delegate(issuer, verifier, parent, "child", requested, ttl=ttl)
        return
    if escalates:
        with pytest.raises(AuthorizationError) as info:
            delegate(issuer, verifier, parent, "child", requested, ttl=ttl)
        assert info.value.code == "scope_escalation"
        return
    if remaining <= 0:  # verifies within leeway, but has no time left to hand on
        with pytest.raises(AuthenticationError, match="too soon"):
            delegate(issuer, verifier, parent, "child", requested, ttl=ttl)
        return
    child = delegate(issuer, verifier, parent, "child", requested, ttl=ttl)
    principal = verifier.verify(child)
    assert principal.scopes == frozenset(requested)
    assert all(scope_covers(parent_principal.scopes, s) for s in principal.scopes)
    for probe in [*probes, *requested, *parent_scopes]:
        if principal.has_scope(probe):
            assert parent_principal.has_scope(probe), probe
    assert principal.expires_at is not None
    assert parent_principal.expires_at is not None
    assert principal.expires_at <= parent_principal.expires_at
    assert principal.act == ("parent",)
