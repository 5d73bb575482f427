"""Delegation: an agent hands a narrower, shorter-lived token to a sub-agent (RFC 8693 style).

The child token keeps the parent's tenant, on-behalf-of human and run; its scopes are a subset of
the parent's (a wildcard such as ``billing:*`` may be narrowed to ``billing:refund``, never the
reverse); its expiry is clamped to the parent's, never extended; and its ``act`` claim records
the parent and the parent's own chain, so ``child.act == (parent.agent_id, *parent.act)``. The
chain also carries each ancestor's token id, so revoking a parent token revokes its descendants.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Iterable, Set

from keel.errors import AuthenticationError, AuthorizationError, UsageError
from keel.identity.tokens import (
    MAX_DELEGATION_DEPTH,
    MAX_TTL,
    ActorLink,
    TokenIssuer,
    TokenVerifier,
    check_scopes,
)

__all__ = ["delegate", "scope_covers"]


def scope_covers(granted: Set[str], scope: str) -> bool:
    """True if holding ``granted`` entitles one to delegate ``scope``.

    ``scope`` is covered if it is granted exactly, if ``*`` is granted, or if it has the form
    ``resource:action`` and ``resource:*`` is granted (for a resource other than ``*``). This is
    no wider than ``Principal.has_scope``: whatever a child's scopes grant, the parent's grant too.
    """
    if scope in granted or "*" in granted:
        return True
    resource, sep, _action = scope.partition(":")
    return bool(sep) and resource != "*" and f"{resource}:*" in granted


def delegate(
    issuer: TokenIssuer,
    verifier: TokenVerifier,
    parent_token: str,
    child_agent: str,
    requested_scopes: Iterable[str],
    ttl: _dt.timedelta | None = None,
    audience: str | None = None,
    *,
    roles: Iterable[str] = (),
) -> str:
    """Mint a token for ``child_agent`` acting for the holder of ``parent_token``.

    The parent token is verified first (AuthenticationError if it does not verify). The child
    gets exactly ``requested_scopes``, each of which the parent must cover (else
    AuthorizationError ``scope_escalation`` naming the missing scopes), and ``roles``, a subset of
    the parent's roles (default none; else ``role_escalation``). Its expiry is the earliest of
    the parent's expiry, now + ``ttl`` (if given, 1 s to 15 minutes) and now + 15 minutes.
    ``audience`` defaults to the verifier's. A chain longer than ``MAX_DELEGATION_DEPTH``
    actors is refused (``delegation_too_deep``).
    """
    parent = verifier.verify_token(parent_token)
    principal = parent.principal
    scopes = check_scopes(requested_scopes)
    escalated = [s for s in scopes if not scope_covers(principal.scopes, s)]
    if escalated:
        raise AuthorizationError(
            f"agent {principal.agent_id!r} cannot delegate scopes it does not hold: "
            f"{', '.join(escalated)}",
            code="scope_escalation",
            context={"agent": principal.agent_id, "child": child_agent, "scopes": escalated},
        )
    if isinstance(roles, str):
        raise UsageError(f"roles must be a list of strings, not one string ({roles!r})")
    child_roles = sorted(set(roles))
    extra_roles = [r for r in child_roles if r not in principal.roles]
    if extra_roles:
        raise AuthorizationError(
            f"agent {principal.agent_id!r} cannot delegate roles it does not hold: "
            f"{', '.join(extra_roles)}",
            code="role_escalation",
            context={"agent": principal.agent_id, "child": child_agent, "roles": extra_roles},
        )
    actors = (ActorLink(principal.agent_id, principal.token_id), *parent.actors)
    if len(actors) > MAX_DELEGATION_DEPTH:
        raise AuthorizationError(
            f"delegating from {principal.agent_id!r} would make a chain of {len(actors)} "
            f"actors; at most {MAX_DELEGATION_DEPTH} are allowed",
            code="delegation_too_deep",
            context={"agent": principal.agent_id, "depth": len(actors)},
        )
    if ttl is not None and (
        not isinstance(ttl, _dt.timedelta) or not _dt.timedelta(seconds=1) <= ttl <= MAX_TTL
    ):
        raise UsageError(
            f"delegation ttl {ttl!r} is outside the accepted range of 1 s to 15 minutes",
            code="invalid_ttl",
        )
    issued = math.floor(issuer.clock.now().timestamp())
    expires = min(
        math.floor(parent.expires_at.timestamp()),
        issued + int(MAX_TTL.total_seconds()),
        issued + int(ttl.total_seconds()) if ttl is not None else issued + 10**9,
    )
    if expires <= issued:
        raise AuthenticationError(
            f"parent token of {principal.agent_id!r} expires at "
            f"{parent.expires_at.isoformat()}, too soon to delegate from",
            code="token_expired",
            context={"expires_at": parent.expires_at.isoformat()},
        )
    return issuer._mint(
        agent_id=child_agent,
        tenant=principal.tenant,
        roles=child_roles,
        scopes=scopes,
        audience=audience if audience is not None else verifier.audience,
        on_behalf_of=principal.on_behalf_of,
        run_id=principal.run_id,
        actors=actors,
        issued_at=issued,
        expires_at=expires,
    )
