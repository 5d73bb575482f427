"""Token revocations kept in the store reach every App sharing it (ATTACKS.md #19).

Two Apps on one store stand for two server replicas (or a server and the CLI). A FrozenClock
makes the refresh period deterministic: nothing here sleeps or measures time.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from keel import App, KeelConfig
from keel.errors import AuthenticationError, UsageError
from keel.identity import StoredRevocations, TokenVerifier, delegate, unverified_claims
from keel.testing import FrozenClock

REFRESH = 0.25


@contextmanager
def replicas(tmp_path: Path, store_url: str, clock: FrozenClock) -> Iterator[tuple[App, App]]:
    """Two Apps on one store and one key set, as two replicas of a server."""
    config = KeelConfig(
        store_url=store_url, home=tmp_path / "home", kill_switch_refresh_seconds=REFRESH
    )
    with App(config, clock=clock) as one, App(config, clock=clock) as two:
        yield one, two


def _token(app: App, agent: str = "support-bot", tenant: str = "acme") -> str:
    return app.mint_token(agent, tenant=tenant, scopes=["crm.read"])


def _jti(token: str) -> str:
    return str(unverified_claims(token)["jti"])


def _refused(app: App, token: str) -> AuthenticationError:
    with pytest.raises(AuthenticationError) as info:
        app.verifier.verify(token)
    assert info.value.code == "token_revoked"
    return info.value


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock()


def test_a_token_revoked_on_one_app_is_refused_by_the_other_within_the_refresh_period(
    tmp_path: Path, store_url: str, clock: FrozenClock
) -> None:
    with replicas(tmp_path, store_url, clock) as (one, two):
        token = _token(one)
        assert two.verifier.verify(token).agent_id == "support-bot"  # cached by two
        revocation = one.revoke_token(_jti(token), reason="leaked in a log", actor="ana")
        assert (revocation.kind, revocation.target, revocation.actor) == (
            "token",
            _jti(token),
            "ana",
        )
        assert _refused(one, token).context["token_id"] == _jti(token)  # at once where revoked
        # The other replica reads the store at most once per refresh period: until it ends it
        # may still accept the token (bounded staleness, no store read per call) ...
        assert two.verifier.verify(token).agent_id == "support-bot"
        clock.advance(seconds=REFRESH)
        # ... and once it has, the token is refused there too, cache hit or not.
        _refused(two, token)
        assert _token(two) != token
        assert two.verifier.verify(_token(two)).agent_id == "support-bot"  # others still fine


def test_verifier_revoke_is_shared_through_the_store(
    tmp_path: Path, store_url: str, clock: FrozenClock
) -> None:
    with replicas(tmp_path, store_url, clock) as (one, two):
        token = _token(one)
        principal = one.verifier.verify(token)
        assert principal.token_id is not None
        one.verifier.revoke(principal.token_id, until=principal.expires_at)
        clock.advance(seconds=REFRESH)
        _refused(two, token)
        assert principal.token_id in two.revocations


def test_revoking_an_agent_refuses_its_earlier_tokens_but_not_new_ones(
    tmp_path: Path, store_url: str, clock: FrozenClock
) -> None:
    with replicas(tmp_path, store_url, clock) as (one, two):
        first, second = _token(one), _token(one)
        other_agent = _token(one, agent="billing-bot")
        other_tenant = _token(one, tenant="globex")
        child = delegate(one.issuer, one.verifier, first, "sub-bot", ["crm.read"])
        revocation = one.revoke_token(
            agent="support-bot", tenant="acme", reason="misbehaving", actor="ana"
        )
        assert revocation.kind == "agent" and revocation.tenant == "acme"
        clock.advance(seconds=REFRESH)
        for app in (one, two):
            assert _refused(app, first).context["agent"] == "support-bot"
            _refused(app, second)
            _refused(app, child)  # delegated from a revoked agent's token
            assert app.verifier.verify(other_agent).agent_id == "billing-bot"
            assert app.verifier.verify(other_tenant).tenant == "globex"  # another tenant
        # Re-enable the agent: tokens minted after the revocation verify again (iat has
        # one-second resolution, so the next second).
        clock.advance(seconds=1)
        fresh = _token(one)
        assert one.verifier.verify(fresh).agent_id == "support-bot"
        assert two.verifier.verify(fresh).agent_id == "support-bot"
        _refused(two, first)


def test_revoking_an_agent_in_every_tenant(
    tmp_path: Path, store_url: str, clock: FrozenClock
) -> None:
    with replicas(tmp_path, store_url, clock) as (one, two):
        acme, globex = _token(one), _token(one, tenant="globex")
        one.revoke_token(agent="support-bot", reason="compromised", actor="ana")
        clock.advance(seconds=REFRESH)
        _refused(two, acme)
        _refused(two, globex)


def test_a_revocation_survives_a_restart_and_is_audited(
    tmp_path: Path, store_url: str, clock: FrozenClock
) -> None:
    with replicas(tmp_path, store_url, clock) as (one, _two):
        token = _token(one)
        jti = _jti(token)
        one.revoke_token(jti, tenant="acme", reason="leaked", actor="ana")
        one.revoke_token(agent="billing-bot", reason="retired", actor="bo")
    config = KeelConfig(store_url=store_url, home=tmp_path / "home")
    with App(config, clock=clock) as restarted:
        _refused(restarted, token)
        listed = {(r.kind, r.target) for r in restarted.revocations.list()}
        assert listed == {("token", jti), ("agent", "billing-bot")}
        with restarted.store.read() as tx:
            rows = tx.fetchall(
                "SELECT tenant, agent, decision, rule_id, body FROM audit_records "
                "WHERE kind = 'control' ORDER BY seq"
            )
        records = [(r[0], r[1], r[2], r[3], json.loads(r[4])) for r in rows]
        token_record = next(r for r in records if r[3] == "revoke:token")
        agent_record = next(r for r in records if r[3] == "revoke:agent")
        assert token_record[:3] == ("acme", None, "revoke")
        assert token_record[4]["action"] == "token.revoke"
        assert (token_record[4]["target"], token_record[4]["reason"]) == (jti, "leaked")
        assert token_record[4]["actor"] == "ana"
        assert agent_record[1] == "billing-bot"
        assert agent_record[4]["reason"] == "retired"
        assert restarted.verify_audit().ok


def test_entries_are_forgotten_once_every_token_they_refuse_has_expired(
    tmp_path: Path, store_url: str, clock: FrozenClock
) -> None:
    with replicas(tmp_path, store_url, clock) as (one, _two):
        token = _token(one)
        one.revoke_token(_jti(token), reason="leaked", actor="ana")
        one.revoke_token(agent="support-bot", reason="leaked", actor="ana")
        clock.advance(minutes=26)
        assert one.revocations.list() == []
        one.revoke_token("another", reason="pruning", actor="ana")  # prunes the old rows
        with one.store.read() as tx:
            rows = tx.fetchall("SELECT target FROM token_revocations")
        assert rows == [("another",)]


def test_revoking_an_agent_again_keeps_the_later_cutoff(
    tmp_path: Path, store_url: str, clock: FrozenClock
) -> None:
    with replicas(tmp_path, store_url, clock) as (one, two):
        one.revoke_token(agent="support-bot", reason="first", actor="ana")
        clock.advance(seconds=5)
        middle = _token(one)
        assert two.verifier.verify(middle).agent_id == "support-bot"
        again = one.revoke_token(agent="support-bot", reason="second", actor="ana")
        clock.advance(seconds=REFRESH)
        _refused(two, middle)
        [listed] = two.revocations.list()
        assert (listed.reason, listed.not_before) == ("second", again.not_before)


def test_bad_requests_are_refused_with_a_usable_message(
    tmp_path: Path, store_url: str, clock: FrozenClock
) -> None:
    with replicas(tmp_path, store_url, clock) as (one, _two):
        with pytest.raises(UsageError, match="exactly one of"):
            one.revoke_token(reason="x", actor="ana")
        with pytest.raises(UsageError, match="exactly one of"):
            one.revoke_token("j", agent="a", reason="x", actor="ana")
        with pytest.raises(UsageError, match="reason"):
            one.revoke_token("j", reason=" ", actor="ana")
        assert one.revocations.list() == []
    with pytest.raises(UsageError, match="not a token"):
        unverified_claims("not-a-token")


def test_a_refresh_period_of_zero_reads_the_store_on_every_verify(
    tmp_path: Path, store_url: str, clock: FrozenClock
) -> None:
    config = KeelConfig(store_url=store_url, home=tmp_path / "home")
    with App(config, clock=clock) as one, App(config, clock=clock) as two:
        verifier = TokenVerifier(
            two.keys,
            issuer=two.config.token_issuer,
            audience=two.config.token_audience,
            clock=clock,
            revocations=StoredRevocations(two.store, clock, refresh_seconds=0),
        )
        token = _token(one)
        assert verifier.verify(token).agent_id == "support-bot"
        one.revoke_token(_jti(token), reason="leaked", actor="ana")
        with pytest.raises(AuthenticationError, match="revoked"):
            verifier.verify(token)  # the clock has not moved
