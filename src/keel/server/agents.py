"""How a remote agent proves who it is on the HTTP server: its token, and optionally a request
signature and a TLS client certificate bound to the same agent.

- **Token** (always): ``Authorization: Bearer <agent token>``; the gateway verifies it.
- **Request signature** (``agent_request_signing``: off / optional / required): Ed25519 over the
  method, target, body digest, timestamp and nonce (``keel.identity.signing``), with a key from
  ``agent_signing_keys``. Each key belongs to one agent: a valid signature by another agent's
  key is refused. Nonces are remembered in the store, so a replay is refused after a restart too
  (ATTACKS.md #17, #18).
- **TLS client certificate** (``keel serve --tls-client-ca``): with ``agent_mtls_bind`` the
  certificate's identity — the last path segment of a SAN URI (``spiffe://acme/agent/bot``),
  else a SAN DNS name, else the subject CN — must be the token's agent.

A refusal here is an ``AuthenticationError`` (401) and leaves an audit record, like a refusal in
the gateway: nothing runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import Request

from keel.app import App
from keel.errors import AuthenticationError, AuthorizationError, ConfigError, KeelError
from keel.identity import PublicKey
from keel.identity._b64 import b64url_decode
from keel.identity.signing import HEADER_SIGNATURE, RequestVerifier
from keel.server._http import bearer

__all__ = ["AgentAuth", "certificate_identity"]


def certificate_identity(cert: Mapping[str, Any] | None) -> str | None:
    """The agent a TLS client certificate names (``ssl.getpeercert()`` form), or None."""
    if not cert:
        return None
    names = cert.get("subjectAltName") or ()
    for kind, value in names:
        if kind == "URI" and isinstance(value, str):
            return value.rstrip("/").rsplit("/", 1)[-1] or None
    for kind, value in names:
        if kind == "DNS" and isinstance(value, str):
            return value
    for rdn in cert.get("subject") or ():
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


def _keys(config: Mapping[str, Mapping[str, str]]) -> tuple[dict[str, PublicKey], dict[str, str]]:
    keys: dict[str, PublicKey] = {}
    owners: dict[str, str] = {}
    for kid, spec in config.items():
        where = f"agent_signing_keys.{kid}"
        agent = spec.get("agent")
        if not isinstance(agent, str) or not agent:
            raise ConfigError(f"setting {where!r}: 'agent' (the agent id) is required")
        try:
            keys[kid] = PublicKey.from_bytes(kid, b64url_decode(spec.get("public_key", "")))
        except (ValueError, KeelError):
            raise ConfigError(
                f"setting '{where}.public_key': must be the 32-byte Ed25519 public key, "
                "unpadded base64url (see `keel token keygen`)",
                context={"key": f"{where}.public_key"},
            ) from None
        owners[kid] = agent
    return keys, owners


class AgentAuth:
    """Checks a remote agent's request (see the module docstring). Thread-safe."""

    def __init__(self, keel: App) -> None:
        config = keel.config
        self._keel = keel
        self._mode = config.agent_request_signing
        keys, self._owners = _keys(config.agent_signing_keys)
        self._signatures = (
            RequestVerifier(keys, keel.store, keel.clock) if self._mode != "off" and keys else None
        )
        self._bind = config.agent_mtls_bind

    def token(self, request: Request, body: bytes) -> str:
        """The request's agent token, once signature and certificate checks passed."""
        token = bearer(request)
        signed = self._mode != "off" and HEADER_SIGNATURE in request.headers
        cert = _peer_certificate(request)
        if not signed and self._mode != "required" and not (self._bind and cert):
            return token
        try:
            self._check(request, body, token, signed, cert)
        except AuthenticationError as exc:
            self._record(request, exc)
            raise
        return token

    def workflow(self, token: str, workflow: str | None) -> str | None:
        """The workflow a remote call may claim: only the workflow of the run its token is
        bound to (``keel token mint --run``). Policies and caps can be scoped to a workflow, so
        an agent naming one it is not running would borrow its rules: refused (403)."""
        if workflow is None:
            return None
        principal = self._keel.verifier.verify(token)
        record = None
        if principal.run_id is not None:
            try:
                record = self._keel.runtime.get(principal.run_id)
            except KeelError:
                record = None
        if record is None or record.workflow != workflow or record.tenant != principal.tenant:
            raise AuthorizationError(
                f"a call may name workflow {workflow!r} only with a token bound to a run of it",
                code="workflow_not_bound",
                context={"workflow": workflow},
            )
        return workflow

    def verify(self, request: Request) -> None:
        """Check the request's agent token alone (a route that calls nothing); a refusal is
        recorded like any other."""
        try:
            self._keel.verifier.verify(bearer(request))
        except AuthenticationError as exc:
            self._record(request, exc)
            raise

    def _check(
        self,
        request: Request,
        body: bytes,
        token: str,
        signed: bool,
        cert: Mapping[str, Any] | None,
    ) -> None:
        if not signed and self._mode == "required":
            raise AuthenticationError(
                "this server requires signed agent requests (Keel-Signature headers)",
                code="request_signature_missing",
            )
        principal = self._keel.verifier.verify(token)
        if signed:
            if self._signatures is None:
                raise AuthenticationError(
                    "the request is signed but this server knows no agent signing keys",
                    code="request_unknown_key",
                )
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            verified = self._signatures.verify(request.method, target, request.headers, body)
            owner = self._owners.get(verified.key_id)
            if owner != principal.agent_id:
                raise AuthenticationError(
                    f"request key {verified.key_id!r} belongs to agent {owner!r}, not to the "
                    f"token's agent {principal.agent_id!r}",
                    code="request_key_mismatch",
                    context={"kid": verified.key_id},
                )
        if self._bind and cert:
            named = certificate_identity(cert)
            if named != principal.agent_id:
                raise AuthenticationError(
                    f"the TLS client certificate names {named!r}, not the token's agent "
                    f"{principal.agent_id!r}",
                    code="certificate_mismatch",
                )

    def _record(self, request: Request, error: AuthenticationError) -> None:
        self._keel.record_refusal(error, stage="authenticate", route=request.url.path)


def _peer_certificate(request: Request) -> Mapping[str, Any] | None:
    tls = request.scope.get("extensions", {}).get("tls")
    if not isinstance(tls, dict):
        return None
    cert = tls.get("client_cert")
    return cert if isinstance(cert, dict) else None
