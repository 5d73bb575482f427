"""ATTACKS.md over real HTTP: a uvicorn server on loopback in front of real stores, remote agents
on ``POST /v1/calls`` and on the OpenAI-compatible ``POST /v1/chat/completions`` (an
``OpenAIStandIn`` upstream behind it), operators with API keys.

Cases: #12-#15 forged, confused, expired and misaddressed tokens; #19 kill switches and revoked
tokens while a token is still valid, also in the middle of a streamed answer; #24 another
tenant's approvals and runs; #33 secrets in tool outputs and the audit record; #39 rate limits
keyed on identity; #40 worst-case model requests and audit tampering.

Every refusal is checked for its status, its stable error ``code``, that nothing ran (the tool
was not invoked, the upstream saw no request) and, where the gateway records one, that the
refusal's audit record exists. The identity internals are tested in-process in
``tests/identity``; here the same attacks go through the HTTP surface.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from keel import App, KeelConfig
from keel.audit import Redactor, query, record_at
from keel.canonical import canonical_json
from keel.identity import SigningKey
from keel.testing import FrozenClock, OpenAIStandIn, RecordingTool, StandInReply

from ._serving import serving

UPSTREAM_KEY = "sk-attacks-upstream-0123456789abcdef"
UPSTREAM_ENV = "KEEL_TEST_ATTACKS_UPSTREAM_KEY"

POLICIES = (
    """
policy: acme
scope: {tenant: acme}
tools: {allow: [orders.lookup, billing.refund, ping.once, team.ping, secrets.read, metered.op]}
models: {allow: ["gpt-*"]}
approvers: [finance]
require_approval_if_over: {billing.refund: 100}
rate_limits:
  - {id: pings, scope: agent, tools: [ping.once], requests: 2, per: 1m}
caps:
  - {id: model-money, models: ["gpt-*"], per: [tenant], window: none, max_usd: 0.05}
""",
    """
policy: globex
scope: {tenant: globex}
tools: {allow: [orders.lookup, billing.refund, team.ping]}
models: {allow: ["gpt-*"]}
approvers: [finance]
require_approval_if_over: {billing.refund: 100}
""",
    # Applies to every tenant; the bucket is each tenant's own.
    """
policy: shared-limits
rate_limits:
  - {id: team-pings, scope: tenant, tools: [team.ping], requests: 3, per: 1m}
""",
    """
policy: model-limits
scope: {tenant: acme, agents: [limited-bot]}
rate_limits:
  - {id: model-calls, scope: agent, models: ["gpt-*"], requests: 2, per: 1m}
""",
)

SCOPES = ("orders:read", "billing:write", "ping:run", "secrets:read", "models:invoke")

#: What ``secrets.read`` answers: a card (Luhn-valid), an AWS key id, an email address.
CARD = "4111 1111 1111 1111"
AWS_KEY = "AKIAIOSFODNN7EXAMPLE"
EMAIL = "jane.roe@example.com"
SECRET_RESULT = {"note": f"card {CARD}, key {AWS_KEY}, write to {EMAIL}"}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def build_app(store_url: str, home: Path, upstream: OpenAIStandIn, clock: FrozenClock) -> App:
    models = {
        "providers": {
            "upstream": {
                "type": "openai",
                "base_url": upstream.base_url,
                "api_key_env": UPSTREAM_ENV,
                "max_attempts": 1,
            }
        },
        "models": {"gpt-small": {"provider": "upstream"}},
        "prices": {"upstream:*": {"input": "1.00", "output": "2.00"}},
    }
    config = KeelConfig(
        store_url=store_url,
        home=home,
        models=models,
        max_payload_bytes=65536,
        audit_partitions=1,
        audit_checkpoint_every=4,
    )
    keel = App(config, clock=clock)
    for policy in POLICIES:
        keel.add_policy(policy)
    keel.register(RecordingTool("orders.lookup", scope="orders:read", result={"status": "paid"}))
    keel.register(RecordingTool("billing.refund", scope="billing:write", effect="irreversible"))
    keel.register(RecordingTool("ping.once", scope="ping:run"))
    keel.register(RecordingTool("team.ping", scope="ping:run"))
    keel.register(RecordingTool("secrets.read", scope="secrets:read", result=SECRET_RESULT))
    keel.register(RecordingTool("metered.op", scope="orders:read", cost_usd="1.00"))

    @keel.workflow("globex-flow", agent="globex-bot", scopes=["orders:read"], tenant="globex")
    async def globex_flow(run: Any, data: Any) -> Any:
        return await run.tool("orders.lookup", {"order_id": "G-1"})

    return keel


class Gate:
    """The server under attack, its App, its upstream, and the ways in."""

    def __init__(
        self, keel: App, base: str, upstream: OpenAIStandIn, clock: FrozenClock, http: httpx.Client
    ) -> None:
        self.keel = keel
        self.base = base
        self.upstream = upstream
        self.clock = clock
        self.http = http  # one client: a new one per request costs more than the request

    # -- credentials -------------------------------------------------------------------------

    def token(self, agent: str = "remote-bot", tenant: str = "acme") -> str:
        return self.keel.mint_token(agent, tenant=tenant, scopes=SCOPES)

    def key(self, role: str, **options: Any) -> dict[str, str]:
        text, _record = self.keel.operator_keys.create(f"{role}-person", role, **options)
        return {"Authorization": f"Bearer {text}"}

    def claims(self, **changes: Any) -> dict[str, Any]:
        """The claims of a valid token for remote-bot of acme, as of the App's clock."""
        now = int(self.clock.now().timestamp())
        claims: dict[str, Any] = {
            "iss": self.keel.config.token_issuer,
            "sub": "remote-bot",
            "aud": self.keel.config.token_audience,
            "iat": now,
            "nbf": now,
            "exp": now + 600,
            "jti": uuid.uuid4().hex,
            "tenant": "acme",
            "roles": [],
            "scope": " ".join(sorted(SCOPES)),
        }
        claims.update(changes)
        return {k: v for k, v in claims.items() if v is not None}

    def signed(self, **changes: Any) -> str:
        """A token signed with the App's own active key (PyJWT, EdDSA)."""
        active = self.keel.keys.active
        private = ed25519.Ed25519PrivateKey.from_private_bytes(
            base64.urlsafe_b64decode(active.to_jwk()["d"] + "==")
        )
        return jwt.encode(
            self.claims(**changes), private, algorithm="EdDSA", headers={"kid": active.kid}
        )

    # -- requests ----------------------------------------------------------------------------

    def call(self, token: str, body: dict[str, Any] | None = None, **kw: Any) -> httpx.Response:
        body = body or {"tool": "orders.lookup", "arguments": {"order_id": "A-1"}}
        headers = {"Authorization": f"Bearer {token}", **kw.pop("headers", {})}
        return self.http.post("/v1/calls", json=body, headers=headers, **kw)

    def chat(self, token: str, **body: Any) -> httpx.Response:
        data = {
            "model": "gpt-small",
            "messages": [{"role": "user", "content": "hello"}],
            "max_tokens": 20,
            **body,
        }
        headers = {"Authorization": f"Bearer {token}"}
        return self.http.post("/v1/chat/completions", json=data, headers=headers)

    def tool(self, name: str) -> RecordingTool:
        found = self.keel.tools.get(name)
        assert isinstance(found, RecordingTool)
        return found

    def refused(
        self,
        response: httpx.Response,
        status: int,
        code: str,
        *,
        recorded: bool = True,
        decision: str = "deny",
    ) -> dict[str, Any]:
        """Assert a refusal: status, stable code, and the audit record the gateway left."""
        assert response.status_code == status, response.text
        error: dict[str, Any] = response.json()["error"]
        assert error["code"] == code, error
        if recorded:
            context = error["context"]
            record = record_at(self.keel.store, context["record_chain"], context["record_seq"])
            assert record is not None, f"no audit record for the refusal {code}"
            assert record.entry.decision == decision
            assert record.entry.body["error"]["code"] == code
        return error


@pytest.fixture
def gate(tmp_path: Path, store_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Gate]:
    monkeypatch.setenv(UPSTREAM_ENV, UPSTREAM_KEY)
    clock = FrozenClock()
    with (
        OpenAIStandIn(api_key=UPSTREAM_KEY) as upstream,
        build_app(store_url, tmp_path / "home", upstream, clock) as keel,
        serving(keel) as base,
        httpx.Client(base_url=base, timeout=60) as http,
    ):
        yield Gate(keel, base, upstream, clock, http)


def assert_nothing_ran(gate: Gate) -> None:
    assert gate.tool("orders.lookup").calls == 0
    assert gate.upstream.requests == []


# -- #12-#15: tokens -------------------------------------------------------------------------


def _attacker_key() -> SigningKey:
    return SigningKey.generate("attacker-key-1")


def _craft(header: dict[str, Any], claims: dict[str, Any], sign: Callable[[bytes], bytes]) -> str:
    head = _b64(json.dumps(header).encode())
    body = _b64(json.dumps(claims).encode())
    return f"{head}.{body}.{_b64(sign(f'{head}.{body}'.encode()))}"


def _own_alg(alg: str) -> Callable[[Gate], str]:
    """A token signed with the App's real key, under another ``alg`` header."""

    def make(gate: Gate) -> str:
        active = gate.keel.keys.active
        return _craft({"alg": alg, "kid": active.kid, "typ": "JWT"}, gate.claims(), active.sign)

    return make


def _pyjwt(alg: str) -> Callable[[Gate], str]:
    """A token PyJWT signs with ``alg`` and a fresh key of that kind, naming the real kid."""

    def make(gate: Gate) -> str:
        key: Any
        if alg.startswith("HS"):
            key = b"an attacker's shared secret, 32+ bytes long"
        elif alg.startswith("RS"):
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        else:
            key = ec.generate_private_key(ec.SECP256R1())
        return jwt.encode(
            gate.claims(), key, algorithm=alg, headers={"kid": gate.keel.keys.active.kid}
        )

    return make


def _none(gate: Gate) -> str:
    return jwt.encode(gate.claims(), None, algorithm="none")


def _none_with_kid(gate: Gate) -> str:
    header = {"alg": "none", "kid": gate.keel.keys.active.kid, "typ": "JWT"}
    return _craft(header, gate.claims(), lambda _data: b"")


def _hs256_with_public_key(gate: Gate) -> str:
    """Algorithm confusion: the raw Ed25519 public key used as an HMAC secret."""
    active = gate.keel.keys.active
    return jwt.encode(
        gate.claims(), active.public.raw, algorithm="HS256", headers={"kid": active.kid}
    )


def _hs256_with_public_pem(gate: Gate) -> str:
    """Algorithm confusion with the PEM of the public key (PyJWT refuses to make it)."""
    active = gate.keel.keys.active
    pem = ed25519.Ed25519PublicKey.from_public_bytes(active.public.raw).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = {"alg": "HS256", "kid": active.kid, "typ": "JWT"}
    return _craft(header, gate.claims(), lambda data: hmac.new(pem, data, hashlib.sha256).digest())


def _key_header(name: str, *, real_signature: bool) -> Callable[[Gate], str]:
    """A header naming an attacker's key (``jku``/``x5u`` URL, embedded ``jwk``/``x5c``)."""

    def make(gate: Gate) -> str:
        attacker = _attacker_key()
        value: Any = {
            "jku": "https://attacker.example/jwks.json",
            "x5u": "https://attacker.example/cert.pem",
            "jwk": attacker.public.to_jwk(),
            "x5c": ["MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"],
        }[name]
        signer = gate.keel.keys.active if real_signature else attacker
        kid = gate.keel.keys.active.kid if real_signature else attacker.kid
        header = {"alg": "EdDSA", "kid": kid, "typ": "JWT", name: value}
        return _craft(header, gate.claims(), signer.sign)

    return make


def _kid(kid: Callable[[Gate], str]) -> Callable[[Gate], str]:
    """An attacker-signed EdDSA token whose ``kid`` tries to reach something else."""

    def make(gate: Gate) -> str:
        header = {"alg": "EdDSA", "kid": kid(gate), "typ": "JWT"}
        return _craft(header, gate.claims(), _attacker_key().sign)

    return make


ALG_TOKENS: list[tuple[str, Callable[[Gate], str], str]] = [
    ("alg-none", _none, "token_alg_refused"),
    ("alg-none-with-kid", _none_with_kid, "token_alg_refused"),
    ("alg-None", _own_alg("None"), "token_alg_refused"),
    ("alg-eddsa-lowercase", _own_alg("eddsa"), "token_alg_refused"),
    ("alg-Ed25519", _own_alg("Ed25519"), "token_alg_refused"),
    ("alg-HS256", _pyjwt("HS256"), "token_alg_refused"),
    ("alg-RS256", _pyjwt("RS256"), "token_alg_refused"),
    ("alg-ES256", _pyjwt("ES256"), "token_alg_refused"),
]

CONFUSION_TOKENS: list[tuple[str, Callable[[Gate], str], str]] = [
    ("hs256-public-key-bytes", _hs256_with_public_key, "token_alg_refused"),
    ("hs256-public-key-pem", _hs256_with_public_pem, "token_alg_refused"),
    *[
        (f"{name}-{who}", _key_header(name, real_signature=real), "token_header_refused")
        for name in ("jku", "x5u", "jwk", "x5c")
        for who, real in (("attacker-signed", False), ("real-signature", True))
    ],
    ("kid-path-traversal", _kid(lambda g: "../../../../home/keys.json"), "token_unknown_key"),
    ("kid-dev-null", _kid(lambda g: "/dev/null"), "token_unknown_key"),
    ("kid-sql-injection", _kid(lambda g: "' OR '1'='1' --"), "token_unknown_key"),
    ("kid-url", _kid(lambda g: "https://attacker.example/key"), "token_unknown_key"),
    ("kid-real-plus-nul", _kid(lambda g: g.keel.keys.active.kid + "\x00"), "token_unknown_key"),
    ("kid-real-uppercased", _kid(lambda g: g.keel.keys.active.kid.upper()), "token_unknown_key"),
    ("kid-real-attacker-signed", _kid(lambda g: g.keel.keys.active.kid), "token_bad_signature"),
]

TIME_TOKENS: list[tuple[str, dict[str, int], str]] = [
    # Offsets from the App's clock, in seconds. Leeway is 60 s (token_leeway_seconds).
    ("expired", {"iat": -900, "nbf": -900, "exp": -300}, "token_expired"),
    ("nbf-in-the-future", {"iat": 0, "nbf": 300, "exp": 600}, "token_not_yet_valid"),
    ("iat-far-in-the-future", {"iat": 3600, "nbf": 0, "exp": 3900}, "token_issued_in_future"),
    ("lifetime-over-15-minutes", {"iat": 0, "nbf": 0, "exp": 3600}, "token_lifetime"),
]

AUDIENCE_TOKENS: list[tuple[str, dict[str, Any], str]] = [
    ("aud-another-service", {"aud": "billing-service"}, "token_audience"),
    ("aud-list-without-keel", {"aud": ["billing-service", "mail"]}, "token_audience"),
    ("iss-another-issuer", {"iss": "https://evil.example"}, "token_issuer"),
    ("iss-missing", {"iss": None}, "token_issuer"),
]


def _assert_refused_everywhere(gate: Gate, token: str, code: str) -> None:
    """The token gets 401 ``code`` on the tool route and on the model proxy; nothing runs."""
    gate.refused(gate.call(token), 401, code)
    gate.refused(gate.chat(token), 401, code)
    gate.refused(gate.chat(token, stream=True), 401, code)
    # /v1/models only lists names: the same 401, and no governed call to record.
    models = gate.http.get("/v1/models", headers={"Authorization": f"Bearer {token}"})
    gate.refused(models, 401, code, recorded=False)
    assert_nothing_ran(gate)


def test_12_alg_none_and_algorithms_outside_the_allowlist_are_401(
    gate: Gate, subtests: pytest.Subtests
) -> None:
    for name, make, code in ALG_TOKENS:
        with subtests.test(token=name):
            _assert_refused_everywhere(gate, make(gate), code)


def test_13_algorithm_confusion_foreign_key_headers_and_kid_injection_are_401(
    gate: Gate, subtests: pytest.Subtests
) -> None:
    for name, make, code in CONFUSION_TOKENS:
        with subtests.test(token=name):
            _assert_refused_everywhere(gate, make(gate), code)


def test_14_expired_not_yet_valid_and_future_tokens_are_401(
    gate: Gate, subtests: pytest.Subtests
) -> None:
    now = int(gate.clock.now().timestamp())
    for name, offsets, code in TIME_TOKENS:
        with subtests.test(token=name):
            token = gate.signed(**{claim: now + offset for claim, offset in offsets.items()})
            _assert_refused_everywhere(gate, token, code)


def test_14_clock_skew_of_30_s_is_accepted_and_5_min_is_refused(gate: Gate) -> None:
    now = int(gate.clock.now().timestamp())
    # The agent's issuer runs 30 s ahead: still inside the 60 s leeway.
    ahead = gate.signed(iat=now + 30, nbf=now + 30, exp=now + 630)
    assert gate.call(ahead).status_code == 200
    assert gate.chat(ahead).status_code == 200
    # Expired 30 s ago by the server's clock: accepted, within the leeway.
    late = gate.signed(iat=now - 630, nbf=now - 630, exp=now - 30)
    assert gate.call(late).status_code == 200
    # Five minutes either way is refused.
    gate.refused(gate.call(gate.signed(iat=now, nbf=now + 300)), 401, "token_not_yet_valid")
    gate.refused(gate.call(gate.signed(iat=now + 300, nbf=now)), 401, "token_issued_in_future")
    gate.refused(
        gate.call(gate.signed(iat=now - 900, nbf=now - 900, exp=now - 300)), 401, "token_expired"
    )


def test_14_a_token_used_before_it_expired_is_refused_once_the_clock_passes_it(
    gate: Gate,
) -> None:
    token = gate.token()  # 10 minutes, minted at the App's clock
    assert gate.call(token).status_code == 200  # verified, and now in the verifier's cache
    assert gate.chat(token).status_code == 200
    gate.clock.advance(seconds=600 + 30)  # expired 30 s ago: inside the leeway
    assert gate.call(token).status_code == 200
    gate.clock.advance(seconds=270)  # expired 5 minutes ago
    gate.refused(gate.call(token), 401, "token_expired")
    gate.refused(gate.chat(token), 401, "token_expired")
    assert gate.tool("orders.lookup").calls == 2
    assert len(gate.upstream.requests) == 1


def test_15_wrong_audience_or_issuer_is_401(gate: Gate, subtests: pytest.Subtests) -> None:
    for name, changes, code in AUDIENCE_TOKENS:
        with subtests.test(token=name):
            _assert_refused_everywhere(gate, gate.signed(**changes), code)


def test_12_to_15_a_well_formed_token_crafted_the_same_way_is_accepted(gate: Gate) -> None:
    """The crafting above is not what fails: the same path with honest values passes."""
    token = gate.signed()
    assert gate.call(token).status_code == 200
    assert gate.chat(token).status_code == 200


# -- #19: kill switches and revocation while the token is still valid -----------------------


def test_19_a_kill_switch_stops_the_next_call_of_a_valid_token(gate: Gate) -> None:
    token = gate.token()
    assert gate.call(token).status_code == 200
    assert gate.chat(token).status_code == 200
    switch = {"scope": "agent", "target": "remote-bot", "reason": "incident 19"}
    engaged = gate.http.post("/v1/kill-switches/engage", headers=gate.key("operator"), json=switch)
    assert engaged.status_code == 200, engaged.text
    gate.refused(gate.call(token), 403, "kill_switch")
    gate.refused(gate.chat(token), 403, "kill_switch")
    gate.refused(gate.chat(token, stream=True), 403, "kill_switch")
    # A fresh token for the same agent does not get around it.
    gate.refused(gate.call(gate.token()), 403, "kill_switch")
    assert gate.tool("orders.lookup").calls == 1
    assert len(gate.upstream.requests) == 1
    # Another agent is not stopped.
    assert gate.call(gate.token("other-bot")).status_code == 200


def test_19_a_tenant_operator_stops_its_tenant_and_only_it(gate: Gate) -> None:
    acme, globex = gate.token(), gate.token("globex-bot", tenant="globex")
    switch = {"scope": "tenant", "target": "acme", "reason": "tenant incident"}
    engaged = gate.http.post(
        "/v1/kill-switches/engage",
        headers=gate.key("operator", tenant="acme"),
        json=switch,
    )
    assert engaged.status_code == 200, engaged.text
    gate.refused(gate.call(acme), 403, "kill_switch")
    gate.refused(gate.chat(acme), 403, "kill_switch")
    assert gate.call(globex).status_code == 200
    assert gate.chat(globex).status_code == 200


def test_19_a_revoked_token_is_refused_at_once(gate: Gate) -> None:
    token = gate.token()
    assert gate.call(token).status_code == 200  # cached by the verifier from here on
    assert gate.chat(token).status_code == 200
    gate.keel.verifier.revoke(gate.keel.verifier.verify_token(token).principal.token_id)
    gate.refused(gate.call(token), 401, "token_revoked")
    gate.refused(gate.chat(token), 401, "token_revoked")
    gate.refused(gate.chat(token, stream=True), 401, "token_revoked")
    assert gate.tool("orders.lookup").calls == 1
    assert len(gate.upstream.requests) == 1
    assert gate.call(gate.token()).status_code == 200  # revocation is per token, not agent


def _stop_by_kill_switch(gate: Gate, token: str) -> None:
    switch = {"scope": "agent", "target": "stream-bot", "reason": "stop the stream"}
    engaged = gate.http.post("/v1/kill-switches/engage", headers=gate.key("operator"), json=switch)
    assert engaged.status_code == 200, engaged.text


def _stop_by_revocation(gate: Gate, token: str) -> None:
    gate.keel.verifier.revoke(gate.keel.verifier.verify_token(token).principal.token_id)


@pytest.mark.parametrize(
    ("stop", "code"),
    [(_stop_by_kill_switch, "kill_switch"), (_stop_by_revocation, "token_revoked")],
    ids=["kill-switch", "revoked-token"],
)
def test_19_a_stream_in_flight_is_stopped_with_an_error_event(
    gate: Gate, stop: Callable[[Gate, str], None], code: str
) -> None:
    # The stream re-checks kill switches and the token about once a second while chunks flow.
    # The stand-in cannot pace its chunks, so it sends a great many small ones: more than the
    # gateway can relay in the time it takes to reach a re-check on any machine. The test
    # waits for the error event, not for a time.
    text = "word " * 400_000
    gate.upstream.script(StandInReply(text=text, chunk=4))
    token = gate.token("stream-bot", tenant="globex")  # globex has no money cap to run into
    body = {
        "model": "gpt-small",
        "messages": [{"role": "user", "content": "talk"}],
        "max_tokens": 100,
        "stream": True,
    }
    received: list[str] = []
    errors: list[dict[str, Any]] = []
    headers = {"Authorization": f"Bearer {token}"}
    with gate.http.stream("POST", "/v1/chat/completions", json=body, headers=headers) as answer:
        assert answer.status_code == 200
        stopped = False
        for line in answer.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[len("data: ") :])
            if "error" in event:
                errors.append(event["error"])
                break
            received.extend(c["delta"].get("content") or "" for c in event["choices"])
            if not stopped and "".join(received):
                stop(gate, token)  # the first words arrived: stop it now
                stopped = True
    assert [e["code"] for e in errors] == [code]
    assert 0 < len("".join(received)) < len(text)
    (record,) = [r for r in query(gate.keel.store, agent="stream-bot") if r.entry.kind == "call"]
    assert record.entry.body["notes"]["stream_stopped"]["code"] == code
    # The next request is refused before anything is sent upstream.
    before = len(gate.upstream.requests)
    gate.refused(gate.chat(token), 403 if code == "kill_switch" else 401, code)
    assert len(gate.upstream.requests) == before


@contextlib.contextmanager
def replicas(
    tmp_path: Path, store_url: str, upstream: OpenAIStandIn
) -> Iterator[tuple[Gate, Gate]]:
    """Two Apps on one store and one home (shared keys), each behind its own server."""
    first_clock, second_clock = FrozenClock(), FrozenClock()
    home = tmp_path / "replicas"
    with (
        build_app(store_url, home, upstream, first_clock) as first,
        build_app(store_url, home, upstream, second_clock) as second,
        serving(first) as first_base,
        serving(second) as second_base,
        httpx.Client(base_url=first_base, timeout=60) as first_http,
        httpx.Client(base_url=second_base, timeout=60) as second_http,
    ):
        yield (
            Gate(first, first_base, upstream, first_clock, first_http),
            Gate(second, second_base, upstream, second_clock, second_http),
        )


def test_19_a_kill_switch_engaged_on_one_replica_stops_calls_on_the_other(
    tmp_path: Path, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(UPSTREAM_ENV, UPSTREAM_KEY)
    with (
        OpenAIStandIn(api_key=UPSTREAM_KEY) as upstream,
        replicas(tmp_path, store_url, upstream) as (one, two),
    ):
        token = one.token()
        assert two.call(token).status_code == 200
        switch = {"scope": "agent", "target": "remote-bot", "reason": "on every replica"}
        engaged = one.http.post(
            "/v1/kill-switches/engage", headers=one.key("operator"), json=switch
        )
        assert engaged.status_code == 200, engaged.text
        # Replica two reads switches from the store at most a refresh period late.
        two.clock.advance(seconds=two.keel.config.kill_switch_refresh_seconds)
        two.refused(two.call(token), 403, "kill_switch")
        two.refused(two.chat(token), 403, "kill_switch")


def test_19_a_token_revoked_on_one_replica_is_refused_on_the_other(
    tmp_path: Path, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(UPSTREAM_ENV, UPSTREAM_KEY)
    with (
        OpenAIStandIn(api_key=UPSTREAM_KEY) as upstream,
        replicas(tmp_path, store_url, upstream) as (one, two),
    ):
        token = one.token()
        assert two.call(token).status_code == 200
        one.keel.verifier.revoke(one.keel.verifier.verify_token(token).principal.token_id)
        one.refused(one.call(token), 401, "token_revoked")
        two.clock.advance(seconds=1)
        two.refused(two.call(token), 401, "token_revoked")


# -- #24: another tenant's objects ----------------------------------------------------------

BIG_REFUND = {"tool": "billing.refund", "arguments": {"order_id": "B-7", "amount": 500}}


def _globex_approval(gate: Gate) -> str:
    """An approval of globex, requested by its agent and approved by its approver."""
    held = gate.call(gate.token("globex-bot", tenant="globex"), BIG_REFUND)
    error = gate.refused(held, 403, "approval_required", decision="require_approval")
    approval_id = str(error["context"]["approval_id"])
    approved = gate.http.post(
        f"/v1/approvals/{approval_id}/approve",
        headers=gate.key("approver", tenant="globex", labels=("finance",)),
    )
    assert approved.status_code == 200, approved.text
    return approval_id


def _same_refusal(one: httpx.Response, other: httpx.Response, ids: tuple[str, str]) -> None:
    """Two refusals that differ only by the id asked for (and their own record numbers)."""
    assert one.status_code == other.status_code
    first, second = one.json()["error"], other.json()["error"]
    assert first["code"] == second["code"]
    assert first["message"].replace(ids[0], "<id>") == second["message"].replace(ids[1], "<id>")
    skip = {"record_seq", "record_chain", "approval_id"}
    assert {k: v for k, v in first["context"].items() if k not in skip} == {
        k: v for k, v in second["context"].items() if k not in skip
    }


def test_24_an_agent_cannot_use_another_tenants_approval_and_learns_nothing(gate: Gate) -> None:
    foreign = _globex_approval(gate)
    token = gate.token()  # acme
    stolen = gate.call(token, {**BIG_REFUND, "approval_id": foreign})
    gate.refused(stolen, 403, "approval_not_found")
    missing_id = "apr_" + uuid.uuid4().hex
    missing = gate.call(token, {**BIG_REFUND, "approval_id": missing_id})
    gate.refused(missing, 403, "approval_not_found")
    _same_refusal(stolen, missing, (foreign, missing_id))
    assert gate.tool("billing.refund").calls == 0
    # The approval is untouched: globex's own agent still uses it once.
    own = gate.call(
        gate.token("globex-bot", tenant="globex"), {**BIG_REFUND, "approval_id": foreign}
    )
    assert own.status_code == 200, own.text
    assert gate.tool("billing.refund").calls == 1


def test_24_a_tenant_operator_key_gets_the_same_answer_for_foreign_and_missing_objects(
    gate: Gate,
) -> None:
    approval_id = _globex_approval(gate)
    run_id = gate.keel.runtime.submit("globex-flow", {}).run_id
    acme = gate.key("admin", tenant="acme", labels=("finance",))
    for foreign, missing, path in (
        (approval_id, "apr_" + uuid.uuid4().hex, "/v1/approvals/{}"),
        (approval_id, "apr_" + uuid.uuid4().hex, "/v1/approvals/{}/approve"),
        (run_id, "run_" + uuid.uuid4().hex, "/v1/runs/{}"),
        (run_id, "run_" + uuid.uuid4().hex, "/v1/runs/{}/cancel"),
    ):
        method = "POST" if path.endswith(("approve", "cancel")) else "GET"
        body = {"reason": "not mine"} if path.endswith("cancel") else None
        one = gate.http.request(method, path.format(foreign), headers=acme, json=body)
        two = gate.http.request(method, path.format(missing), headers=acme, json=body)
        assert one.status_code in (400, 403, 404), one.text
        _same_refusal(one, two, (foreign, missing))
    for path in ("/v1/budgets", "/v1/spend", "/v1/audit/records"):
        one = gate.http.get(path, params={"tenant": "globex"}, headers=acme)
        two = gate.http.get(path, params={"tenant": "nowhere"}, headers=acme)
        assert one.status_code == 404, one.text
        _same_refusal(one, two, ("globex", "nowhere"))
    # The refused decisions are recorded, in the asking key's tenant, alike.
    refusals = query(gate.keel.store, decision="approval.refused")
    assert [(r.entry.tenant, r.entry.rule_id) for r in refusals] == [
        ("acme", "approval:approval_not_found")
    ] * 2
    # Nothing changed for globex.
    assert gate.keel.approvals.get(approval_id).status == "approved"
    assert gate.keel.runtime.get(run_id).status == "pending"


def test_24_an_object_that_is_not_there_is_404_on_every_detail_route(gate: Gate) -> None:
    acme = gate.key("viewer", tenant="acme")
    for path in ("/v1/runs/run_nope", "/v1/approvals/apr_nope", "/v1/policies/nope"):
        answer = gate.http.get(path, headers=acme)
        assert answer.status_code == 404, f"{path}: {answer.status_code} {answer.text}"


def test_24_another_tenants_run_id_gets_the_same_answer_as_an_unknown_one(gate: Gate) -> None:
    """An agent may name any run id in ``/v1/calls`` (the runtime names its own runs): the
    answer does not depend on whether another tenant has a run with that id, and the call is
    recorded in the agent's own tenant, never in the run's."""
    run_id = gate.keel.runtime.submit("globex-flow", {}).run_id
    token = gate.token()
    foreign = gate.call(token, {"tool": "orders.lookup", "arguments": {}, "run_id": run_id})
    unknown = gate.call(token, {"tool": "orders.lookup", "arguments": {}, "run_id": "run_zzz"})
    assert foreign.status_code == unknown.status_code == 200
    assert foreign.json()["value"] == unknown.json()["value"]
    calls = [r for r in query(gate.keel.store, run_id=run_id) if r.entry.kind == "call"]
    assert [(r.entry.tenant, r.entry.agent) for r in calls] == [("acme", "remote-bot")]
    globex = gate.key("viewer", tenant="globex")
    seen = gate.http.get("/v1/audit/records", params={"run_id": run_id}, headers=globex)
    assert seen.status_code == 200, seen.text
    assert {r["tenant"] for r in seen.json()["records"]} <= {"globex"}
    shown = gate.http.get(f"/v1/runs/{run_id}", headers=globex)
    assert shown.json()["steps"] == []


def test_24_an_agent_of_another_tenant_cannot_write_runs_into_a_forecast(gate: Gate) -> None:
    """``/v1/calls`` takes ``workflow`` and ``run_id`` from the agent: calls naming another
    tenant's workflow must not become that tenant's run history."""
    token = gate.token()  # acme, naming globex's workflow on runs of its own making
    for number in range(25):
        body = {
            "tool": "metered.op",
            "arguments": {},
            "workflow": "globex-flow",
            "run_id": f"fake-run-{number}",
            "step_id": "s1",
        }
        refused = gate.call(token, body)  # its token is bound to no run of that workflow
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "workflow_not_bound"
    globex = gate.key("viewer", tenant="globex")
    answer = gate.http.get("/v1/forecasts", params={"workflow": "globex-flow"}, headers=globex)
    # globex has never run its workflow: there is no history to forecast from.
    assert answer.status_code == 409, answer.text
    assert answer.json()["error"]["code"] == "forecast_insufficient_history"


# -- #33: secrets in tool outputs --------------------------------------------------------------


def test_33_tool_output_secrets_reach_the_agent_but_the_audit_record_is_redacted(
    gate: Gate,
) -> None:
    arguments = {"customer": EMAIL, "card": CARD}
    answer = gate.call(gate.token(), {"tool": "secrets.read", "arguments": arguments})
    assert answer.status_code == 200, answer.text
    # The calling agent gets its tool's answer as the tool gave it (the HTTP response is the
    # agent's own data); what Keel keeps is redacted.
    assert answer.json()["value"] == SECRET_RESULT
    record = answer.json()["record"]
    stored = gate.http.get(
        f"/v1/audit/records/{record['chain']}/{record['seq']}",
        headers=gate.key("viewer"),
    )
    assert stored.status_code == 200, stored.text
    text = stored.text
    for secret in (CARD, AWS_KEY, EMAIL, "4111111111111111"):
        assert secret not in text
    body = stored.json()["body"]
    redactor = gate.keel.redactor
    assert body["outcome"] == redactor.redact(SECRET_RESULT)
    assert body["args"] == redactor.redact(arguments)
    assert "[REDACTED:card:" in body["outcome"]["note"]
    assert "[REDACTED:aws_access_key_id:" in body["outcome"]["note"]
    assert "[REDACTED:email:" in body["args"]["customer"]
    # The markers are salted: the same values under another salt give other markers.
    other = Redactor(salt=b"another salt, sixteen bytes or more").redact(SECRET_RESULT)
    assert other["note"] != body["outcome"]["note"]
    # Equal values give equal markers across records (an auditor can correlate them).
    again = gate.call(gate.token(), {"tool": "secrets.read", "arguments": arguments}).json()
    second = record_at(gate.keel.store, again["record"]["chain"], again["record"]["seq"])
    assert second is not None and second.entry.body["outcome"] == body["outcome"]


def test_33_the_audit_record_holds_no_unsalted_digest_of_redacted_values(gate: Gate) -> None:
    arguments = {"card": CARD}
    answer = gate.call(gate.token(), {"tool": "secrets.read", "arguments": arguments})
    assert answer.status_code == 200, answer.text
    record = record_at(
        gate.keel.store, answer.json()["record"]["chain"], answer.json()["record"]["seq"]
    )
    assert record is not None
    body = record.entry.body
    for digest, value in (
        (body["outcome_digest"], SECRET_RESULT),
        (body["args_digest"], arguments),
    ):
        guess = "sha256:" + hashlib.sha256(canonical_json(value).encode()).hexdigest()
        assert digest != guess


# -- #39: rate limits keyed on identity ------------------------------------------------------

PING = {"tool": "ping.once", "arguments": {}}
TEAM_PING = {"tool": "team.ping", "arguments": {}}


def test_39_a_burst_is_429_with_retry_after_and_a_fresh_token_or_session_does_not_reset_it(
    gate: Gate,
) -> None:
    for _ in range(2):
        assert gate.call(gate.token(), PING).status_code == 200
    evasions: list[dict[str, str]] = [
        {},
        {"X-Session-Id": "fresh-session-1"},
        {"Mcp-Session-Id": "fresh-session-2"},
        {"X-Forwarded-For": "203.0.113.9"},
        {"Idempotency-Key": "fresh-key"},
    ]
    for extra in evasions:  # each with a newly minted token for the same agent
        limited = gate.call(gate.token(), PING, headers=extra)
        error = gate.refused(limited, 429, "rate_limited")
        assert int(limited.headers["Retry-After"]) >= 1, extra
        assert error["retryable"] is True
    assert gate.tool("ping.once").calls == 2
    # Another agent of the tenant has its own bucket; Retry-After says when this one refills.
    assert gate.call(gate.token("second-bot"), PING).status_code == 200
    wait = int(gate.call(gate.token(), PING).headers["Retry-After"])
    gate.clock.advance(seconds=wait)
    assert gate.call(gate.token(), PING).status_code == 200


def test_39_many_agents_of_one_tenant_share_a_tenant_limit(gate: Gate) -> None:
    agents = [f"swarm-{number}" for number in range(6)]
    answers = [gate.call(gate.token(agent), TEAM_PING) for agent in agents]
    assert [a.status_code for a in answers] == [200, 200, 200, 429, 429, 429]
    for limited in answers[3:]:
        gate.refused(limited, 429, "rate_limited")
        assert int(limited.headers["Retry-After"]) >= 1
    assert gate.tool("team.ping").calls == 3
    # The bucket is the tenant's: another tenant's agents are not limited by it.
    assert gate.call(gate.token("swarm-0", tenant="globex"), TEAM_PING).status_code == 200


def test_39_model_calls_are_rate_limited_per_agent_through_the_proxy(gate: Gate) -> None:
    token = gate.token("limited-bot")
    assert gate.chat(token).status_code == 200
    assert gate.chat(token, stream=True).status_code == 200
    limited = gate.chat(gate.token("limited-bot"))
    gate.refused(limited, 429, "rate_limited")
    assert int(limited.headers["Retry-After"]) >= 1
    gate.refused(gate.chat(token, stream=True), 429, "rate_limited")
    assert len(gate.upstream.requests) == 2


# -- #40: worst-case model requests, audit tampering -----------------------------------------


def test_40_n_times_max_tokens_is_held_at_worst_case_before_anything_is_sent(
    gate: Gate,
) -> None:
    token = gate.token()
    # 16 choices × 2000 tokens at $2/M output = $0.064 worst case > the $0.05 cap.
    for stream in (False, True):
        error = gate.refused(
            gate.chat(token, n=16, max_tokens=2000, stream=stream), 403, "budget_exceeded"
        )
        assert "model-money" in error["message"]
    # The largest max_tokens a request may name, once: $0.52 worst case.
    gate.refused(gate.chat(token, max_tokens=262_144), 403, "budget_exceeded")
    # Beyond the limits of the request itself: refused as invalid, nothing held.
    assert gate.chat(token, n=100).status_code == 400
    assert gate.chat(token, max_tokens=10**9).status_code == 400
    assert gate.upstream.requests == []
    lines = gate.keel.ledger.report(tenant="acme")
    assert sum(line.reserved_usd for line in lines) == 0
    assert sum(line.spent_usd for line in lines) == 0
    # The same request with one choice fits ($0.004) and goes through.
    gate.upstream.script(StandInReply(text="fits", output_tokens=3))
    assert gate.chat(token, n=1, max_tokens=2000).status_code == 200
    assert len(gate.upstream.requests) == 1


def _activity(gate: Gate, calls: int = 9) -> None:
    token = gate.token()
    for number in range(calls):
        body = {"tool": "orders.lookup", "arguments": {"n": number}}
        assert gate.call(token, body).status_code == 200


def _verify(gate: Gate) -> dict[str, Any]:
    answer = gate.http.post("/v1/audit/verify", headers=gate.key("operator"))
    assert answer.status_code == 200, answer.text
    report: dict[str, Any] = answer.json()
    return report


def test_40_a_deleted_record_is_found_by_the_verify_route(gate: Gate) -> None:
    _activity(gate)
    assert _verify(gate)["ok"] is True
    (chain,) = {r.chain for r in query(gate.keel.store, limit=100)}
    with gate.keel.store.write() as tx:
        assert tx.execute("DELETE FROM audit_records WHERE chain = ? AND seq = 5", (chain,)) == 1
    report = _verify(gate)
    assert report["ok"] is False
    assert (report["first_bad_chain"], report["first_bad_seq"]) == (chain, 5)


def test_40_reordered_records_are_found_by_the_verify_route(gate: Gate) -> None:
    _activity(gate)
    (chain,) = {r.chain for r in query(gate.keel.store, limit=100)}
    with gate.keel.store.write() as tx:  # swap records 6 and 7, each keeping its hashes
        tx.execute("UPDATE audit_records SET seq = -6 WHERE chain = ? AND seq = 6", (chain,))
        tx.execute("UPDATE audit_records SET seq = 6 WHERE chain = ? AND seq = 7", (chain,))
        tx.execute("UPDATE audit_records SET seq = 7 WHERE chain = ? AND seq = -6", (chain,))
    report = _verify(gate)
    assert report["ok"] is False
    assert (report["first_bad_chain"], report["first_bad_seq"]) == (chain, 6)


def test_40_a_truncated_log_is_caught_by_its_signed_checkpoints(gate: Gate) -> None:
    _activity(gate)  # 9 records; checkpoints every 4 (at 4 and 8)
    (chain,) = {r.chain for r in query(gate.keel.store, limit=100)}
    with gate.keel.store.write() as tx:  # cut the tail: the chain itself stays consistent
        assert tx.execute("DELETE FROM audit_records WHERE chain = ? AND seq > 6", (chain,)) == 3
    report = _verify(gate)
    assert report["ok"] is False
    assert report["first_bad_chain"] == chain
    assert report["checkpoints_checked"] >= 2
