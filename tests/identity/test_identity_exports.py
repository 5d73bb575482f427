"""The public surface of keel.identity is pinned: changing it is a deliberate act."""

from __future__ import annotations

import ast
import pathlib
import threading

import keel.identity
from keel.identity import KeySet, TokenIssuer, TokenVerifier
from keel.testing import FrozenClock

EXPECTED = {
    "ALGORITHM",
    "DEFAULT_LEEWAY",
    "DEFAULT_TTL",
    "DEFAULT_WINDOW",
    "HEADER_DIGEST",
    "HEADER_KEY_ID",
    "HEADER_NONCE",
    "HEADER_SIGNATURE",
    "HEADER_TIMESTAMP",
    "MAX_DELEGATION_DEPTH",
    "MAX_LEEWAY",
    "MAX_TOKEN_LENGTH",
    "MAX_TTL",
    "MIN_TTL",
    "REVOCATION_CHANNEL",
    "ActorLink",
    "OperatorKey",
    "OperatorKeys",
    "ROLES",
    "KeySet",
    "PublicKey",
    "PublicKeyResolver",
    "RequestVerifier",
    "Revocation",
    "RevocationKind",
    "RevocationSet",
    "SignatureVerifier",
    "SignedRequest",
    "Signer",
    "SigningKey",
    "StoredRevocations",
    "TokenIssuer",
    "TokenVerifier",
    "VerifiedToken",
    "check_kid",
    "check_scopes",
    "content_digest",
    "delegate",
    "scope_covers",
    "sign_request",
    "signature_base",
    "unverified_claims",
}

ALLOWED_KEEL_IMPORTS = {"keel.errors", "keel.core", "keel.canonical", "keel.store"}


def test_public_surface_is_pinned():
    assert set(keel.identity.__all__) == EXPECTED
    for name in keel.identity.__all__:
        assert getattr(keel.identity, name) is not None


def test_identity_imports_only_lower_layers():
    package = pathlib.Path(keel.identity.__file__).parent
    for module in package.glob("*.py"):
        tree = ast.parse(module.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            for name in names:
                if name.startswith("keel.") and not name.startswith("keel.identity"):
                    top = ".".join(name.split(".")[:2])
                    assert top in ALLOWED_KEEL_IMPORTS, f"{module.name} imports {name}"


def test_verifier_is_safe_to_share_between_threads():
    clock = FrozenClock()
    keys = KeySet.generate("k1")
    issuer = TokenIssuer(keys, "keel", clock)
    verifier = TokenVerifier(keys, "keel", "gw", clock, cache_size=8)
    tokens = [issuer.mint(f"agent-{i}", "t", [], ["a:b"], "gw") for i in range(32)]
    errors: list[BaseException] = []

    def work(offset: int) -> None:
        try:
            for round_ in range(20):
                for i, token in enumerate(tokens):
                    if (i + offset + round_) % 3 == 0:
                        assert verifier.verify(token).agent_id == f"agent-{i}"
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert verifier.cached <= 8
