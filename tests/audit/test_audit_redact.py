"""Redaction of secrets and personal data (ATTACKS.md #33, #34)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keel.audit import REDACTION_KINDS, Redactor
from keel.errors import ConfigError

SALT = b"test-salt-0123456789abcdef"
MARKER = re.compile(r"\[REDACTED:([a-z_]+):([0-9a-f]{10})\]")


@pytest.fixture(scope="module")
def redactor() -> Redactor:
    return Redactor(SALT)


def kinds_in(text: str) -> list[str]:
    return [m.group(1) for m in MARKER.finditer(text)]


JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"

# (text containing exactly one sensitive value, the value, its kind)
CASES: list[tuple[str, str, str]] = [
    ("key AKIAIOSFODNN7EXAMPLE in config", "AKIAIOSFODNN7EXAMPLE", "aws_access_key_id"),
    ("temp ASIAY34FZKBOKMUTVV7A creds", "ASIAY34FZKBOKMUTVV7A", "aws_access_key_id"),
    (
        "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "aws_secret_key",
    ),
    (
        "OPENAI key sk-proj-abcdefghijklmnopqrstuvwxyz0123456789 leaked",
        "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789",
        "openai_key",
    ),
    (
        "legacy sk-abcdefghijklmnopqrstuvwxyz0123456789ABCD",
        "sk-abcdefghijklmnopqrstuvwxyz0123456789ABCD",
        "openai_key",
    ),
    (
        "claude sk-ant-api03-abcdefghijklmnopqrstuvwxyz-0123456789",
        "sk-ant-api03-abcdefghijklmnopqrstuvwxyz-0123456789",
        "anthropic_key",
    ),
    (
        "token ghp_abcdefghijklmnopqrstuvwxyz0123456789 for ci",
        "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
        "github_token",
    ),
    (
        "oauth gho_16C7e42F292c6912E7710c838347Ae178B4a here",
        "gho_16C7e42F292c6912E7710c838347Ae178B4a",
        "github_token",
    ),
    (
        "app ghs_16C7e42F292c6912E7710c838347Ae178B4a here",
        "ghs_16C7e42F292c6912E7710c838347Ae178B4a",
        "github_token",
    ),
    (
        "pat github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyzABCD here",
        "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyzABCD",
        "github_token",
    ),
    ("slack xoxb-123456789012-abcdefghijkl now", "xoxb-123456789012-abcdefghijkl", "slack_token"),
    (
        "stripe sk_live_4eC39HqLyjWDarjtT1zdp7dc now",
        "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
        "stripe_key",
    ),
    (
        "restricted rk_live_4eC39HqLyjWDarjtT1zdp7dc",
        "rk_live_4eC39HqLyjWDarjtT1zdp7dc",
        "stripe_key",
    ),
    (
        "maps AIzaSyDdI0hCZtE6vySjMm-WEfRq3CPzqKqqsHI ok",
        "AIzaSyDdI0hCZtE6vySjMm-WEfRq3CPzqKqqsHI",
        "google_api_key",
    ),
    ("curl -H 'Authorization: Bearer abc123def456ghi'", "abc123def456ghi", "bearer_token"),
    ("jwt " + JWT, JWT, "jwt"),
    (
        "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----",
        "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC",
        "private_key",
    ),
    ("db postgres://app:s3cr3t-pw@db.internal:5432/main", "s3cr3t-pw", "url_password"),
    ("password=hunter22 in the log", "hunter22", "secret"),
    ('{"client_secret": "zq9-xx-77"}', "zq9-xx-77", "secret"),
    ("write to alice.smith+tag@example.co.uk today", "alice.smith+tag@example.co.uk", "email"),
    ("call +1 415-555-2671 tomorrow", "415-555-2671", "phone"),
    ("office (415) 555-2671", "555-2671", "phone"),
    ("london +44 20 7946 0958", "7946 0958", "phone"),
    ("card 4111 1111 1111 1111 exp 12/28", "4111 1111 1111 1111", "card"),
    ("amex 3782-822463-10005", "3782-822463-10005", "card"),
    ("visa 4012888888881881", "4012888888881881", "card"),
    ("pay DE89 3704 0044 0532 0130 00 now", "DE89 3704 0044 0532 0130 00", "iban"),
    ("iban GB82WEST12345698765432", "GB82WEST12345698765432", "iban"),
    ("ssn 536-22-1234 on file", "536-22-1234", "us_ssn"),
    ("dni 12345678Z", "12345678Z", "es_dni"),
    ("nie X1234567L", "X1234567L", "es_nie"),
    ("codice fiscale RSSMRA85T10A562S", "RSSMRA85T10A562S", "it_fiscal_code"),
    ("cpf 390.533.447-05", "390.533.447-05", "br_cpf"),
]


@pytest.mark.parametrize(("text", "secret", "kind"), CASES, ids=[c[2] for c in CASES])
def test_each_kind_is_redacted(redactor: Redactor, text: str, secret: str, kind: str) -> None:
    out = redactor.redact(text)
    assert secret not in out
    assert kind in kinds_in(out)
    assert kind in redactor.findings(text)
    assert kind in REDACTION_KINDS


def test_url_password_keeps_user_and_host(redactor: Redactor) -> None:
    out = redactor.redact("postgres://app:s3cr3t@db.internal:5432/main")
    assert out.startswith("postgres://app:[REDACTED:url_password:")
    assert out.endswith("@db.internal:5432/main")


def test_bearer_keeps_the_scheme(redactor: Redactor) -> None:
    out = redactor.redact("Authorization: Bearer abc123def456ghi")
    assert out.startswith("Authorization: Bearer [REDACTED:")


def test_marker_format_and_correlation(redactor: Redactor) -> None:
    a = redactor.redact("card 4111 1111 1111 1111")
    b = redactor.redact("card 4111-1111-1111-1111")  # same card, other separators
    c = redactor.redact("card 5555 5555 5555 4444")
    assert MARKER.search(a) and a == b
    assert a != c
    other = Redactor(b"another-salt-0123456789")
    assert other.redact("card 4111 1111 1111 1111") != a


def test_emails_correlate_case_insensitively(redactor: Redactor) -> None:
    assert redactor.redact("Alice@Example.com") == redactor.redact("alice@example.com")


@pytest.mark.parametrize(
    "text",
    [
        "ORD-1234567",
        "order ORD-4155552671 shipped",
        "invoice INV_20260101_0042",
        "The quick brown fox jumps over the lazy dog.",
        "refund of 1500000 cents approved",
        "created 2026-01-01T12:00:00Z, updated 2026-01-02 08:30:00",
        "version 1.2.3-rc.4 build 20260101",
        "order id 1234567812345678",  # 16 digits, not Luhn-valid
        "tracking 1Z999AA10123456784",
        "IBAN-like DE00 1234 5678 9012 3456 78 with a bad checksum",
        "ssn-like 000-12-3456 is not assignable",
        "max_tokens=512 and token_count: 42",
        "uuid 123e4567-e89b-12d3-a456-426614174000",
        "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        "https://example.com/path?page=2&sort=asc",
        "ratio 3.14159265 and 2.71828182",
        "",
        "short",
    ],
)
def test_no_false_positives(redactor: Redactor, text: str) -> None:
    assert redactor.redact(text) == text
    assert redactor.findings(text) == []


def test_assignments_inside_values(redactor: Redactor) -> None:
    out = redactor.redact("A= password=hunter22; x:token=abc")
    assert "hunter22" not in out and "abc" not in out
    assert kinds_in(out) == ["secret", "secret"]


def test_dict_keys_kept_values_redacted(redactor: Redactor) -> None:
    value = {
        "password": "hunter2",
        "apiKey": "abc",
        "X-Api-Key": "abc",
        "Authorization": "Basic dXNlcjpwYXNz",
        "refresh_token": "r1",
        "pin": 1234,
        "token_count": 5,
        "max_tokens": 100,
        "password_expires": "2026-01-01",
        "user": "bob",
        "empty_secret": "",
        "secret_null": None,
        "nested": {"credentials": {"user": "bob", "otp": ["123", "456"]}},
    }
    out = redactor.redact(value)
    assert list(out) == list(value)
    for key in ("password", "apiKey", "X-Api-Key", "Authorization", "refresh_token", "pin"):
        assert kinds_in(out[key]) == ["secret"], key
    assert out["token_count"] == 5
    assert out["max_tokens"] == 100
    assert out["password_expires"] == "2026-01-01"
    assert out["user"] == "bob"
    assert out["empty_secret"] == ""
    assert out["secret_null"] is None
    creds = out["nested"]["credentials"]
    assert kinds_in(creds["user"]) == ["secret"]
    assert all(kinds_in(v) == ["secret"] for v in creds["otp"])


def test_nested_lists_and_tuples(redactor: Redactor) -> None:
    value = {"to": ["a@example.com", "b@example.com"], "pair": ("ok", "c@example.com"), "n": 3}
    out = redactor.redact(value)
    assert kinds_in(out["to"][0]) == ["email"]
    assert isinstance(out["pair"], tuple)
    assert out["pair"][0] == "ok"
    assert redactor.findings(value) == ["email"]


def test_cards_next_to_other_numbers(redactor: Redactor) -> None:
    out = redactor.redact("0 4111 1111 1111 1111 0")
    assert out.startswith("0 [REDACTED:card:") and out.endswith("] 0")
    assert redactor.redact("id 41111111111111110000") == "id 41111111111111110000"  # 20 digits
    many = " ".join(str(n) for n in range(2000))
    assert redactor.findings(many) == []


def test_card_number_sent_as_json_number(redactor: Redactor) -> None:
    out = redactor.redact({"card": 4111111111111111, "qty": 1234567890123456})
    assert kinds_in(out["card"]) == ["card"]
    assert out["qty"] == 1234567890123456  # not Luhn-valid


def test_clean_value_is_returned_unchanged_and_input_not_mutated(redactor: Redactor) -> None:
    clean = {"customer": "Alice Martin", "items": [{"sku": "A-1", "qty": 2}], "ok": True}
    assert redactor.redact(clean) is clean
    dirty = {"email": "bob@example.com", "items": ["x"]}
    snapshot = {"email": "bob@example.com", "items": ["x"]}
    out = redactor.redact(dirty)
    assert dirty == snapshot
    assert out is not dirty
    assert out["items"] == ["x"]


def test_findings_order_and_uniqueness(redactor: Redactor) -> None:
    value = ["a@example.com", "4111 1111 1111 1111", "b@example.com", {"password": "x"}]
    assert redactor.findings(value) == ["email", "card", "secret"]


def test_deep_nesting_fails_closed_without_recursion_error(redactor: Redactor) -> None:
    value: Any = "bob@example.com"
    for _ in range(5000):
        value = [value]
    out = redactor.redact(value)
    depth = 0
    while isinstance(out, list):
        out = out[0]
        depth += 1
    assert kinds_in(out) == ["too_deep"]
    assert depth == 100
    assert redactor.findings(value) == ["too_deep"]


def test_redaction_is_idempotent_on_markers(redactor: Redactor) -> None:
    once = redactor.redact({"a": "mail bob@example.com, call +1 415-555-2671", "password": "x"})
    assert redactor.redact(once) == once
    assert redactor.findings(once) == []


def test_salt_and_region_are_validated() -> None:
    with pytest.raises(ConfigError):
        Redactor(b"short")
    with pytest.raises(ConfigError):
        Redactor(SALT, region="XX")
    german = Redactor(SALT, region="DE")
    assert kinds_in(german.redact("Tel. 030 12345678")) == ["phone"]


CASES_IN_CONTEXT = st.sampled_from([(c[0], c[1]) for c in CASES if c[2] != "phone"])
FILLER = st.text(alphabet=st.characters(codec="utf-8"), max_size=30)


@settings(max_examples=200, deadline=None)
@given(before=FILLER, case=CASES_IN_CONTEXT, after=FILLER)
def test_secret_never_survives_in_any_context(
    redactor: Redactor, before: str, case: tuple[str, str], after: str
) -> None:
    sample, secret = case
    text = f"{before} {sample} {after}"
    out = redactor.redact({"field": text})["field"]
    assert secret not in out
    assert redactor.redact(out) == out


@settings(max_examples=200, deadline=None)
@given(
    value=st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=40),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
        max_leaves=20,
    )
)
def test_redact_never_fails_and_is_idempotent(redactor: Redactor, value: Any) -> None:
    out = redactor.redact(value)
    assert redactor.redact(out) == out
    assert redactor.findings(out) == []
    assert (out == value) == (redactor.findings(value) == [])


def test_digests_are_keyed_so_a_guess_cannot_be_confirmed() -> None:
    import hashlib
    import os

    from keel.audit import Redactor

    one, two = Redactor(os.urandom(32)), Redactor(os.urandom(32))
    text = '{"card":"4111111111111111"}'
    assert one.digest(text) == one.digest(text)
    assert one.digest(text) != two.digest(text)
    assert one.digest(text).startswith("hmac-sha256:")
    assert hashlib.sha256(text.encode()).hexdigest() not in one.digest(text)
