"""Remote agents over real HTTP(S): signed requests (ATTACKS.md #17, #18) and TLS client
certificates bound to the token's agent. Refusals are 401s that leave audit records."""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from keel import App, KeelConfig
from keel.audit import query
from keel.identity import SigningKey
from keel.identity._b64 import b64url_encode
from keel.identity.signing import sign_request
from keel.server.tls import uvicorn_tls_options
from keel.testing import RecordingTool

from ._serving import serving

POLICY = """
policy: signed
scope: {tenant: acme}
tools: {allow: [orders.lookup]}
"""

BOT_KEY = SigningKey.generate("bot-key-1")
OTHER_KEY = SigningKey.generate("other-key-1")


def _keys() -> dict[str, dict[str, str]]:
    return {
        key.kid: {"agent": agent, "public_key": b64url_encode(key.public.raw)}
        for key, agent in ((BOT_KEY, "remote-bot"), (OTHER_KEY, "other-bot"))
    }


class Server:
    def __init__(self, keel: App, base: str) -> None:
        self.keel = keel
        self.base = base
        self.token = keel.mint_token("remote-bot", tenant="acme", scopes=["orders:read"])

    def denials(self) -> list[str]:
        return [
            str(r.entry.rule_id)
            for r in query(self.keel.store, limit=100)
            if r.entry.rule_id and r.entry.rule_id.startswith("authenticate:")
        ]


@pytest.fixture
def make_server(tmp_path: Path, store_url: str) -> Iterator[Any]:
    with contextlib.ExitStack() as stack:

        def make(signing: str = "optional", scheme: str = "http", **options: Any) -> Server:
            config = KeelConfig(
                store_url=store_url,
                home=tmp_path / "home",
                agent_request_signing=signing,
                agent_signing_keys=_keys(),
            )
            keel = stack.enter_context(App(config))
            keel.add_policy(POLICY)
            keel.register(RecordingTool("orders.lookup", scope="orders:read", result={"ok": True}))
            base = stack.enter_context(serving(keel, scheme=scheme, **options))
            return Server(keel, base)

        yield make


BODY = json.dumps({"tool": "orders.lookup", "arguments": {"order_id": "A-1"}}).encode()


def _signed(
    server: Server, key: SigningKey, body: bytes = BODY, target: str = "/v1/calls"
) -> dict[str, str]:
    headers = sign_request(key, "POST", target, body, _dt.datetime.now(_dt.UTC))
    headers["Authorization"] = f"Bearer {server.token}"
    headers["Content-Type"] = "application/json"
    return headers


def test_signed_request_passes_and_its_replay_is_refused(make_server: Any) -> None:
    server = make_server()
    headers = _signed(server, BOT_KEY)
    first = httpx.post(f"{server.base}/v1/calls", content=BODY, headers=headers)
    assert first.status_code == 200, first.text
    again = httpx.post(f"{server.base}/v1/calls", content=BODY, headers=headers)
    assert again.status_code == 401
    assert again.json()["error"]["code"] == "request_replayed"
    assert server.denials() == ["authenticate:request_replayed"]


def test_signature_covers_body_target_and_agent(make_server: Any) -> None:
    server = make_server()
    headers = _signed(server, BOT_KEY)
    swapped = BODY.replace(b"A-1", b"A-2")
    assert (
        httpx.post(f"{server.base}/v1/calls", content=swapped, headers=headers).json()["error"][
            "code"
        ]
        == "request_digest"
    )
    headers = _signed(server, BOT_KEY, target="/v1/other")
    moved = httpx.post(f"{server.base}/v1/calls", content=BODY, headers=headers)
    assert moved.json()["error"]["code"] == "request_bad_signature"
    headers = _signed(server, BOT_KEY)
    headers["Keel-Key-Id"] = OTHER_KEY.kid
    assert (
        httpx.post(f"{server.base}/v1/calls", content=BODY, headers=headers).json()["error"]["code"]
        == "request_bad_signature"
    )
    foreign = _signed(server, OTHER_KEY)  # a valid signature by another agent's key
    answer = httpx.post(f"{server.base}/v1/calls", content=BODY, headers=foreign)
    assert answer.status_code == 401
    assert answer.json()["error"]["code"] == "request_key_mismatch"
    assert len(server.denials()) == 4


def test_required_signing_refuses_unsigned_requests(make_server: Any) -> None:
    server = make_server(signing="required")
    plain = {"Authorization": f"Bearer {server.token}"}
    answer = httpx.post(f"{server.base}/v1/calls", content=BODY, headers=plain)
    assert answer.status_code == 401
    assert answer.json()["error"]["code"] == "request_signature_missing"
    signed = httpx.post(f"{server.base}/v1/calls", content=BODY, headers=_signed(server, BOT_KEY))
    assert signed.status_code == 200


def _cert(
    subject: str,
    issuer_key: Any,
    issuer: x509.Name | None,
    *,
    ca: bool = False,
    san: str | None = None,
) -> tuple[Any, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = _dt.datetime.now(_dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(minutes=5))
        .not_valid_after(now + _dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if san is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(san)] if "://" in san else [x509.DNSName(san)]
            ),
            critical=False,
        )
    cert = builder.sign(issuer_key or key, hashes.SHA256())
    return key, cert


def _write(path: Path, key: Any, cert: x509.Certificate) -> tuple[str, str]:
    cert_path = path.with_suffix(".crt")
    key_path = path.with_suffix(".key")
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_path), str(key_path)


def test_client_certificate_is_bound_to_the_token_agent(make_server: Any, tmp_path: Path) -> None:
    ca_key, ca_cert = _cert("keel-test-ca", None, None, ca=True)
    ca_file, _ = _write(tmp_path / "ca", ca_key, ca_cert)
    server_key, server_cert = _cert("127.0.0.1", ca_key, ca_cert.subject, san="127.0.0.1")
    server_cert_file, server_key_file = _write(tmp_path / "server", server_key, server_cert)
    bot_key, bot_cert = _cert("x", ca_key, ca_cert.subject, san="spiffe://acme/agent/remote-bot")
    bot_files = _write(tmp_path / "bot", bot_key, bot_cert)
    other_key, other_cert = _cert("other-bot", ca_key, ca_cert.subject)
    other_files = _write(tmp_path / "other", other_key, other_cert)

    options = uvicorn_tls_options(
        Path(server_cert_file), Path(server_key_file), Path(ca_file), require_client_cert=True
    )
    server = make_server(scheme="https", **options)
    headers = {"Authorization": f"Bearer {server.token}"}

    def context(files: tuple[str, str] | None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=ca_file)
        ctx.check_hostname = False
        if files is not None:
            ctx.load_cert_chain(*files)
        return ctx

    ok = httpx.post(
        f"{server.base}/v1/calls", content=BODY, headers=headers, verify=context(bot_files)
    )
    assert ok.status_code == 200, ok.text
    wrong = httpx.post(
        f"{server.base}/v1/calls", content=BODY, headers=headers, verify=context(other_files)
    )
    assert wrong.status_code == 401
    assert wrong.json()["error"]["code"] == "certificate_mismatch"
    assert "other-bot" in wrong.json()["error"]["message"]
    with pytest.raises(httpx.HTTPError):
        httpx.post(f"{server.base}/v1/calls", content=BODY, headers=headers, verify=context(None))
    assert server.denials() == ["authenticate:certificate_mismatch"]
