"""Redaction of secrets and personal data in JSON-like values (ATTACKS.md #33, #34).

``Redactor(salt).redact(value)`` walks dicts, lists and strings and replaces each secret or piece
of personal data with a marker ``[REDACTED:<kind>:<10 hex>]``. The hex is the start of
HMAC-SHA256(salt, normalized value), so equal values give equal markers (an auditor can see that
the same card was used twice) without revealing them; without the salt the markers cannot be
brute-forced from small spaces such as phone numbers. Keys of dicts are kept; values under keys
named like ``password``, ``secret``, ``token``, ``api_key`` or ``authorization`` are redacted
whole (kind ``secret``).

Detected kinds (stable strings, see ``KINDS``):

* secrets: ``private_key`` (PEM blocks), ``jwt``, ``anthropic_key``, ``openai_key``,
  ``aws_access_key_id``, ``aws_secret_key``, ``github_token``, ``slack_token``, ``stripe_key``,
  ``google_api_key``, ``bearer_token``, ``url_password`` (``scheme://user:PASS@host`` keeps user
  and host), ``secret`` (values of secret-named keys, also ``password=…`` inside text);
* personal data: ``email``, ``us_ssn``, ``iban`` (valid checksum only), ``card`` (Luhn-valid,
  13-19 digits with a known issuer prefix), ``es_dni``, ``es_nie``, ``it_fiscal_code``,
  ``br_cpf`` (all checksum-validated), ``phone`` (``phonenumbers`` in the default region).

Cost: every detector sits behind a substring pre-check, so a string with nothing to redact costs a
handful of ``in`` tests; the expensive detectors (checksums, the phone-number matcher) only run on
strings with at least seven digits. A value with nothing to redact is returned as is (the same
object); the input is never mutated. ``Redactor`` is immutable apart from a bounded cache and is
safe to share between threads.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final

import phonenumbers
from stdnum import iban as _iban
from stdnum import luhn as _luhn
from stdnum.br import cpf as _br_cpf
from stdnum.es import dni as _es_dni
from stdnum.es import nie as _es_nie
from stdnum.it import codicefiscale as _it_cf
from stdnum.us import ssn as _us_ssn

from keel.canonical import canonical_json
from keel.errors import ConfigError

__all__ = ["KINDS", "MIN_SALT_BYTES", "Redactor", "StreamRedactor"]

MIN_SALT_BYTES: Final = 16

KINDS: Final[tuple[str, ...]] = (
    "private_key",
    "jwt",
    "anthropic_key",
    "openai_key",
    "aws_access_key_id",
    "aws_secret_key",
    "github_token",
    "slack_token",
    "stripe_key",
    "google_api_key",
    "bearer_token",
    "url_password",
    "secret",
    "email",
    "us_ssn",
    "iban",
    "card",
    "es_dni",
    "es_nie",
    "it_fiscal_code",
    "br_cpf",
    "phone",
    "too_deep",
)

#: Deeper nesting than this is replaced whole by a ``too_deep`` marker (fail closed, no recursion
#: error on hostile input).
MAX_DEPTH: Final = 100

# -- patterns -------------------------------------------------------------------------------------

_PEM = re.compile(
    r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"
    r".*?(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|\Z)",
    re.S,
)
_JWT = re.compile(r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*")
_ANTHROPIC = re.compile(r"(?<![A-Za-z0-9_-])sk-ant-[A-Za-z0-9_-]{20,}")
_OPENAI = re.compile(r"(?<![A-Za-z0-9_-])sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,}")
_AWS_ID = re.compile(r"(?<![A-Za-z0-9])(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Za-z0-9])")
_AWS_SECRET = re.compile(
    r"(?i)aws_?secret_?access_?key[\"']?\s*[:=]\s*[\"']?([A-Za-z0-9/+=]{40})(?![A-Za-z0-9/+=])"
)
_UNDERSCORE_KEYS = re.compile(
    r"(?<![A-Za-z0-9_])(?:"
    r"(?P<github_token>gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{22,})"
    r"|(?P<stripe_key>(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,}))"
)
_SLACK = re.compile(r"(?<![A-Za-z0-9])xox[bpars]-[A-Za-z0-9-]{10,}")
_GOOGLE = re.compile(r"(?<![A-Za-z0-9_-])AIza[0-9A-Za-z_-]{35}")
_BEARER = re.compile(r"(?i)\bbearer\s+([A-Za-z0-9\-._~+/]{8,}=*)")
_URL_PASSWORD = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/?#@]+:([^\s/?#@]+)@")
_ASSIGNMENT = re.compile(
    r"(?<![A-Za-z0-9_.-])([A-Za-z_][A-Za-z0-9_.-]{0,63})[\"']?[ \t]*[:=][ \t]*[\"']?"
    r"(?:(?:[Bb]earer|[Bb]asic|[Tt]oken|[Dd]igest)[ \t]+)?([^\s\"',;&}\]]+)"
)
_ASSIGNMENT_WORDS: Final = (
    "pass",
    "pwd",
    "secret",
    "token",
    "key",
    "auth",
    "cookie",
    "credential",
    "cvv",
    "cvc",
    "ssn",
)
_EMAIL = re.compile(
    r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
    r"\.[A-Za-z]{2,}(?![A-Za-z0-9-])"
)
_MARKER = re.compile(r"\[REDACTED:[a-z_]+:[0-9a-f]{10}\]")
_SEVEN_DIGITS = re.compile(r"[0-9](?:[^0-9]*[0-9]){6}")
_ISO_DATETIME_ONLY = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}(?:[T ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]+)?)?)?"
    r"(?:Z|[+-][0-9]{2}:?[0-9]{2})?"
)
_DATETIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}(?:[T ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]+)?)?)?"
    r"|[0-9]{1,2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?"
)
_SSN = re.compile(r"(?<![0-9-])[0-9]{3}([- ])[0-9]{2}\1[0-9]{4}(?![0-9-])")
_CAPITAL_IDS = re.compile(
    r"\b(?:(?P<iban>[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30})"
    r"|(?P<es_dni>[0-9]{8}-?[A-Z])"
    r"|(?P<es_nie>[XYZ]-?[0-9]{7}-?[A-Z])"
    r"|(?P<it_fiscal_code>[A-Z]{6}[0-9LMNPQRSTUV]{2}[ABCDEHLMPRST][0-9LMNPQRSTUV]{2}[A-Z]"
    r"[0-9LMNPQRSTUV]{3}[A-Z]))\b"
)
_CAPITAL_ID_CHECKS: Final[dict[str, Callable[[str], Any]]] = {
    "es_dni": _es_dni.is_valid,
    "es_nie": _es_nie.is_valid,
    "it_fiscal_code": _it_cf.is_valid,
}
_DIGIT_RUN = re.compile(r"(?<![0-9])[0-9]+(?:[ -][0-9]+)*(?![0-9])")
_DIGIT_GROUP = re.compile(r"[0-9]+")
_BR_CPF = re.compile(r"(?<![0-9.])[0-9]{3}\.[0-9]{3}\.[0-9]{3}-[0-9]{2}(?![0-9])")
_PHONE_CANDIDATE = re.compile(r"\+?\(?[0-9][0-9 ().\-/]{5,}[0-9]")
_NON_DIGITS = re.compile(r"[^0-9]+")
_KEY_WORDS = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|[0-9]+")

_SECRET_KEY_WORDS: Final = frozenset(
    {
        "password",
        "passwd",
        "pwd",
        "passphrase",
        "passcode",
        "secret",
        "secrets",
        "token",
        "apikey",
        "authorization",
        "cookie",
        "credential",
        "credentials",
        "privatekey",
        "cvv",
        "cvc",
        "cvv2",
        "ssn",
        "pin",
    }
)
_SECRET_KEY_PAIRS: Final = frozenset({("api", "key"), ("private", "key"), ("secret", "key")})
#: A key that also has one of these words describes a secret, it does not hold one
#: (``token_count``, ``password_expires``).
_NOT_SECRET_WORDS: Final = frozenset(
    {
        "count",
        "counts",
        "limit",
        "max",
        "min",
        "usage",
        "used",
        "total",
        "type",
        "estimate",
        "budget",
        "expires",
        "expiry",
        "ttl",
        "length",
        "len",
        "policy",
        "url",
        "endpoint",
        "hint",
    }
)

_Hit = tuple[int, int, str, str]  # start, end, kind, normalized value
_NO_HITS: Final[list[_Hit]] = []


def _card_prefix_ok(digits: str) -> bool:
    """True if ``digits`` starts with the issuer prefix of a major card network."""
    first = digits[0]
    if first == "4":  # Visa
        return True
    p2 = int(digits[:2])
    p3 = int(digits[:3])
    p4 = int(digits[:4])
    if first == "5":  # Mastercard 51-55, Maestro 50, 56-59
        return True
    if first == "2":  # Mastercard 2221-2720, Mir 2200-2204
        return 2221 <= p4 <= 2720 or 2200 <= p4 <= 2204
    if first == "3":  # Amex 34/37, JCB 3528-3589, Diners 300-305/36/38/39
        return p2 in (34, 36, 37, 38, 39) or 3528 <= p4 <= 3589 or 300 <= p3 <= 305
    return first == "6"  # Discover, UnionPay, Maestro, RuPay


def _key_words(key: str) -> list[str]:
    return [w.lower() for w in _KEY_WORDS.findall(key)]


def _is_secret_key(key: str) -> bool:
    words = _key_words(key)
    if not words or any(w in _NOT_SECRET_WORDS for w in words):
        return False
    if any(w in _SECRET_KEY_WORDS for w in words):
        return True
    return any(pair in _SECRET_KEY_PAIRS for pair in itertools.pairwise(words))


class Redactor:
    """Finds and masks secrets and personal data. See the module docstring for the kinds.

    ``salt`` keys the HMAC in the markers (at least 16 bytes; keep it secret and stable so markers
    correlate across records). ``region`` is the default region for phone numbers written without
    a country code (ISO 3166 alpha-2, e.g. ``"US"``, ``"DE"``).
    """

    __slots__ = ("_key_cache", "_mac", "_phone_lengths", "_phone_prefixes", "region")

    def __init__(self, salt: bytes, *, region: str = "US") -> None:
        if not isinstance(salt, bytes) or len(salt) < MIN_SALT_BYTES:
            raise ConfigError(
                f"the redaction salt must be at least {MIN_SALT_BYTES} random bytes",
                context={"key": "redaction.salt"},
            )
        self._mac = hmac.new(salt, digestmod=hashlib.sha256)
        self.region = region.upper()
        metadata = phonenumbers.PhoneMetadata.metadata_for_region(self.region)
        if metadata is None:
            raise ConfigError(
                f"unknown phone region {region!r}: use an ISO 3166 alpha-2 code such as 'US'",
                context={"key": "redaction.region"},
            )
        self._key_cache: dict[str, bool] = {}
        # Digit counts a national number of the region can have written without "+", with or
        # without its national prefix or country code; other counts are not worth the matcher.
        desc = metadata.general_desc
        lengths = set(desc.possible_length if desc is not None else range(7, 16))
        extra = {len(metadata.national_prefix or ""), len(str(metadata.country_code))}
        self._phone_lengths = frozenset(n + e for n in lengths for e in extra | {0})
        self._phone_prefixes = ("00", metadata.international_prefix or "00")

    # -- public API ----------------------------------------------------------------------------

    def redact(self, value: Any) -> Any:
        """``value`` with every secret and piece of personal data replaced by a marker.

        Dicts, lists and tuples are walked (keys kept); strings are scanned; an integer that is a
        valid card number (sent as a JSON number) becomes a marker string. Returns the same object
        when nothing needed redacting.
        """
        return self._walk(value, False, 0)

    def findings(self, value: Any) -> list[str]:
        """The kinds of sensitive data in ``value``, each once, in the order first found."""
        kinds: dict[str, None] = {}
        for kind in self._find(value, False, 0):
            kinds[kind] = None
        return list(kinds)

    def digest(self, text: str) -> str:
        """``hmac-sha256:<hex>`` of ``text`` keyed by the salt: what an audit record stores to
        bind the exact (unredacted) arguments and outcome. Without the salt a reader of the
        log cannot confirm a guess of a redacted value by hashing it (ATTACKS.md #33)."""
        mac = self._mac.copy()
        mac.update(b"keel-digest-v1\x00")
        mac.update(text.encode("utf-8", "surrogatepass"))
        return "hmac-sha256:" + mac.hexdigest()

    def marker(self, kind: str, value: str) -> str:
        """The marker that replaces ``value`` of ``kind`` (``[REDACTED:kind:hmac10]``)."""
        mac = self._mac.copy()
        mac.update(value.encode("utf-8", "surrogatepass"))
        return f"[REDACTED:{kind}:{mac.hexdigest()[:10]}]"

    # -- walking -------------------------------------------------------------------------------

    def _secret_key(self, key: str) -> bool:
        cached = self._key_cache.get(key)
        if cached is None:
            cached = _is_secret_key(key)
            if len(self._key_cache) >= 4096:
                self._key_cache.clear()
            self._key_cache[key] = cached
        return cached

    def _walk(self, value: Any, secret: bool, depth: int) -> Any:
        kind = type(value)
        if kind is str:
            if secret:
                if not value or _MARKER.fullmatch(value):
                    return value
                return self.marker("secret", value)
            hits = self._scan(value)
            return self._apply(value, hits) if hits else value
        if kind is dict or isinstance(value, Mapping):
            if depth >= MAX_DEPTH:
                return self.marker("too_deep", "")
            out: dict[Any, Any] | None = None
            for i, (k, v) in enumerate(value.items()):
                sub_secret = secret or (type(k) is str and self._secret_key(k))
                new = self._walk(v, sub_secret, depth + 1)
                if new is not v and out is None:
                    out = dict(list(value.items())[:i])
                if out is not None:
                    out[k] = new
            return value if out is None else out
        if kind is list or kind is tuple:
            if depth >= MAX_DEPTH:
                return self.marker("too_deep", "")
            items: list[Any] | None = None
            for i, v in enumerate(value):
                new = self._walk(v, secret, depth + 1)
                if new is not v and items is None:
                    items = list(value[:i])
                if items is not None:
                    items.append(new)
            if items is None:
                return value
            return items if kind is list else tuple(items)
        if kind is bool or value is None:
            return value
        if kind is int or kind is float:
            if secret:
                return self.marker("secret", canonical_json(value))
            if kind is int and _card_int(value):
                return self.marker("card", str(value))
            return value
        if secret:
            return self.marker("secret", repr(value))
        return value

    def _find(self, value: Any, secret: bool, depth: int) -> Iterator[str]:
        kind = type(value)
        if kind is str:
            if secret:
                if value and not _MARKER.fullmatch(value):
                    yield "secret"
            else:
                for hit in self._scan(value):
                    yield hit[2]
        elif kind is dict or isinstance(value, Mapping):
            if depth >= MAX_DEPTH:
                yield "too_deep"
                return
            for k, v in value.items():
                yield from self._find(
                    v, secret or (type(k) is str and self._secret_key(k)), depth + 1
                )
        elif kind is list or kind is tuple:
            if depth >= MAX_DEPTH:
                yield "too_deep"
                return
            for v in value:
                yield from self._find(v, secret, depth + 1)
        elif kind is bool or value is None:
            return
        elif secret:
            yield "secret"
        elif kind is int and _card_int(value):
            yield "card"

    # -- strings -------------------------------------------------------------------------------

    def _apply(self, text: str, hits: list[_Hit]) -> str:
        hits.sort()
        parts: list[str] = []
        pos = 0
        for start, end, kind, norm in hits:
            parts.append(text[pos:start])
            parts.append(self.marker(kind, norm))
            pos = end
        parts.append(text[pos:])
        return "".join(parts)

    def _scan(self, s: str) -> list[_Hit]:
        """Every sensitive span of ``s``; earlier detectors win overlaps. Cheap when clean."""
        if len(s) < 6:
            return _NO_HITS
        hits: list[_Hit] = []
        marked = "[REDACTED:" in s
        if marked:  # markers of an earlier pass stay as they are (redaction is idempotent)
            hits.extend((m.start(), m.end(), "", "") for m in _MARKER.finditer(s))
        if "-----BEGIN" in s:
            _add_all(hits, _PEM, s, "private_key")
        if "eyJ" in s:
            _add_all(hits, _JWT, s, "jwt")
        if "sk-" in s:
            _add_all(hits, _ANTHROPIC, s, "anthropic_key")
            _add_all(hits, _OPENAI, s, "openai_key")
        if "AKIA" in s or "ASIA" in s:
            _add_all(hits, _AWS_ID, s, "aws_access_key_id")
        if "_" in s:
            for m in _UNDERSCORE_KEYS.finditer(s):
                kind = m.lastgroup or "secret"
                _add(hits, m.start(), m.end(), kind, m.group())
        if "xox" in s:
            _add_all(hits, _SLACK, s, "slack_token")
        if "AIza" in s:
            _add_all(hits, _GOOGLE, s, "google_api_key")
        if "earer" in s or "EARER" in s:
            _add_all(hits, _BEARER, s, "bearer_token", group=1)
        if "@" in s:
            if "://" in s:
                _add_all(hits, _URL_PASSWORD, s, "url_password", group=1)
            for m in _EMAIL.finditer(s):
                _add(hits, m.start(), m.end(), "email", m.group().lower())
        if ":" in s or "=" in s:
            self._scan_assignments(s, hits)
        if _SEVEN_DIGITS.search(s) is not None and _ISO_DATETIME_ONLY.fullmatch(s) is None:
            self._scan_numbers(s, hits)
        if marked:
            return [hit for hit in hits if hit[2]]
        return hits

    def _scan_assignments(self, s: str, hits: list[_Hit]) -> None:
        lower = s.lower()
        if not any(word in lower for word in _ASSIGNMENT_WORDS):
            return
        if "secret" in lower:
            _add_all(hits, _AWS_SECRET, s, "aws_secret_key", group=1)
        pos = 0
        while (m := _ASSIGNMENT.search(s, pos)) is not None:
            if self._secret_key(m.group(1)):
                _add(hits, m.start(2), m.end(2), "secret", m.group(2))
                pos = m.end()
            else:  # the value may itself hold an assignment: "a=password=x"
                pos = m.start(2)

    def _scan_numbers(self, s: str, hits: list[_Hit]) -> None:
        # Dates and times are masked with letters of the same length (offsets stay valid): no
        # detector sees them and the phone matcher cannot join digits across them.
        masked = _DATETIME.sub(_mask, s) if ("-" in s or ":" in s) else s
        n_digits = len(_NON_DIGITS.sub("", masked))
        if n_digits < 7:
            return
        if n_digits >= 9:
            for m in _SSN.finditer(masked):
                digits = _NON_DIGITS.sub("", m.group())
                if _us_ssn.is_valid(digits):
                    _add(hits, m.start(), m.end(), "us_ssn", digits)
        if n_digits >= 11 and "." in masked:
            for m in _BR_CPF.finditer(masked):
                if _br_cpf.is_valid(m.group()):
                    _add(hits, m.start(), m.end(), "br_cpf", _NON_DIGITS.sub("", m.group()))
        if not masked.islower():  # IBANs and these national ids contain capitals
            for m in _CAPITAL_IDS.finditer(masked):
                kind = m.lastgroup or ""
                if kind == "iban":
                    _add_iban(hits, m.start(), m.group())
                elif _CAPITAL_ID_CHECKS[kind](m.group()):
                    _add(hits, m.start(), m.end(), kind, m.group().replace("-", ""))
        if n_digits >= 13:
            for m in _DIGIT_RUN.finditer(masked):
                _add_cards(hits, m)
        self._scan_phones(s, masked, hits)

    def _scan_phones(self, s: str, masked: str, hits: list[_Hit]) -> None:
        if hits:  # what is already claimed is masked too
            chars = list(masked)
            for start, end, _kind, _norm in hits:
                chars[start:end] = "x" * (end - start)
            masked = "".join(chars)
        if not any(self._phone_candidate(masked, m) for m in _PHONE_CANDIDATE.finditer(masked)):
            return
        for match in phonenumbers.PhoneNumberMatcher(masked, self.region):
            start, end = match.start, match.end
            if _glued_to_identifier(s, start, end):
                continue
            norm = phonenumbers.format_number(match.number, phonenumbers.PhoneNumberFormat.E164)
            _add(hits, start, end, "phone", norm)

    def _phone_candidate(self, s: str, m: re.Match[str]) -> bool:
        """Could this run of digits be a phone number? (Cheap, so the matcher rarely runs.)"""
        digits = _NON_DIGITS.sub("", m.group())
        if len(digits) < 7 or _glued_to_identifier(s, m.start(), m.end()):
            return False
        if m.group().startswith("+") or digits.startswith(self._phone_prefixes):
            return True
        return len(digits) in self._phone_lengths


def _mask(m: re.Match[str]) -> str:
    return "x" * (m.end() - m.start())


def _card_int(value: int) -> bool:
    if not 10**12 <= value < 10**19:
        return False
    digits = str(value)
    return _card_prefix_ok(digits) and bool(_luhn.is_valid(digits))


def _glued_to_identifier(s: str, start: int, end: int) -> bool:
    """True for a number that is part of an id such as ``ORD-4155552671`` or ``x_4155552671``."""
    if start > 0:
        before = s[start - 1]
        if before.isalnum() or before == "_":
            return True
        if before in "-#/" and start > 1 and (s[start - 2].isalnum() or s[start - 2] == "_"):
            return True
    if end < len(s):
        after = s[end]
        if after.isalnum() or after == "_":
            return True
        if after in "-/" and end + 1 < len(s) and s[end + 1].isalnum():
            return True
    return False


def _overlaps(hits: list[_Hit], start: int, end: int) -> bool:
    return any(start < h_end and h_start < end for h_start, h_end, _k, _n in hits)


def _add(hits: list[_Hit], start: int, end: int, kind: str, norm: str) -> None:
    if start < end and not _overlaps(hits, start, end):
        hits.append((start, end, kind, norm))


def _add_all(hits: list[_Hit], pattern: re.Pattern[str], s: str, kind: str, group: int = 0) -> None:
    for m in pattern.finditer(s):
        _add(hits, m.start(group), m.end(group), kind, m.group(group))


def _add_cards(hits: list[_Hit], run: re.Match[str]) -> None:
    """Add the card numbers in a run of digit groups (``4111 1111 1111 1111``, ``3782-822463-
    10005``): the longest span of whole groups, 13-19 digits, with an issuer prefix and a valid
    Luhn check digit. Digits are never split inside a group (a 20-digit id is not a card), and
    several groups count only when grouped like a printed card (first group of four digits,
    then groups of three to six)."""
    groups = [(g.start(), g.end(), g.group()) for g in _DIGIT_GROUP.finditer(run.group())]
    if sum(len(g[2]) for g in groups) < 13:
        return
    offset = run.start()
    i = 0
    while i < len(groups):
        candidates: list[tuple[int, str]] = []
        digits = ""
        for j in range(i, len(groups)):
            size = len(groups[j][2])
            if j > i and not (3 <= size <= 6 and len(groups[i][2]) == 4):
                break  # printed cards are grouped 4-4-4-4, 4-6-5, 4-4-4-4-3, ...
            digits += groups[j][2]
            if len(digits) > 19:
                break
            if len(digits) >= 13:
                candidates.append((j, digits))
        for j, number in reversed(candidates):  # longest first
            if _card_prefix_ok(number) and _luhn.is_valid(number):
                _add(hits, offset + groups[i][0], offset + groups[j][1], "card", number)
                i = j
                break
        i += 1


def _add_iban(hits: list[_Hit], offset: int, text: str) -> None:
    """Add the longest prefix of ``text`` that is a valid IBAN (the regex may run on)."""
    positions = [i for i, ch in enumerate(text) if ch != " "]
    compact = "".join(text[i] for i in positions)
    for length in range(len(compact), 14, -1):
        candidate = compact[:length]
        if _iban.is_valid(candidate):
            _add(hits, offset, offset + positions[length - 1] + 1, "iban", candidate)
            return


class StreamRedactor:
    """Redacts text that arrives in pieces (a streamed answer), so that a secret or a piece of
    personal data split across pieces is still caught (ATTACKS.md #33).

    ``feed(piece)`` returns the text that is safe to pass on now; ``flush()`` the rest at the
    end. Text is held back until it is at least ``hold`` characters behind the newest piece and
    ends at whitespace, and never cut inside something the redactor matches; a PEM block is held
    whole until its end line. A run without whitespace longer than ``max_hold`` is passed on
    (redacted) anyway so memory stays bounded. Output equals ``redactor.redact`` of the whole
    text except that markers can differ for values longer than ``hold`` that straddle a cut.
    One instance per stream; not thread-safe.
    """

    __slots__ = ("_hold", "_max_hold", "_pending", "_redactor")

    def __init__(self, redactor: Redactor, *, hold: int = 256, max_hold: int = 16384) -> None:
        self._redactor = redactor
        self._hold = hold
        self._max_hold = max(max_hold, hold)
        self._pending = ""

    def feed(self, piece: str) -> str:
        """Take the next piece; return the redacted text that can be released now."""
        if not piece:
            return ""
        text = self._pending + piece
        cut = self._cut(text)
        if cut <= 0:
            self._pending = text
            return ""
        self._pending = text[cut:]
        return self._redact(text[:cut])

    def flush(self) -> str:
        """The end of the stream: the redacted rest."""
        text, self._pending = self._pending, ""
        return self._redact(text)

    def _redact(self, text: str) -> str:
        hits = self._redactor._scan(text)
        return self._redactor._apply(text, list(hits)) if hits else text

    def _cut(self, text: str) -> int:
        limit = len(text) - self._hold
        if limit <= 0:
            return 0
        begin = text.find("-----BEGIN")
        if (
            begin != -1
            and text.find("-----END", begin) == -1
            and len(text) - begin < self._max_hold
        ):
            limit = min(limit, begin)  # a key block arriving: hold it until it ends
        cut = max(text.rfind(" ", 0, limit), text.rfind("\n", 0, limit))
        if cut <= 0:
            if len(text) < self._max_hold:
                return 0
            cut = limit  # a long run without whitespace: bound the memory
        for start, end, _kind, _norm in self._redactor._scan(text):
            if start < cut < end:
                cut = start
        return cut
