"""Identity: who is calling. Ed25519 keys, agent tokens, delegation and request signing.

- ``keys``: ``SigningKey``, ``PublicKey`` and ``KeySet`` (rotation, JWK files).
- ``tokens``: ``TokenIssuer`` mints short-lived EdDSA JWTs; ``TokenVerifier`` turns one into a
  ``keel.core.Principal`` or refuses it with an ``AuthenticationError`` carrying a stable code.
- ``delegation``: ``delegate()`` mints a narrower, no-longer-lived token for a sub-agent.
- ``signing``: ``sign_request()`` / ``RequestVerifier`` for HTTP request signatures with a
  replay cache kept in the store.
- ``revocation``: ``StoredRevocations``, token and agent revocations kept in the store, so that
  they reach every process sharing it (bounded staleness, like kill switches).
- ``operators``: ``OperatorKeys``, hashed API keys with a role per tenant for people using the
  HTTP server.

This package imports only ``keel.errors``, ``keel.core``, ``keel.canonical`` and ``keel.store``.
"""

from __future__ import annotations

from keel.identity.delegation import delegate, scope_covers
from keel.identity.keys import (
    ALGORITHM,
    KeySet,
    PublicKey,
    PublicKeyResolver,
    SignatureVerifier,
    Signer,
    SigningKey,
    check_kid,
)
from keel.identity.operators import ROLES, OperatorKey, OperatorKeys
from keel.identity.revocation import (
    REVOCATION_CHANNEL,
    Revocation,
    RevocationKind,
    StoredRevocations,
    unverified_claims,
)
from keel.identity.signing import (
    DEFAULT_WINDOW,
    HEADER_DIGEST,
    HEADER_KEY_ID,
    HEADER_NONCE,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    RequestVerifier,
    SignedRequest,
    content_digest,
    sign_request,
    signature_base,
)
from keel.identity.tokens import (
    DEFAULT_LEEWAY,
    DEFAULT_TTL,
    MAX_DELEGATION_DEPTH,
    MAX_LEEWAY,
    MAX_TOKEN_LENGTH,
    MAX_TTL,
    MIN_TTL,
    ActorLink,
    RevocationSet,
    TokenIssuer,
    TokenVerifier,
    VerifiedToken,
    check_scopes,
)

__all__ = [
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
    "ROLES",
    "ActorLink",
    "KeySet",
    "OperatorKey",
    "OperatorKeys",
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
]
