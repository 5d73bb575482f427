"""Agent tokens: short-lived JWTs signed with EdDSA (Ed25519), and their verifier.

Claims (all required unless noted): ``iss``, ``sub`` (the agent), ``aud`` (string or list),
``iat``, ``nbf``, ``exp``, ``jti``, ``tenant``, ``roles`` (list), ``scope`` (space separated, RFC
8693 §4.2), ``obo`` (optional: the human the agent acts on behalf of), ``run`` (optional: run id)
and ``act`` (optional: the delegation chain as nested RFC 8693 §4.1 ``act`` claims, nearest actor
outermost: ``{"sub": "router", "jti": "...", "act": {"sub": "root"}}``).

Lifetimes are 1 to 15 minutes at minting; the verifier refuses any token whose ``exp - iat`` is
over 15 minutes. The verifier is strict by construction (RFC 8725): it parses the token itself,
accepts only ``alg: EdDSA`` with a ``kid`` naming a local key exactly, refuses every header but
``alg``, ``kid`` and ``typ`` (so ``jku``, ``x5u``, ``jwk``, ``x5c`` and ``crit`` never get a
say), refuses duplicate JSON keys and non-canonical base64url, and checks the signature before
it reads a claim.

Every refusal is an ``AuthenticationError`` whose ``code`` says what was wrong:

========================== ===============================================================
``token_malformed``        not three base64url segments of JSON objects, too long, duplicate keys
``token_alg_refused``      ``alg`` missing or anything but ``EdDSA`` (``none``, ``HS256``, ...)
``token_header_refused``   a header other than ``alg``/``kid``/``typ``, or ``typ`` not ``JWT``
``token_kid_missing``      no ``kid`` header
``token_unknown_key``      ``kid`` names no local key (exact match, no normalization)
``token_bad_signature``    the signature does not verify
``token_issuer``           ``iss`` is not the expected issuer
``token_audience``         ``aud`` does not name this verifier's audience
``token_expired``          ``exp`` has passed (beyond the leeway)
``token_not_yet_valid``    ``nbf`` is in the future (beyond the leeway)
``token_issued_in_future`` ``iat`` is in the future (beyond the leeway)
``token_lifetime``         ``exp - iat`` is over 15 minutes, or not positive
``token_claim_invalid``    a claim is missing or has the wrong type or form
``token_act_malformed``    the ``act`` delegation chain is malformed or too deep
``token_revoked``          the token, or a token it was delegated from, is revoked
========================== ===============================================================

Verified tokens are cached (bounded LRU keyed by the exact token string). A cache hit still
checks revocation and expiry against the clock, so caching never extends a token's life.
"""

from __future__ import annotations

import datetime as _dt
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

from keel.canonical import canonical_json, parse_json
from keel.core import Clock, Principal, SystemClock, new_id
from keel.errors import AuthenticationError, InvalidRequestError, UsageError
from keel.identity._b64 import b64url_decode, b64url_encode
from keel.identity.keys import ALGORITHM, KeySet

__all__ = [
    "DEFAULT_LEEWAY",
    "DEFAULT_TTL",
    "MAX_DELEGATION_DEPTH",
    "MAX_LEEWAY",
    "MAX_TOKEN_LENGTH",
    "MAX_TTL",
    "MIN_TTL",
    "ActorLink",
    "RevocationSet",
    "TokenIssuer",
    "TokenVerifier",
    "VerifiedToken",
    "check_scopes",
]

MIN_TTL: Final = _dt.timedelta(minutes=1)
MAX_TTL: Final = _dt.timedelta(minutes=15)
DEFAULT_TTL: Final = _dt.timedelta(minutes=10)
DEFAULT_LEEWAY: Final = _dt.timedelta(seconds=60)
MAX_LEEWAY: Final = _dt.timedelta(minutes=5)
#: Longest accepted token text, in characters.
MAX_TOKEN_LENGTH: Final = 8192
#: Most actors an ``act`` chain may name.
MAX_DELEGATION_DEPTH: Final = 8

_MAX_TTL_SECONDS: Final = int(MAX_TTL.total_seconds())
_ALLOWED_HEADERS: Final = frozenset({"alg", "kid", "typ"})
_DANGEROUS_HEADERS: Final = frozenset({"jku", "x5u", "jwk", "x5c", "crit"})
_ACT_MEMBERS: Final = frozenset({"sub", "jti", "act"})
# RFC 6749 §3.3 scope-token: printable ASCII except space, '"' and '\'.
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")


class ActorLink(NamedTuple):
    """One actor in a delegation chain: the agent and the token it delegated from (if known)."""

    agent_id: str
    token_id: str | None = None


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    """Everything a verified token established. ``principal.act`` lists ``actors``' agent ids."""

    principal: Principal
    key_id: str
    issuer: str
    audience: tuple[str, ...]
    issued_at: _dt.datetime
    expires_at: _dt.datetime
    actors: tuple[ActorLink, ...] = ()

    @property
    def token_ids(self) -> tuple[str, ...]:
        """This token's id and those of the tokens it was delegated from (for revocation)."""
        own = (self.principal.token_id,) if self.principal.token_id else ()
        return own + tuple(link.token_id for link in self.actors if link.token_id)


def _refuse(code: str, message: str, **context: Any) -> AuthenticationError:
    return AuthenticationError(message, code=code, context=context)


def _short(value: object, limit: int = 64) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _utc(seconds: float) -> _dt.datetime:
    return _dt.datetime.fromtimestamp(seconds, _dt.UTC)


# -- minting ---------------------------------------------------------------------------------


def _names(values: Iterable[str], what: str) -> list[str]:
    if isinstance(values, str):
        raise UsageError(f"{what} must be a list of strings, not one string ({values!r})")
    result = sorted(set(values))
    for value in result:
        if not isinstance(value, str) or not value:
            raise UsageError(f"{what} must be non-empty strings; got {value!r}")
    return result


def check_scopes(scopes: Iterable[str]) -> list[str]:
    """Sorted, de-duplicated scopes; UsageError unless each is an RFC 6749 scope token."""
    result = _names(scopes, "scopes")
    for scope in result:
        if not _SCOPE_TOKEN.fullmatch(scope):
            raise UsageError(
                f"scope {scope!r} is invalid: use printable ASCII without spaces, '\"' or '\\'",
                code="invalid_scope",
            )
    return result


def _text(value: str, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise UsageError(f"{what} must be a non-empty string; got {value!r}")
    return value


def _encode_act(chain: Sequence[ActorLink]) -> dict[str, Any] | None:
    claim: dict[str, Any] | None = None
    for link in reversed(chain):
        node: dict[str, Any] = {"sub": _text(link.agent_id, "act agent id")}
        if link.token_id is not None:
            node["jti"] = _text(link.token_id, "act token id")
        if claim is not None:
            node["act"] = claim
        claim = node
    return claim


class TokenIssuer:
    """Mints agent tokens signed by the key set's active key.

    Thread-safe; ``mint`` does not block. The issuer name must match the verifiers' ``issuer``.
    """

    def __init__(self, keyset: KeySet, issuer: str = "keel", clock: Clock | None = None) -> None:
        self._keyset = keyset
        self.issuer = _text(issuer, "issuer")
        self._clock: Clock = clock or SystemClock()
        self._headers: dict[str, str] = {}

    @property
    def clock(self) -> Clock:
        return self._clock

    def mint(
        self,
        agent_id: str,
        tenant: str,
        roles: Iterable[str],
        scopes: Iterable[str],
        audience: str | Sequence[str],
        on_behalf_of: str | None = None,
        run_id: str | None = None,
        ttl: _dt.timedelta = DEFAULT_TTL,
        act: Sequence[str] = (),
    ) -> str:
        """A signed token for ``agent_id``, valid from now for ``ttl`` (1 to 15 minutes).

        ``act`` is the delegation chain, nearest actor first (prefer ``delegate()``, which
        checks that scopes only narrow). Raises UsageError on a bad argument.
        """
        if not isinstance(ttl, _dt.timedelta) or not MIN_TTL <= ttl <= MAX_TTL:
            raise UsageError(
                f"token ttl {ttl!r} is outside the accepted range of 1 to 15 minutes",
                code="invalid_ttl",
                context={"min_seconds": 60, "max_seconds": _MAX_TTL_SECONDS},
            )
        if isinstance(act, str):
            raise UsageError("act must be a list of agent ids, nearest actor first")
        issued = math.floor(self._clock.now().timestamp())
        return self._mint(
            agent_id=agent_id,
            tenant=tenant,
            roles=roles,
            scopes=scopes,
            audience=audience,
            on_behalf_of=on_behalf_of,
            run_id=run_id,
            actors=[ActorLink(agent) for agent in act],
            issued_at=issued,
            expires_at=issued + int(ttl.total_seconds()),
        )

    def _mint(
        self,
        *,
        agent_id: str,
        tenant: str,
        roles: Iterable[str],
        scopes: Iterable[str],
        audience: str | Sequence[str],
        on_behalf_of: str | None,
        run_id: str | None,
        actors: Sequence[ActorLink],
        issued_at: int,
        expires_at: int,
    ) -> str:
        """Mint with explicit times (for delegation, which clamps to the parent's expiry)."""
        if not 0 < expires_at - issued_at <= _MAX_TTL_SECONDS:
            raise UsageError(
                f"token lifetime {expires_at - issued_at} s is outside 1 s to 15 minutes",
                code="invalid_ttl",
            )
        if len(actors) > MAX_DELEGATION_DEPTH:
            raise UsageError(
                f"the delegation chain names {len(actors)} actors; at most "
                f"{MAX_DELEGATION_DEPTH} are allowed",
                code="delegation_too_deep",
            )
        if isinstance(audience, str):
            aud: str | list[str] = _text(audience, "audience")
        else:
            aud = _names(audience, "audience")
            if not aud:
                raise UsageError("audience must name at least one recipient")
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": _text(agent_id, "agent_id"),
            "aud": aud,
            "iat": issued_at,
            "nbf": issued_at,
            "exp": expires_at,
            "jti": new_id(),
            "tenant": _text(tenant, "tenant"),
            "roles": _names(roles, "roles"),
            "scope": " ".join(check_scopes(scopes)),
        }
        if on_behalf_of is not None:
            claims["obo"] = _text(on_behalf_of, "on_behalf_of")
        if run_id is not None:
            claims["run"] = _text(run_id, "run_id")
        act = _encode_act(actors)
        if act is not None:
            claims["act"] = act
        key = self._keyset.active
        header = self._headers.get(key.kid)
        if header is None:
            header = b64url_encode(
                canonical_json({"alg": ALGORITHM, "kid": key.kid, "typ": "JWT"}).encode()
            )
            self._headers[key.kid] = header
        signing_input = header + "." + b64url_encode(canonical_json(claims).encode("utf-8"))
        return signing_input + "." + b64url_encode(key.sign(signing_input.encode("ascii")))


# -- revocation ------------------------------------------------------------------------------


class RevocationSet:
    """Token ids (``jti``) that must no longer verify. Thread-safe; share it between verifiers.

    An entry is kept until ``until`` plus the largest leeway (pass the token's expiry), or by
    default for ``retention`` from now (25 minutes: longer than any token can live, 15 minutes
    plus twice the largest leeway), then pruned on a later ``revoke``. Membership tests take no
    lock.

    This set lives in process memory. ``keel.identity.StoredRevocations`` is the subclass an
    ``App`` uses: kept in the store, so a revocation reaches every process sharing it, and able
    to revoke every token of an agent.
    """

    #: Monotonic time at which ``refresh()`` is next due (never, for a set in memory only).
    _next_refresh: float = math.inf

    def __init__(
        self,
        clock: Clock | None = None,
        retention: _dt.timedelta = MAX_TTL + 2 * MAX_LEEWAY,
    ) -> None:
        self._clock: Clock = clock or SystemClock()
        self._retention = retention
        self._lock = threading.Lock()
        self._entries: dict[str, _dt.datetime] = {}
        #: agent id -> ((tenant or None for every tenant, cutoff), ...): tokens of the agent in
        #: that tenant issued (``iat``) before ``cutoff`` (epoch seconds) are refused.
        self._agents: dict[str, tuple[tuple[str | None, float], ...]] = {}

    def refresh(self) -> None:
        """Reload from the shared source, if there is one (nothing to do in memory)."""

    def _poll(self) -> None:
        """Called by a verifier once ``_next_refresh`` has passed (never, in memory)."""
        self.refresh()

    def current_refusal(
        self, verified: VerifiedToken, token_ids: Sequence[str]
    ) -> tuple[str, str] | None:
        """``refusal`` on a view refreshed when it is due (what a verifier asks on every
        verify: no I/O unless the refresh period has passed, no work when nothing is revoked)."""
        due = self._next_refresh
        if due < math.inf and due <= self._clock.monotonic():
            self._poll()
        if self._entries or self._agents:
            return self.refusal(verified, token_ids)
        return None

    def refusal(
        self, verified: VerifiedToken, token_ids: Sequence[str] | None = None
    ) -> tuple[str, str] | None:
        """Why ``verified`` is refused: ``("token", jti)`` or ``("agent", agent_id)``, or None.

        ``token_ids`` defaults to ``verified.token_ids``. Reads the current view without a lock
        and without I/O (call ``refresh()`` first for a fresh one).
        """
        entries = self._entries
        if entries:
            for jti in verified.token_ids if token_ids is None else token_ids:
                if jti in entries:
                    return ("token", jti)
        agents = self._agents
        if agents:
            principal = verified.principal
            for agent in (
                (principal.agent_id, *principal.act) if principal.act else (principal.agent_id,)
            ):
                cutoffs = agents.get(agent)
                if cutoffs is None:
                    continue
                issued = verified.issued_at.timestamp()
                for tenant, cutoff in cutoffs:
                    if issued < cutoff and (tenant is None or tenant == principal.tenant):
                        return ("agent", agent)
        return None

    def revoke(self, jti: str, *, until: _dt.datetime | None = None) -> None:
        """Refuse token ``jti`` (and every token delegated from it) from now on."""
        if until is not None and until.tzinfo is None:
            raise UsageError("revoke(until=...) needs a timezone-aware time")
        now = self._clock.now()
        forget = until + MAX_LEEWAY if until is not None else now + self._retention
        with self._lock:
            entries = {k: v for k, v in self._entries.items() if v > now}
            entries[_text(jti, "token id")] = max(forget, entries.get(jti, forget))
            self._entries = entries

    def __contains__(self, jti: object) -> bool:
        return jti in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __bool__(self) -> bool:
        return bool(self._entries)


# -- verification ----------------------------------------------------------------------------


def _numeric_date(claims: dict[str, Any], name: str, *, required: bool = True) -> float | None:
    value = claims.get(name)
    if value is None and not required and name not in claims:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not 0 <= value < 2**40
    ):
        raise _refuse(
            "token_claim_invalid",
            f"token claim {name!r} must be a NumericDate (seconds since the epoch); "
            f"got {_short(value)}",
            claim=name,
        )
    return float(value)


def _string_claim(claims: dict[str, Any], name: str, *, required: bool = True) -> str | None:
    value = claims.get(name)
    if value is None and not required and name not in claims:
        return None
    if not isinstance(value, str) or not value:
        raise _refuse(
            "token_claim_invalid",
            f"token claim {name!r} must be a non-empty string; got {_short(value)}",
            claim=name,
        )
    return value


def _decode_act(claim: object) -> tuple[ActorLink, ...]:
    """The actors of an ``act`` claim, nearest first; AuthenticationError if malformed."""
    links: list[ActorLink] = []
    node = claim
    while True:
        depth = len(links)
        if depth >= MAX_DELEGATION_DEPTH:
            raise _refuse(
                "token_act_malformed",
                f"token 'act' chain is deeper than {MAX_DELEGATION_DEPTH} actors",
            )
        if not isinstance(node, dict):
            raise _refuse(
                "token_act_malformed",
                f"token 'act' claim at depth {depth} must be an object with 'sub'; "
                f"got {_short(node)}",
            )
        unknown = sorted(set(node) - _ACT_MEMBERS)
        if unknown:
            raise _refuse(
                "token_act_malformed",
                f"token 'act' claim at depth {depth} has unknown members "
                f"{[_short(u) for u in unknown]}; accepted: 'sub', 'jti', 'act'",
            )
        sub = node.get("sub")
        if not isinstance(sub, str) or not sub:
            raise _refuse(
                "token_act_malformed",
                f"token 'act' claim at depth {depth} needs a non-empty string 'sub'",
            )
        jti = node.get("jti")
        if "jti" in node and (not isinstance(jti, str) or not jti):
            raise _refuse(
                "token_act_malformed",
                f"token 'act' claim at depth {depth} has a 'jti' that is not a non-empty string",
            )
        links.append(ActorLink(sub, jti))
        if "act" not in node:
            return tuple(links)
        node = node["act"]


class TokenVerifier:
    """Verifies agent tokens and returns the ``Principal`` they establish.

    ``leeway`` (0 to 5 minutes, default 60 s) absorbs clock skew for ``exp``, ``nbf`` and
    ``iat``. ``cache_size`` bounds the verified-token cache (0 disables it). ``revocations``
    may be shared between verifiers; it is consulted on every call, cache hits included.

    Thread-safe; ``verify`` does not block (beyond a short internal lock) and does no I/O, except
    that a store-backed ``revocations`` (``StoredRevocations``) reloads from its store when its
    refresh period has passed: one read at most every period, not one per call.
    """

    def __init__(
        self,
        keyset: KeySet,
        issuer: str,
        audience: str,
        clock: Clock | None = None,
        leeway: _dt.timedelta = DEFAULT_LEEWAY,
        cache_size: int = 10_000,
        revocations: RevocationSet | None = None,
    ) -> None:
        if not _dt.timedelta(0) <= leeway <= MAX_LEEWAY:
            raise UsageError(f"leeway {leeway!r} is outside the accepted range of 0 to 5 minutes")
        if cache_size < 0:
            raise UsageError(f"cache_size must be 0 or more, not {cache_size}")
        self._keyset = keyset
        self.issuer = _text(issuer, "issuer")
        self.audience = _text(audience, "audience")
        self._clock: Clock = clock or SystemClock()
        self._leeway = leeway
        self._leeway_s = leeway.total_seconds()
        self._cache_size = cache_size
        self.revocations = revocations if revocations is not None else RevocationSet(self._clock)
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, tuple[VerifiedToken, _dt.datetime, tuple[str, ...], int]]
        self._cache = OrderedDict()

    @property
    def clock(self) -> Clock:
        return self._clock

    @property
    def cached(self) -> int:
        """How many verified tokens the cache holds now (at most ``cache_size``)."""
        return len(self._cache)

    def revoke(self, jti: str, *, until: _dt.datetime | None = None) -> None:
        """Refuse the token with id ``jti``, and tokens delegated from it, from now on."""
        self.revocations.revoke(jti, until=until)

    def verify(self, token: str) -> Principal:
        """The principal ``token`` establishes; AuthenticationError (see module doc) if none."""
        return self.verify_token(token).principal

    def verify_token(self, token: str) -> VerifiedToken:
        """Like ``verify``, returning everything the token established."""
        # Hot path: one dict lookup, a revocation check and one clock read. OrderedDict
        # operations are atomic under the GIL; a racing eviction only costs the LRU bump.
        try:
            entry = self._cache.get(token)
        except TypeError:  # unhashable: not a token; the full check says why
            entry = None
        if entry is None or entry[3] != self._keyset.version:
            return self._verify_uncached(token)
        try:  # noqa: SIM105 - contextlib.suppress costs more than the rest of a cache hit
            self._cache.move_to_end(token)
        except KeyError:
            pass
        verified, deadline, token_ids, _version = entry
        hit = self.revocations.current_refusal(verified, token_ids)
        if hit is not None:
            raise self._revoked(hit, verified)
        if self._clock.now() >= deadline:
            self._cache.pop(token, None)
            raise self._expired(verified.expires_at)
        return verified

    # -- the full check ------------------------------------------------------------------------

    def _expired(self, expires_at: _dt.datetime) -> AuthenticationError:
        ago = (self._clock.now() - expires_at).total_seconds()
        return _refuse(
            "token_expired",
            f"token expired at {expires_at.isoformat()} ({ago:.0f} s ago; leeway "
            f"{self._leeway_s:.0f} s); mint a new one",
            expires_at=expires_at.isoformat(),
        )

    def _revoked(self, hit: tuple[str, str], verified: VerifiedToken) -> AuthenticationError:
        kind, target = hit
        if kind == "agent":
            own = target == verified.principal.agent_id
            whose = f"agent {target!r}" if own else f"agent {target!r}, which delegated it,"
            return _refuse(
                "token_revoked",
                f"token is revoked (every token of {whose} issued before its revocation was "
                "revoked; mint a new token once the agent may act again)",
                agent=target,
            )
        own = target == verified.principal.token_id
        what = "token" if own else "token it was delegated from"
        return _refuse(
            "token_revoked",
            f"token is revoked (the {what}, id {target!r}, was revoked)",
            token_id=target,
        )

    def _segment_json(self, segment: str, what: str) -> dict[str, Any]:
        try:
            raw = b64url_decode(segment)
        except ValueError:
            raise _refuse(
                "token_malformed", f"token {what} is not unpadded base64url", segment=what
            ) from None
        try:
            value = parse_json(raw, max_bytes=MAX_TOKEN_LENGTH, max_depth=32, what=f"token {what}")
        except InvalidRequestError as exc:
            raise _refuse("token_malformed", exc.message, segment=what) from None
        if not isinstance(value, dict):
            raise _refuse("token_malformed", f"token {what} must be a JSON object", segment=what)
        return value

    def _verify_uncached(self, token: str) -> VerifiedToken:
        keys_version = self._keyset.version  # read before the key lookup: retire() wins races
        if not isinstance(token, str):
            raise _refuse("token_malformed", f"token must be a string, not {type(token).__name__}")
        if len(token) > MAX_TOKEN_LENGTH:
            raise _refuse(
                "token_malformed",
                f"token is {len(token)} characters; the limit is {MAX_TOKEN_LENGTH}",
            )
        parts = token.split(".")
        if len(parts) != 3:
            raise _refuse(
                "token_malformed",
                "token must be three base64url segments (header.payload.signature) separated "
                f"by '.'; found {len(parts)} segment(s)",
            )
        header_b64, payload_b64, signature_b64 = parts
        header = self._segment_json(header_b64, "header")
        key_id = self._check_header(header)
        key = self._keyset.public_key(key_id)
        if key is None:
            raise _refuse(
                "token_unknown_key",
                f"token key id {_short(key_id)} names no key in the local key set (key ids "
                "must match exactly; a retired key no longer verifies)",
                kid=_short(key_id),
            )
        try:
            signature = b64url_decode(signature_b64)
            b64url_decode(payload_b64)
        except ValueError:
            raise _refuse(
                "token_malformed", "token payload or signature is not unpadded base64url"
            ) from None
        signing_input = (header_b64 + "." + payload_b64).encode("ascii")
        if not key.verify_signature(signing_input, signature):
            raise _refuse(
                "token_bad_signature",
                f"token signature does not verify with key {key_id!r}",
                kid=key_id,
            )
        claims = self._segment_json(payload_b64, "payload")
        verified = self._check_claims(claims, key_id)
        token_ids = verified.token_ids
        hit = self.revocations.current_refusal(verified, token_ids)
        if hit is not None:
            raise self._revoked(hit, verified)
        if self._cache_size:
            deadline = verified.expires_at + self._leeway
            with self._lock:
                self._cache[token] = (verified, deadline, token_ids, keys_version)
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return verified

    def _check_header(self, header: dict[str, Any]) -> str:
        if "alg" not in header:
            raise _refuse("token_alg_refused", "token header names no algorithm ('alg')")
        alg = header["alg"]
        if alg != ALGORITHM:
            raise _refuse(
                "token_alg_refused",
                f"token algorithm {_short(alg)} is refused; only {ALGORITHM!r} is accepted",
                alg=_short(alg),
            )
        dangerous = sorted(set(header) & _DANGEROUS_HEADERS)
        if dangerous:
            raise _refuse(
                "token_header_refused",
                f"token header carries {dangerous}: key URLs, embedded keys and critical "
                "extensions are refused; keys come only from the local key set",
                headers=dangerous,
            )
        unknown = sorted(set(header) - _ALLOWED_HEADERS)
        if unknown:
            raise _refuse(
                "token_header_refused",
                f"token header carries unknown members {[_short(u) for u in unknown]}; "
                "accepted: 'alg', 'kid', 'typ'",
            )
        if "typ" in header and header["typ"] != "JWT":
            raise _refuse(
                "token_header_refused",
                f"token type {_short(header['typ'])} is refused; expected 'JWT'",
            )
        if "kid" not in header:
            raise _refuse("token_kid_missing", "token header names no key id ('kid')")
        kid = header["kid"]
        if type(kid) is not str:
            raise _refuse("token_unknown_key", f"token key id must be a string; got {_short(kid)}")
        return kid

    def _check_claims(self, claims: dict[str, Any], key_id: str) -> VerifiedToken:
        iss = claims.get("iss")
        if iss != self.issuer:
            raise _refuse(
                "token_issuer",
                f"token issuer {_short(iss)} is not the expected issuer {self.issuer!r}",
                issuer=_short(iss),
            )
        aud = claims.get("aud")
        if isinstance(aud, str):
            audience: tuple[str, ...] = (aud,)
        elif isinstance(aud, list) and aud and all(isinstance(a, str) for a in aud):
            audience = tuple(aud)
        else:
            raise _refuse(
                "token_claim_invalid",
                f"token claim 'aud' must be a string or a non-empty list of strings; "
                f"got {_short(aud)}",
                claim="aud",
            )
        if self.audience not in audience:
            raise _refuse(
                "token_audience",
                f"token is for audience {_short(list(audience))}, not for {self.audience!r}",
                audience=_short(list(audience)),
            )
        exp = _numeric_date(claims, "exp")
        iat = _numeric_date(claims, "iat")
        nbf = _numeric_date(claims, "nbf", required=False)
        assert exp is not None and iat is not None  # required=True never returns None
        now = self._clock.now().timestamp()
        leeway = self._leeway_s
        if now >= exp + leeway:
            raise self._expired(_utc(exp))
        if nbf is not None and nbf > now + leeway:
            raise _refuse(
                "token_not_yet_valid",
                f"token is not valid before {_utc(nbf).isoformat()} ({nbf - now:.0f} s from "
                f"now; leeway {leeway:.0f} s)",
                not_before=_utc(nbf).isoformat(),
            )
        if iat > now + leeway:
            raise _refuse(
                "token_issued_in_future",
                f"token was issued in the future, at {_utc(iat).isoformat()} ({iat - now:.0f} "
                f"s from now; leeway {leeway:.0f} s): check the issuer's clock",
                issued_at=_utc(iat).isoformat(),
            )
        lifetime = exp - iat
        if not 0 < lifetime <= _MAX_TTL_SECONDS:
            raise _refuse(
                "token_lifetime",
                f"token lifetime (exp - iat) is {lifetime:.0f} s; accepted: more than 0 and at "
                f"most {_MAX_TTL_SECONDS} s (15 minutes)",
                lifetime_seconds=lifetime,
            )
        agent = _string_claim(claims, "sub")
        jti = _string_claim(claims, "jti")
        tenant = _string_claim(claims, "tenant")
        on_behalf_of = _string_claim(claims, "obo", required=False)
        run_id = _string_claim(claims, "run", required=False)
        roles = claims.get("roles", [])
        if not isinstance(roles, list) or not all(isinstance(r, str) and r for r in roles):
            raise _refuse(
                "token_claim_invalid",
                f"token claim 'roles' must be a list of non-empty strings; got {_short(roles)}",
                claim="roles",
            )
        scope = claims.get("scope", "")
        if not isinstance(scope, str):
            raise _refuse(
                "token_claim_invalid",
                f"token claim 'scope' must be a space-separated string; got {_short(scope)}",
                claim="scope",
            )
        scopes = scope.split(" ") if scope else []
        if not all(_SCOPE_TOKEN.fullmatch(s) for s in scopes):
            raise _refuse(
                "token_claim_invalid",
                f"token claim 'scope' must be scope tokens separated by single spaces; got "
                f"{_short(scope)}",
                claim="scope",
            )
        actors = _decode_act(claims["act"]) if "act" in claims else ()
        assert agent is not None and jti is not None and tenant is not None
        expires_at = _utc(exp)
        principal = Principal(
            agent_id=agent,
            tenant=tenant,
            roles=frozenset(roles),
            scopes=frozenset(scopes),
            on_behalf_of=on_behalf_of,
            run_id=run_id,
            act=tuple(link.agent_id for link in actors),
            token_id=jti,
            expires_at=expires_at,
        )
        return VerifiedToken(
            principal=principal,
            key_id=key_id,
            issuer=self.issuer,
            audience=audience,
            issued_at=_utc(iat),
            expires_at=expires_at,
            actors=actors,
        )
