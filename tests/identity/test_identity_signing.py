"""Request signing: what the signature covers, the time window, and replay across restarts."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest

from keel.errors import AuthenticationError, UsageError
from keel.identity import (
    HEADER_DIGEST,
    HEADER_KEY_ID,
    HEADER_NONCE,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    KeySet,
    RequestVerifier,
    SigningKey,
    content_digest,
    sign_request,
)
from keel.store import Store, open_store
from keel.testing import FrozenClock

BODY = b'{"tool": "billing.refund", "arguments": {"amount": "10.00"}}'
TARGET = "/v1/tools/call?dry_run=0"
NONCE = "n0nce-0123456789abcdef"


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    with open_store(store_url) as opened:
        yield opened


@pytest.fixture
def key(keyset: KeySet) -> SigningKey:
    return keyset.active


@pytest.fixture
def request_verifier(keyset, store, clock) -> RequestVerifier:
    return RequestVerifier(keyset, store, clock)


def sign(key: SigningKey, clock: FrozenClock, **overrides: object) -> dict[str, str]:
    args: dict[str, object] = {
        "method": "POST",
        "target": TARGET,
        "body": BODY,
        "timestamp": clock.now(),
        "nonce": NONCE,
    }
    args.update(overrides)
    return sign_request(key, **args)  # type: ignore[arg-type]


def refused(verifier: RequestVerifier, code: str, *args: object) -> AuthenticationError:
    with pytest.raises(AuthenticationError) as info:
        verifier.verify(*args)  # type: ignore[arg-type]
    assert info.value.code == code, info.value.message
    return info.value


def nonce_rows(store: Store) -> int:
    with store.read() as tx:
        row = tx.fetchone("SELECT COUNT(*) FROM request_nonces")
    assert row is not None
    return int(row[0])


def test_signed_request_verifies(key, request_verifier, clock):
    headers = sign(key, clock)
    assert set(headers) == {
        HEADER_KEY_ID,
        HEADER_TIMESTAMP,
        HEADER_NONCE,
        HEADER_DIGEST,
        HEADER_SIGNATURE,
    }
    assert headers[HEADER_DIGEST] == content_digest(BODY)
    assert headers[HEADER_DIGEST].startswith("sha-256=:")
    result = request_verifier.verify("POST", TARGET, headers, BODY)
    assert result.key_id == "k1"
    assert result.nonce == NONCE
    assert result.timestamp == clock.now()


def test_default_nonce_is_random(key, clock):
    first = sign_request(key, "GET", "/", b"", clock.now())
    second = sign_request(key, "GET", "/", b"", clock.now())
    assert first[HEADER_NONCE] != second[HEADER_NONCE]


def test_header_names_are_case_insensitive(key, request_verifier, clock):
    headers = {name.lower(): value for name, value in sign(key, clock).items()}
    headers["x-other"] = "ignored"
    assert request_verifier.verify("POST", TARGET, headers, BODY).key_id == "k1"


def test_body_swapped_after_signing_is_refused(key, request_verifier, clock):
    headers = sign(key, clock)
    swapped = BODY.replace(b"10.00", b"10000.00")
    refused(request_verifier, "request_digest", "POST", TARGET, headers, swapped)


def test_reserialized_json_body_is_refused(key, request_verifier, clock):
    headers = sign(key, clock)
    reformatted = b'{"tool":"billing.refund","arguments":{"amount":"10.00"}}'
    refused(request_verifier, "request_digest", "POST", TARGET, headers, reformatted)


def test_body_and_digest_swapped_together_is_refused(key, request_verifier, clock):
    headers = sign(key, clock)
    swapped = BODY.replace(b"10.00", b"10000.00")
    headers[HEADER_DIGEST] = content_digest(swapped)
    refused(request_verifier, "request_bad_signature", "POST", TARGET, headers, swapped)


@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("PUT", TARGET),
        ("post", TARGET),
        ("POST", "/v1/tools/call?dry_run=1"),
        ("POST", "/v1/tools/call"),
        ("POST", TARGET + "&admin=1"),
        ("POST", "/v1/admin/call?dry_run=0"),
    ],
)
def test_method_or_target_changed_is_refused(key, request_verifier, clock, method, target):
    headers = sign(key, clock)
    refused(request_verifier, "request_bad_signature", method, target, headers, BODY)


@pytest.mark.parametrize(
    ("header", "value"),
    [(HEADER_TIMESTAMP, None), (HEADER_NONCE, "n0nce-0123456789abcdeX")],
)
def test_signed_headers_changed_are_refused(key, request_verifier, clock, header, value):
    headers = sign(key, clock)
    headers[header] = value if value is not None else str(int(headers[header]) + 1)
    refused(request_verifier, "request_bad_signature", "POST", TARGET, headers, BODY)


def test_signature_by_another_key_with_the_same_id_is_refused(request_verifier, clock):
    impostor = SigningKey.generate("k1")
    headers = sign(impostor, clock)
    refused(request_verifier, "request_bad_signature", "POST", TARGET, headers, BODY)


@pytest.mark.parametrize("kid", ["k2", "K1", "../k1", "k1' OR 1=1 --"])
def test_unknown_key_is_refused(key, request_verifier, clock, kid):
    headers = sign(key, clock)
    headers[HEADER_KEY_ID] = kid
    refused(request_verifier, "request_unknown_key", "POST", TARGET, headers, BODY)


@pytest.mark.parametrize("seconds", [-301, 301, 3600, -86400])
def test_timestamp_outside_the_window_is_refused(key, request_verifier, clock, seconds):
    headers = sign(key, clock, timestamp=clock.now() + dt.timedelta(seconds=seconds))
    refused(request_verifier, "request_timestamp", "POST", TARGET, headers, BODY)


@pytest.mark.parametrize("seconds", [-300, -30, 30, 300])
def test_timestamp_inside_the_window_is_accepted(key, request_verifier, clock, seconds):
    headers = sign(key, clock, timestamp=clock.now() + dt.timedelta(seconds=seconds))
    assert request_verifier.verify("POST", TARGET, headers, BODY).key_id == "k1"


@pytest.mark.parametrize(
    "missing", [HEADER_KEY_ID, HEADER_TIMESTAMP, HEADER_NONCE, HEADER_DIGEST, HEADER_SIGNATURE]
)
def test_missing_header_is_refused(key, request_verifier, clock, missing):
    headers = sign(key, clock)
    del headers[missing]
    error = refused(request_verifier, "request_signature_missing", "POST", TARGET, headers, BODY)
    assert missing in error.message


@pytest.mark.parametrize(
    ("header", "value"),
    [
        (HEADER_TIMESTAMP, "1767225600.5"),
        (HEADER_TIMESTAMP, "-5"),
        (HEADER_TIMESTAMP, "soon"),
        (HEADER_TIMESTAMP, "9" * 40),
        (HEADER_NONCE, "short"),
        (HEADER_NONCE, "has space in it 0123456789"),
        (HEADER_SIGNATURE, "not base64!"),
        (HEADER_SIGNATURE, "a\nb"),
        (HEADER_KEY_ID, "k1\r\nX-Injected: 1"),
    ],
)
def test_malformed_headers_are_refused(key, request_verifier, clock, header, value):
    headers = sign(key, clock)
    headers[header] = value
    refused(request_verifier, "request_malformed", "POST", TARGET, headers, BODY)


def test_conflicting_duplicate_headers_are_refused(key, request_verifier, clock):
    headers = sign(key, clock)
    headers["keel-nonce"] = "another-nonce-0123456789"
    refused(request_verifier, "request_malformed", "POST", TARGET, headers, BODY)


def test_malformed_digest_is_refused(key, request_verifier, clock):
    headers = sign(key, clock)
    headers[HEADER_DIGEST] = "sha-512=:AAAA:"
    refused(request_verifier, "request_digest", "POST", TARGET, headers, BODY)


def test_malformed_target_is_refused(key, request_verifier, clock):
    headers = sign(key, clock)
    refused(request_verifier, "request_malformed", "POST", "/a b", headers, BODY)
    refused(request_verifier, "request_malformed", "POST", "http://x/a", headers, BODY)


# -- replay --------------------------------------------------------------------------------------


def test_replayed_nonce_is_refused(key, request_verifier, clock):
    headers = sign(key, clock)
    request_verifier.verify("POST", TARGET, headers, BODY)
    clock.advance(seconds=1)
    error = refused(request_verifier, "request_replayed", "POST", TARGET, headers, BODY)
    assert NONCE in error.message


def test_nonce_reused_in_a_new_signed_request_is_refused(key, request_verifier, clock):
    request_verifier.verify("POST", TARGET, sign(key, clock), BODY)
    clock.advance(seconds=10)
    again = sign(key, clock, body=b"{}")  # freshly signed, same nonce
    refused(request_verifier, "request_replayed", "POST", TARGET, again, b"{}")


def test_replay_is_refused_after_the_store_is_reopened(keyset, store_url, clock):
    url = store_url
    headers = sign(keyset.active, clock)
    with open_store(url) as store:
        RequestVerifier(keyset, store, clock).verify("POST", TARGET, headers, BODY)
    clock.advance(seconds=5)
    with open_store(url) as reopened:
        restarted = RequestVerifier(keyset, reopened, clock)
        refused(restarted, "request_replayed", "POST", TARGET, headers, BODY)


def test_replay_after_the_window_is_refused_by_the_timestamp(key, request_verifier, clock):
    headers = sign(key, clock)
    request_verifier.verify("POST", TARGET, headers, BODY)
    clock.advance(seconds=301)
    refused(request_verifier, "request_timestamp", "POST", TARGET, headers, BODY)


def test_expired_nonces_are_pruned(key, request_verifier, store, clock):
    request_verifier.verify("POST", TARGET, sign(key, clock), BODY)
    request_verifier.verify("POST", TARGET, sign(key, clock, nonce="other-nonce-0123456789"), BODY)
    assert nonce_rows(store) == 2
    clock.advance(seconds=300)
    assert request_verifier.prune() == 0  # a request signed at t0 still passes until t0 + 300 s
    clock.advance(seconds=1)
    assert request_verifier.prune() == 2
    assert nonce_rows(store) == 0


def test_verify_prunes_expired_nonces_periodically(key, request_verifier, store, clock):
    request_verifier.verify("POST", TARGET, sign(key, clock), BODY)
    clock.advance(seconds=400)
    fresh = sign(key, clock, nonce="fresh-nonce-0123456789")
    request_verifier.verify("POST", TARGET, fresh, BODY)
    assert nonce_rows(store) == 1


def test_nonce_may_be_reused_once_its_request_expired(keyset, store, clock):
    verifier = RequestVerifier(keyset, store, clock, prune_interval=dt.timedelta(hours=1))
    verifier.verify("POST", TARGET, sign(keyset.active, clock), BODY)
    clock.advance(seconds=301)  # the first request is now outside the window; no bulk prune yet
    assert nonce_rows(store) == 1
    assert verifier.verify("POST", TARGET, sign(keyset.active, clock), BODY).nonce == NONCE
    assert nonce_rows(store) == 1


def test_nonces_are_scoped_per_key(keyset, store, clock):
    other = SigningKey.generate("partner")
    keyset.add(other.public)
    verifier = RequestVerifier(keyset, store, clock)
    verifier.verify("POST", TARGET, sign(keyset.active, clock), BODY)
    assert verifier.verify("POST", TARGET, sign(other, clock), BODY).key_id == "partner"


def test_a_failed_check_does_not_consume_the_nonce(key, request_verifier, clock):
    headers = sign(key, clock)
    refused(request_verifier, "request_digest", "POST", TARGET, headers, b"tampered")
    assert request_verifier.verify("POST", TARGET, headers, BODY).nonce == NONCE


# -- keys and arguments --------------------------------------------------------------------------


def test_verifier_accepts_a_mapping_of_public_keys(key, store, clock):
    verifier = RequestVerifier({key.kid: key.public}, store, clock)
    assert verifier.verify("POST", TARGET, sign(key, clock), BODY).key_id == "k1"


def test_mapping_with_a_mismatched_key_id_is_refused(key, store, clock):
    with pytest.raises(UsageError):
        RequestVerifier({"other": key.public}, store, clock)


def test_window_must_be_positive(keyset, store):
    with pytest.raises(UsageError):
        RequestVerifier(keyset, store, window=dt.timedelta(0))


def test_rotation_retired_key_is_refused(keyset, request_verifier, clock):
    old = keyset.active
    headers = sign(old, clock)
    keyset.rotate("k2")
    keyset.retire("k1")
    refused(request_verifier, "request_unknown_key", "POST", TARGET, headers, BODY)


@pytest.mark.parametrize(
    "overrides",
    [
        {"method": "PO ST"},
        {"method": ""},
        {"target": "no-slash"},
        {"target": "/a b"},
        {"target": "/a\nb"},
        {"nonce": "short"},
        {"nonce": "has\nnewline-0123456789"},
        {"timestamp": dt.datetime(2026, 1, 1)},  # naive on purpose
    ],
)
def test_sign_request_refuses_bad_arguments(key, clock, overrides):
    with pytest.raises(UsageError):
        sign(key, clock, **overrides)
