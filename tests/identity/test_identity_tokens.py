"""Agent tokens: minting, every refusal of the verifier, rotation, cache and revocation."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json

import jwt
import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from keel.core import Principal
from keel.errors import AuthenticationError, UsageError
from keel.identity import (
    KeySet,
    RevocationSet,
    SigningKey,
    TokenIssuer,
    TokenVerifier,
)
from keel.testing import FrozenClock


def refused(verifier: TokenVerifier, token: object, code: str) -> AuthenticationError:
    with pytest.raises(AuthenticationError) as info:
        verifier.verify(token)  # type: ignore[arg-type]
    assert info.value.code == code, info.value.message
    assert info.value.message
    return info.value


def mint(issuer: TokenIssuer, **overrides: object) -> str:
    args: dict[str, object] = {
        "agent_id": "agent-1",
        "tenant": "acme",
        "roles": ["support"],
        "scopes": ["billing:read", "tickets:write"],
        "audience": "gateway",
    }
    args.update(overrides)
    return issuer.mint(**args)  # type: ignore[arg-type]


# -- minting and the happy path ------------------------------------------------------------------


def test_round_trip_builds_the_principal(issuer, verifier, clock):
    token = mint(issuer, on_behalf_of="alice@acme.test", run_id="run-7", act=["router", "root"])
    principal = verifier.verify(token)
    assert isinstance(principal, Principal)
    assert principal.agent_id == "agent-1"
    assert principal.tenant == "acme"
    assert principal.roles == frozenset({"support"})
    assert principal.scopes == frozenset({"billing:read", "tickets:write"})
    assert principal.on_behalf_of == "alice@acme.test"
    assert principal.run_id == "run-7"
    assert principal.act == ("router", "root")
    assert principal.token_id
    assert principal.expires_at == clock.now() + dt.timedelta(minutes=10)


def test_claims_follow_rfc_8693_and_interoperate_with_pyjwt(issuer, keyset):
    token = mint(issuer, on_behalf_of="alice", run_id="run-7", act=["router", "root"])
    assert jwt.get_unverified_header(token) == {"alg": "EdDSA", "kid": "k1", "typ": "JWT"}
    claims = jwt.decode(
        token,
        jwt.PyJWK(keyset.active.public.to_jwk()).key,
        algorithms=["EdDSA"],
        audience="gateway",
        issuer="keel",
        options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
    )
    assert claims["sub"] == "agent-1"
    assert claims["scope"] == "billing:read tickets:write"
    assert claims["obo"] == "alice"
    assert claims["run"] == "run-7"
    assert claims["act"]["sub"] == "router"
    assert claims["act"]["act"] == {"sub": "root"}
    assert claims["exp"] - claims["iat"] == 600
    assert claims["nbf"] == claims["iat"]
    assert claims["jti"]


def test_each_token_gets_a_fresh_id(issuer, verifier):
    first, second = mint(issuer), mint(issuer)
    assert verifier.verify(first).token_id != verifier.verify(second).token_id


def test_audience_list_is_accepted_when_it_names_the_verifier(issuer, verifier):
    token = mint(issuer, audience=["billing-api", "gateway"])
    assert verifier.verify(token).agent_id == "agent-1"


@pytest.mark.parametrize("minutes", [1, 5, 15])
def test_ttl_in_range_is_accepted(issuer, verifier, minutes):
    token = mint(issuer, ttl=dt.timedelta(minutes=minutes))
    principal = verifier.verify(token)
    assert principal.expires_at is not None


@pytest.mark.parametrize(
    "ttl", [dt.timedelta(seconds=59), dt.timedelta(minutes=15, seconds=1), dt.timedelta(0)]
)
def test_ttl_out_of_range_is_a_usage_error_naming_the_range(issuer, ttl):
    with pytest.raises(UsageError) as info:
        mint(issuer, ttl=ttl)
    assert "1 to 15 minutes" in info.value.message
    assert info.value.code == "invalid_ttl"


@pytest.mark.parametrize(
    "overrides",
    [
        {"scopes": ["billing read"]},
        {"scopes": "billing:read"},
        {"scopes": [""]},
        {"roles": "support"},
        {"agent_id": ""},
        {"tenant": ""},
        {"audience": []},
        {"act": "router"},
    ],
)
def test_mint_refuses_bad_arguments(issuer, overrides):
    with pytest.raises(UsageError):
        mint(issuer, **overrides)


def test_mint_needs_a_signing_key(keyset, clock):
    issuer = TokenIssuer(keyset.public_only(), clock=clock)
    with pytest.raises(UsageError) as info:
        mint(issuer)
    assert info.value.code == "no_signing_key"


# -- algorithms ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "alg", ["none", "None", "NONE", "HS256", "RS256", "ES256", "eddsa", "Ed25519"]
)
def test_algorithms_other_than_eddsa_are_refused(verifier, forger, alg):
    token = forger.token(forger.header(alg=alg))
    error = refused(verifier, token, "token_alg_refused")
    assert alg in error.message


def test_alg_none_with_empty_signature_is_refused(verifier, forger):
    header = forger.header(alg="none")
    token = forger.token(header, sign=lambda data: b"")
    refused(verifier, token, "token_alg_refused")


def test_alg_none_from_pyjwt_is_refused(verifier, forger):
    token = jwt.encode(forger.claims(), None, algorithm="none", headers={"kid": "k1"})
    refused(verifier, token, "token_alg_refused")


@pytest.mark.parametrize("secret_form", ["raw", "jwk", "pem"])
def test_algorithm_confusion_with_the_public_key_as_hmac_secret_is_refused(
    verifier, forger, keyset, secret_form
):
    public = keyset.active.public
    if secret_form == "raw":
        secret = public.raw
    elif secret_form == "jwk":
        secret = json.dumps(public.to_jwk()).encode()
    else:
        secret = jwt.PyJWK(public.to_jwk()).key.public_bytes(
            Encoding.PEM, PublicFormat.SubjectPublicKeyInfo
        )
    token = forger.token(
        forger.header(alg="HS256"),
        sign=lambda data: hmac.new(secret, data, hashlib.sha256).digest(),
    )
    refused(verifier, token, "token_alg_refused")


@pytest.mark.parametrize("alg", [None, 1, ["EdDSA"], {"EdDSA": 1}])
def test_missing_or_non_string_alg_is_refused(verifier, forger, drop, alg):
    header = forger.header(alg=drop if alg is None else alg)
    refused(verifier, forger.token(header), "token_alg_refused")


# -- headers and key ids -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("jku", "https://attacker.example/jwks.json"),
        ("x5u", "https://attacker.example/cert.pem"),
        ("jwk", {"kty": "OKP", "crv": "Ed25519", "x": "AAAA"}),
        ("x5c", ["MIIB..."]),
        ("crit", ["exp"]),
    ],
)
def test_key_url_embedded_key_and_crit_headers_are_refused(verifier, forger, name, value):
    token = forger.token(forger.header(**{name: value}))
    error = refused(verifier, token, "token_header_refused")
    assert name in error.message


def test_an_attacker_key_embedded_as_jwk_is_never_used(verifier, forger):
    attacker = SigningKey.generate("k1")
    token = forger.token(forger.header(jwk=attacker.public.to_jwk()), key=attacker)
    refused(verifier, token, "token_header_refused")


@pytest.mark.parametrize(("name", "value"), [("zip", "DEF"), ("b64", False), ("cty", "JWT")])
def test_unknown_headers_are_refused(verifier, forger, name, value):
    refused(verifier, forger.token(forger.header(**{name: value})), "token_header_refused")


def test_wrong_typ_is_refused(verifier, forger):
    refused(verifier, forger.token(forger.header(typ="JOSE+JSON")), "token_header_refused")


def test_typ_may_be_left_out(verifier, forger, drop):
    assert verifier.verify(forger.token(forger.header(typ=drop))).agent_id == "agent-1"


def test_missing_kid_is_refused(verifier, forger, drop):
    refused(verifier, forger.token(forger.header(kid=drop)), "token_kid_missing")


@pytest.mark.parametrize(
    "kid",
    [
        "K1",
        "k1 ",
        " k1",
        "k1\x00",
        "./k1",
        "../k1",
        "../../etc/passwd",
        "/dev/null",
        "k1/../k1",
        "k1' OR '1'='1",
        "k1; DROP TABLE keys; --",
        "ｋ1",  # fullwidth k: no Unicode normalization
        "",
        1,
        None,
        ["k1"],
        {"kid": "k1"},
    ],
)
def test_kid_must_match_a_local_key_exactly(verifier, forger, kid):
    refused(verifier, forger.token(forger.header(kid=kid)), "token_unknown_key")


# -- signatures ----------------------------------------------------------------------------------


def test_signature_by_another_key_with_the_same_kid_is_refused(verifier, forger):
    impostor = SigningKey.generate("k1")
    refused(verifier, forger.token(key=impostor), "token_bad_signature")


def test_payload_changed_after_signing_is_refused(issuer, verifier, forger):
    token = mint(issuer)
    head, _body, signature = token.split(".")
    claims = jwt.decode(token, options={"verify_signature": False})
    claims["scope"] = "billing:read billing:write tickets:write"
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    refused(verifier, f"{head}.{body}.{signature}", "token_bad_signature")


def test_truncated_or_empty_signature_is_refused(issuer, verifier):
    token = mint(issuer)
    head, body, signature = token.split(".")
    raw = base64.urlsafe_b64decode(signature + "==")
    short = base64.urlsafe_b64encode(raw[:-3]).rstrip(b"=").decode()
    refused(verifier, f"{head}.{body}.{short}", "token_bad_signature")
    refused(verifier, f"{head}.{body}.", "token_bad_signature")


# -- malformed tokens ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "token",
    [
        "",
        "abc",
        "a.b",
        "a.b.c.d",
        "eyJ.eyJ.sig.extra.more",
        "!!!.eyJ.sig",
        "e30=.e30.sig",  # padded
        "e3+0.e30.c2ln",  # '+' is not base64url
        "ZZ.e30.c2ln",  # non-canonical base64url (spare bits set)
        "e.e30.c2ln",  # impossible length
    ],
)
def test_structurally_malformed_tokens_are_refused(verifier, token):
    refused(verifier, token, "token_malformed")


@pytest.mark.parametrize("token", [None, 42, b"a.b.c", ["a", "b", "c"], {"a": 1}])
def test_non_string_tokens_are_refused(verifier, token):
    refused(verifier, token, "token_malformed")


def test_overlong_token_is_refused(verifier, forger):
    token = forger.token(claims=forger.claims(padding="x" * 9000))
    refused(verifier, token, "token_malformed")


@pytest.mark.parametrize(
    "header",
    [
        "not json",
        "[1, 2]",
        '"EdDSA"',
        '{"alg": "EdDSA", "kid": "k1",}',
        '{"alg": NaN}',
        b"\xff\xfe",
    ],
)
def test_header_that_is_not_a_json_object_is_refused(verifier, forger, header):
    refused(verifier, forger.token(header), "token_malformed")


def test_duplicate_keys_in_header_are_refused(verifier, forger):
    header = '{"alg": "none", "alg": "EdDSA", "kid": "k1"}'
    error = refused(verifier, forger.token(header), "token_malformed")
    assert "duplicate" in error.message


def test_duplicate_keys_in_payload_are_refused_even_when_signed(verifier, forger):
    claims = json.dumps(forger.claims())[:-1] + ', "scope": "*"}'
    error = refused(verifier, forger.token(claims=claims), "token_malformed")
    assert "duplicate" in error.message


@pytest.mark.parametrize("claims", ["not json", "[]", "null", '"x"'])
def test_payload_that_is_not_a_json_object_is_refused(verifier, forger, claims):
    refused(verifier, forger.token(claims=claims), "token_malformed")


# -- time ----------------------------------------------------------------------------------------


def test_expired_token_is_refused(issuer, verifier, clock):
    token = mint(issuer, ttl=dt.timedelta(minutes=5))
    clock.advance(minutes=10)
    error = refused(verifier, token, "token_expired")
    assert "expired" in error.message


def test_expiry_within_leeway_is_accepted_and_beyond_it_refused(issuer, verifier, clock):
    token = mint(issuer, ttl=dt.timedelta(minutes=5))
    clock.advance(minutes=5, seconds=30)  # 30 s past exp: skew within the 60 s leeway
    assert verifier.verify(token).agent_id == "agent-1"
    clock.advance(seconds=30)
    refused(verifier, token, "token_expired")


def test_clock_skew_of_30_seconds_is_accepted(keyset, clock):
    ahead = FrozenClock(clock.now() + dt.timedelta(seconds=30))
    token = mint(TokenIssuer(keyset, clock=ahead))
    verifier = TokenVerifier(keyset, "keel", "gateway", clock=clock)
    assert verifier.verify(token).agent_id == "agent-1"


def test_clock_skew_of_5_minutes_is_refused(keyset, clock):
    ahead = FrozenClock(clock.now() + dt.timedelta(minutes=5))
    token = mint(TokenIssuer(keyset, clock=ahead))
    verifier = TokenVerifier(keyset, "keel", "gateway", clock=clock)
    refused(verifier, token, "token_not_yet_valid")


def test_token_from_an_issuer_clock_10_minutes_behind_is_already_expired(keyset, clock):
    behind = FrozenClock(clock.now() - dt.timedelta(minutes=10))
    token = mint(TokenIssuer(keyset, clock=behind), ttl=dt.timedelta(minutes=5))
    verifier = TokenVerifier(keyset, "keel", "gateway", clock=clock)
    refused(verifier, token, "token_expired")


@pytest.mark.parametrize(("skew", "accepted"), [(30, True), (300, False)])
def test_nbf_in_the_future(verifier, forger, skew, accepted):
    now = int(forger.clock.now().timestamp())
    token = forger.token(claims=forger.claims(nbf=now + skew))
    if accepted:
        assert verifier.verify(token).agent_id == "agent-1"
    else:
        refused(verifier, token, "token_not_yet_valid")


@pytest.mark.parametrize(("skew", "accepted"), [(30, True), (300, False)])
def test_iat_in_the_future(verifier, forger, drop, skew, accepted):
    now = int(forger.clock.now().timestamp())
    token = forger.token(claims=forger.claims(iat=now + skew, nbf=drop, exp=now + skew + 300))
    if accepted:
        assert verifier.verify(token).agent_id == "agent-1"
    else:
        refused(verifier, token, "token_issued_in_future")


def test_lifetime_over_15_minutes_is_refused_at_verify(verifier, forger):
    now = int(forger.clock.now().timestamp())
    token = forger.token(claims=forger.claims(exp=now + 15 * 60 + 1))
    error = refused(verifier, token, "token_lifetime")
    assert "15 minutes" in error.message


def test_lifetime_of_exactly_15_minutes_is_accepted(verifier, forger):
    now = int(forger.clock.now().timestamp())
    token = forger.token(claims=forger.claims(exp=now + 15 * 60))
    assert verifier.verify(token).agent_id == "agent-1"


def test_exp_before_iat_is_refused(verifier, forger):
    now = int(forger.clock.now().timestamp())
    token = forger.token(claims=forger.claims(iat=now, exp=now + 120, nbf=now))
    assert verifier.verify(token)
    token = forger.token(claims=forger.claims(iat=now + 50, exp=now + 20, jti="j2"))
    refused(verifier, token, "token_lifetime")


@pytest.mark.parametrize("claim", ["exp", "iat"])
@pytest.mark.parametrize("value", ["soon", True, None, 1e300, -5, [1]])
def test_time_claims_must_be_numeric_dates(verifier, forger, claim, value):
    refused(verifier, forger.token(claims=forger.claims(**{claim: value})), "token_claim_invalid")


@pytest.mark.parametrize("claim", ["exp", "iat"])
def test_time_claims_are_required(verifier, forger, drop, claim):
    refused(verifier, forger.token(claims=forger.claims(**{claim: drop})), "token_claim_invalid")


# -- issuer, audience and other claims ---------------------------------------------------------


@pytest.mark.parametrize("iss", ["evil", "Keel", "keel ", None, 1])
def test_wrong_issuer_is_refused(verifier, forger, iss):
    refused(verifier, forger.token(claims=forger.claims(iss=iss)), "token_issuer")


@pytest.mark.parametrize("aud", ["billing-api", ["billing-api", "crm"], "Gateway"])
def test_wrong_audience_is_refused(verifier, forger, aud):
    error = refused(verifier, forger.token(claims=forger.claims(aud=aud)), "token_audience")
    assert "gateway" in error.message


@pytest.mark.parametrize("aud", [None, [], 7, ["gateway", 7]])
def test_malformed_audience_is_refused(verifier, forger, aud):
    refused(verifier, forger.token(claims=forger.claims(aud=aud)), "token_claim_invalid")


def test_token_minted_for_another_service_is_refused(issuer, keyset, clock):
    token = mint(issuer, audience="upstream-crm")
    verifier = TokenVerifier(keyset, "keel", "gateway", clock=clock)
    refused(verifier, token, "token_audience")


@pytest.mark.parametrize(
    "overrides",
    [
        {"sub": ""},
        {"sub": 5},
        {"jti": None},
        {"tenant": ["acme"]},
        {"roles": "support"},
        {"roles": [""]},
        {"scope": ["billing:read"]},
        {"scope": "billing:read  tickets:write"},
        {"scope": " billing:read"},
        {"obo": 3},
        {"run": ""},
    ],
)
def test_malformed_claims_are_refused(verifier, forger, overrides):
    refused(verifier, forger.token(claims=forger.claims(**overrides)), "token_claim_invalid")


@pytest.mark.parametrize("claim", ["sub", "jti", "tenant"])
def test_required_identity_claims(verifier, forger, drop, claim):
    refused(verifier, forger.token(claims=forger.claims(**{claim: drop})), "token_claim_invalid")


def test_empty_scope_gives_no_scopes(verifier, forger):
    assert verifier.verify(forger.token(claims=forger.claims(scope=""))).scopes == frozenset()


# -- act chain -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "act",
    [
        "router",
        ["router"],
        None,
        {},
        {"sub": ""},
        {"sub": 7},
        {"sub": "router", "role": "admin"},
        {"sub": "router", "act": "root"},
        {"sub": "router", "act": None},
        {"sub": "router", "act": {"sub": "root", "act": {}}},
        {"sub": "router", "jti": 5},
        {"sub": "router", "jti": ""},
    ],
)
def test_malformed_act_claim_is_refused(verifier, forger, act):
    refused(verifier, forger.token(claims=forger.claims(act=act)), "token_act_malformed")


def test_act_chain_deeper_than_the_limit_is_refused(verifier, forger):
    act: dict[str, object] = {"sub": "a0"}
    for i in range(1, 9):
        act = {"sub": f"a{i}", "act": act}
    error = refused(verifier, forger.token(claims=forger.claims(act=act)), "token_act_malformed")
    assert "deeper" in error.message


def test_act_chain_is_read_nearest_first(verifier, forger):
    act = {"sub": "router", "jti": "p1", "act": {"sub": "root"}}
    assert verifier.verify(forger.token(claims=forger.claims(act=act))).act == ("router", "root")


# -- rotation ------------------------------------------------------------------------------------


def test_rotation_keeps_old_tokens_verifying_until_retired(keyset, issuer, verifier):
    old_token = mint(issuer)
    new_key = keyset.rotate("k2")
    assert keyset.key_id == "k2"
    new_token = mint(issuer)
    assert jwt.get_unverified_header(new_token)["kid"] == "k2"
    assert new_key.kid == "k2"
    assert verifier.verify(old_token).agent_id == "agent-1"
    assert verifier.verify(new_token).agent_id == "agent-1"
    keyset.retire("k1")
    error = refused(verifier, old_token, "token_unknown_key")
    assert "k1" in error.message
    assert verifier.verify(new_token).agent_id == "agent-1"


def test_retired_key_is_refused_even_for_a_token_not_seen_before(keyset, issuer, clock):
    old_token = mint(issuer)
    keyset.rotate("k2")
    keyset.retire("k1")
    refused(TokenVerifier(keyset, "keel", "gateway", clock=clock), old_token, "token_unknown_key")


def test_verifier_with_public_keys_only(keyset, issuer, clock):
    verifier = TokenVerifier(keyset.public_only(), "keel", "gateway", clock=clock)
    assert verifier.verify(mint(issuer)).agent_id == "agent-1"


# -- cache and revocation ------------------------------------------------------------------------


def test_cached_token_is_still_refused_after_expiry(issuer, verifier, clock):
    token = mint(issuer, ttl=dt.timedelta(minutes=2))
    first = verifier.verify(token)
    assert verifier.cached == 1
    assert verifier.verify(token) is first  # served from the cache
    clock.advance(minutes=3, seconds=1)  # past exp + 60 s leeway
    refused(verifier, token, "token_expired")
    assert verifier.cached == 0
    refused(verifier, token, "token_expired")


def test_cached_token_is_refused_after_revoke(issuer, verifier):
    token = mint(issuer)
    principal = verifier.verify(token)
    assert verifier.cached == 1
    assert principal.token_id is not None
    verifier.revoke(principal.token_id)
    error = refused(verifier, token, "token_revoked")
    assert principal.token_id in error.message


def test_revoked_token_is_refused_before_it_is_cached(issuer, verifier):
    token = mint(issuer)
    verifier.revoke(jwt.decode(token, options={"verify_signature": False})["jti"])
    refused(verifier, token, "token_revoked")
    assert verifier.cached == 0


def test_revocations_can_be_shared_between_verifiers(keyset, issuer, clock):
    shared = RevocationSet(clock)
    first = TokenVerifier(keyset, "keel", "gateway", clock=clock, revocations=shared)
    second = TokenVerifier(keyset, "keel", "gateway", clock=clock, revocations=shared)
    token = mint(issuer)
    principal = first.verify(token)
    second.verify(token)
    assert principal.token_id is not None
    first.revoke(principal.token_id)
    refused(second, token, "token_revoked")


def test_revocation_entries_are_pruned_once_no_token_can_use_them(clock):
    revocations = RevocationSet(clock)
    revocations.revoke("old")
    assert "old" in revocations
    clock.advance(minutes=24)
    revocations.revoke("newer")
    assert "old" in revocations
    clock.advance(minutes=2)
    revocations.revoke("newest")
    assert "old" not in revocations
    assert "newer" in revocations
    assert len(revocations) == 2


def test_revocation_until_the_token_expiry_outlives_the_leeway(issuer, verifier, clock):
    token = mint(issuer, ttl=dt.timedelta(minutes=2))
    principal = verifier.verify(token)
    assert principal.token_id is not None
    verifier.revoke(principal.token_id, until=principal.expires_at)
    clock.advance(minutes=2, seconds=30)  # past exp, within leeway: still refused as revoked
    verifier.revoke("someone-else")  # triggers pruning
    refused(verifier, token, "token_revoked")
    with pytest.raises(UsageError):
        verifier.revoke("x", until=dt.datetime(2026, 1, 1))  # naive


def test_cache_is_bounded_lru(keyset, issuer, clock):
    verifier = TokenVerifier(keyset, "keel", "gateway", clock=clock, cache_size=2)
    a, b, c = mint(issuer), mint(issuer), mint(issuer)
    pa = verifier.verify(a)
    verifier.verify(b)
    assert verifier.verify(a) is pa  # a is now the most recently used
    verifier.verify(c)  # evicts b
    assert verifier.cached == 2
    assert verifier.verify(a) is pa
    assert verifier.verify(b) is not None  # re-verified in full, evicting c


def test_cache_can_be_disabled(keyset, issuer, clock):
    verifier = TokenVerifier(keyset, "keel", "gateway", clock=clock, cache_size=0)
    token = mint(issuer)
    assert verifier.verify(token) == verifier.verify(token)
    assert verifier.cached == 0


def test_cache_is_keyed_by_the_exact_token_string(issuer, verifier):
    token = mint(issuer)
    verifier.verify(token)
    refused(verifier, token + ".", "token_malformed")
    refused(verifier, " " + token, "token_malformed")
    refused(verifier, token.replace(".", "=.", 1), "token_malformed")


def test_verify_token_reports_key_and_audience(issuer, verifier, clock):
    verified = verifier.verify_token(mint(issuer, audience=["gateway", "crm"]))
    assert verified.key_id == "k1"
    assert verified.audience == ("crm", "gateway")
    assert verified.issued_at == clock.now()
    assert verified.token_ids == (verified.principal.token_id,)


# -- configuration -------------------------------------------------------------------------------


@pytest.mark.parametrize("leeway", [dt.timedelta(seconds=-1), dt.timedelta(minutes=6)])
def test_verifier_refuses_unreasonable_leeway(keyset, leeway):
    with pytest.raises(UsageError):
        TokenVerifier(keyset, "keel", "gateway", leeway=leeway)


def test_verifier_refuses_negative_cache_size(keyset):
    with pytest.raises(UsageError):
        TokenVerifier(keyset, "keel", "gateway", cache_size=-1)


def test_zero_leeway_refuses_small_skew(keyset, issuer, clock):
    verifier = TokenVerifier(keyset, "keel", "gateway", clock=clock, leeway=dt.timedelta(0))
    token = mint(issuer, ttl=dt.timedelta(minutes=1))
    clock.advance(seconds=60)
    refused(verifier, token, "token_expired")


def test_errors_carry_json_safe_context(verifier, forger):
    error = refused(
        verifier, forger.token(forger.header(kid="../../etc/passwd")), "token_unknown_key"
    )
    body = error.to_dict()
    json.dumps(body)
    assert body["error"] == "token_unknown_key"


def test_keyset_generate_and_issue_end_to_end():
    clock = FrozenClock()
    keys = KeySet.generate()
    token = TokenIssuer(keys, "keel", clock).mint("a", "t", [], ["x:y"], "svc")
    assert TokenVerifier(keys, "keel", "svc", clock).verify(token).scopes == {"x:y"}
