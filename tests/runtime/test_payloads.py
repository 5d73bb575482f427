"""The payload store: content-addressed, compressed, encrypted where sensitive, tamper-evident."""

from __future__ import annotations

import base64
import stat
import string
import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keel.canonical import canonical_json, digest
from keel.errors import ConfigError, InvalidRequestError, KeelError, PayloadTooLargeError
from keel.runtime.payloads import (
    PayloadIntegrityError,
    PayloadNotFound,
    Payloads,
    generate_key,
    key_from_env,
    load_or_create_key,
)
from keel.store import Store, open_store
from keel.testing import FrozenClock

KEY = bytes(range(32))
OTHER_KEY = bytes(range(100, 132))
SECRET = "card 4111-1111-1111-1111 cvv 123"


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    with open_store(store_url) as s:
        yield s


@pytest.fixture
def payloads(store: Store) -> Payloads:
    return Payloads(store, key=KEY, clock=FrozenClock())


def rows(store: Store) -> list[tuple[Any, ...]]:
    with store.read() as tx:
        return tx.fetchall("SELECT digest, encoding, size, data, created_at FROM payloads")


def tamper(store: Store, ref: str, sql: str, params: tuple[Any, ...]) -> None:
    with store.write() as tx:
        assert tx.execute(sql + " WHERE digest = ?", (*params, ref)) == 1


# -- round trips and addressing --------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        None,
        0,
        "x",
        [1, 2.5, "three"],
        {"b": 1, "a": [True, None, {"é": "ü"}]},
        {"text": "lorem ipsum " * 200},
    ],
)
def test_round_trip(payloads: Payloads, value: Any) -> None:
    ref = payloads.put(value)
    assert ref == digest(value)
    assert payloads.exists(ref)
    assert payloads.get(ref) == value


def test_values_come_back_as_json_decodes_them(payloads: Payloads) -> None:
    ref = payloads.put({"amount": Decimal("12.50"), "ids": (1, 2)})
    assert payloads.get(ref) == {"amount": "12.50", "ids": [1, 2]}


def test_same_value_twice_is_one_row(payloads: Payloads, store: Store) -> None:
    first = payloads.put({"b": 2, "a": 1})
    second = payloads.put({"a": 1, "b": 2})  # key order does not matter: canonical JSON
    assert first == second
    assert len(rows(store)) == 1


def test_concurrent_puts_of_one_value_store_one_row(payloads: Payloads, store: Store) -> None:
    barrier = threading.Barrier(8)
    refs: list[str] = []

    def put() -> None:
        barrier.wait()
        refs.append(payloads.put({"shared": "x" * 1000}))

    threads = [threading.Thread(target=put) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(refs)) == 1
    assert len(rows(store)) == 1


def test_put_inside_a_callers_transaction_commits_with_it(payloads: Payloads, store: Store) -> None:
    refs: list[str] = []

    def write_then_fail() -> None:
        with store.write() as tx:
            refs.append(payloads.put({"rolled": "back"}, tx=tx))
            raise RuntimeError("abort the transaction")

    with pytest.raises(RuntimeError):
        write_then_fail()
    assert not payloads.exists(refs[0])
    with store.write() as tx:
        ref = payloads.put({"kept": True}, tx=tx)
    assert payloads.get(ref) == {"kept": True}


def test_row_records_size_and_creation_time(store: Store) -> None:
    clock = FrozenClock()
    ref = Payloads(store, clock=clock).put({"k": "v"})
    [(found, encoding, size, _data, created_at)] = rows(store)
    assert found == ref
    assert encoding == "json"
    assert size == len(canonical_json({"k": "v"}).encode())
    assert created_at == clock.now().isoformat()


def test_put_json_accepts_encoded_text(payloads: Payloads) -> None:
    text = canonical_json({"already": "encoded"})
    ref = payloads.put_json(text)
    assert ref == payloads.put({"already": "encoded"})
    assert payloads.get_json(ref) == text


def test_missing_and_malformed_references(payloads: Payloads) -> None:
    missing = "sha256:" + "0" * 64
    assert not payloads.exists(missing)
    with pytest.raises(PayloadNotFound) as info:
        payloads.get(missing)
    assert info.value.code == "payload_not_found"
    for bad in ("", "sha256:xyz", "md5:" + "0" * 32, "SHA256:" + "0" * 64):
        with pytest.raises(InvalidRequestError):
            payloads.get(bad)
        with pytest.raises(InvalidRequestError):
            payloads.exists(bad)


# -- compression -----------------------------------------------------------------------------


def test_compression_threshold(store: Store) -> None:
    payloads = Payloads(store, compress_above=100)
    small = payloads.put("a" * 50)
    large = payloads.put("a" * 500)
    encodings = {ref: (encoding, size, len(data)) for ref, encoding, size, data, _ in rows(store)}
    assert encodings[small] == ("json", 52, 52)
    encoding, size, stored = encodings[large]
    assert encoding == "json+zlib"
    assert size == 502
    assert stored < 100
    assert payloads.get(large) == "a" * 500


def test_incompressible_data_is_stored_plain(store: Store) -> None:
    payloads = Payloads(store, compress_above=16)
    noise = string.ascii_letters + string.digits  # no repeats: zlib only adds overhead
    ref = payloads.put(noise)
    [(_ref, encoding, _size, _data, _at)] = rows(store)
    assert encoding == "json"
    assert payloads.get(ref) == noise


def test_large_payload(payloads: Payloads, store: Store) -> None:
    value = {"rows": [{"i": i, "text": f"row {i} " + "x" * 40} for i in range(100_000)]}
    assert len(canonical_json(value)) > 5_000_000
    ref = payloads.put(value)
    [(_ref, encoding, size, data, _at)] = rows(store)
    assert encoding == "json+zlib"
    assert size > 5_000_000
    assert len(data) < size // 10
    assert payloads.get(ref) == value
    secret_ref = payloads.put(value, sensitive=True)
    assert payloads.get(secret_ref) == value


def test_payloads_over_the_limit_are_refused(store: Store) -> None:
    payloads = Payloads(store, max_bytes=1000)
    with pytest.raises(PayloadTooLargeError):
        payloads.put("x" * 2000)
    assert rows(store) == []


# -- sensitive payloads ----------------------------------------------------------------------


def test_sensitive_payload_is_encrypted_at_rest(payloads: Payloads, store: Store) -> None:
    value = {"secret": SECRET}
    ref = payloads.put(value, sensitive=True)
    assert ref.startswith("hmac-sha256:")
    assert ref != digest(value)  # a keyed hash: not guessable from the value alone
    [(found, encoding, _size, data, _at)] = rows(store)
    assert found == ref
    assert encoding == "json+aesgcm"
    assert b"4111" not in data
    assert b"secret" not in data
    assert payloads.get(ref) == value


def test_large_sensitive_payload_is_compressed_then_encrypted(
    payloads: Payloads, store: Store
) -> None:
    value = {"notes": [SECRET] * 100}
    ref = payloads.put(value, sensitive=True)
    [(_ref, encoding, size, data, _at)] = rows(store)
    assert encoding == "json+zlib+aesgcm"
    assert len(data) < size
    assert b"4111" not in zlib_or_raw(data)
    assert payloads.get(ref) == value


def zlib_or_raw(data: bytes) -> bytes:
    """What an attacker holding the row sees, even after trying to inflate it."""
    import zlib

    try:
        return zlib.decompress(data)
    except zlib.error:
        return data


def test_sensitive_equal_values_dedupe_but_differ_across_keys(store: Store) -> None:
    one = Payloads(store, key=KEY)
    other = Payloads(store, key=OTHER_KEY)
    assert one.put(SECRET, sensitive=True) == one.put(SECRET, sensitive=True)
    assert one.put(SECRET, sensitive=True) != other.put(SECRET, sensitive=True)
    assert len(rows(store)) == 2


def test_sensitive_without_a_key_is_refused(store: Store) -> None:
    with pytest.raises(ConfigError) as info:
        Payloads(store).put(SECRET, sensitive=True)
    assert "no payload key" in info.value.message
    assert rows(store) == []


def test_reading_with_the_wrong_key_is_a_clear_error(payloads: Payloads, store: Store) -> None:
    ref = payloads.put(SECRET, sensitive=True)
    with pytest.raises(ConfigError) as info:
        Payloads(store, key=OTHER_KEY).get(ref)
    assert info.value.code == "payload_key_unknown"
    assert "not configured" in info.value.message
    with pytest.raises(ConfigError):
        Payloads(store).get(ref)


def test_rotated_keys_keep_old_payloads_readable(payloads: Payloads, store: Store) -> None:
    old_ref = payloads.put(SECRET, sensitive=True)
    rotated = Payloads(store, key=OTHER_KEY, previous_keys=[KEY])
    assert rotated.get(old_ref) == SECRET
    new_ref = rotated.put(SECRET, sensitive=True)
    assert new_ref != old_ref
    assert rotated.get(new_ref) == SECRET


def test_keys_must_be_32_bytes(store: Store) -> None:
    with pytest.raises(ConfigError):
        Payloads(store, key=b"short")
    with pytest.raises(ConfigError):
        Payloads(store, key=KEY, previous_keys=[b"x" * 31])


# -- tampering -------------------------------------------------------------------------------


def test_tampered_plain_row_is_detected(payloads: Payloads, store: Store) -> None:
    ref = payloads.put({"amount": 10})
    tamper(store, ref, "UPDATE payloads SET data = ?", (b'{"amount":99}',))
    with pytest.raises(PayloadIntegrityError) as info:
        payloads.get(ref)
    assert info.value.code == "payload_integrity"


def test_tampered_compressed_row_is_detected(payloads: Payloads, store: Store) -> None:
    import zlib

    ref = payloads.put({"text": "a" * 1000})
    forged = zlib.compress(canonical_json({"text": "b" * 1000}).encode())
    tamper(store, ref, "UPDATE payloads SET data = ?", (forged,))
    with pytest.raises(PayloadIntegrityError):
        payloads.get(ref)
    tamper(store, ref, "UPDATE payloads SET data = ?", (b"not zlib at all",))
    with pytest.raises(PayloadIntegrityError):
        payloads.get(ref)


def test_decompression_bomb_with_a_lying_size_is_refused(payloads: Payloads, store: Store) -> None:
    import zlib

    ref = payloads.put({"text": "a" * 1000})
    bomb = zlib.compress(b"a" * 50_000_000)
    tamper(store, ref, "UPDATE payloads SET data = ?", (bomb,))
    with pytest.raises(PayloadIntegrityError):
        payloads.get(ref)


def test_tampered_encrypted_row_is_detected(payloads: Payloads, store: Store) -> None:
    ref = payloads.put(SECRET, sensitive=True)
    [(_ref, _enc, _size, data, _at)] = rows(store)
    flipped = bytearray(data)
    flipped[-1] ^= 0x01
    tamper(store, ref, "UPDATE payloads SET data = ?", (bytes(flipped),))
    with pytest.raises(PayloadIntegrityError):
        payloads.get(ref)
    tamper(store, ref, "UPDATE payloads SET data = ?", (data[:10],))
    with pytest.raises(PayloadIntegrityError):
        payloads.get(ref)


def test_encrypted_row_moved_under_another_reference_is_detected(
    payloads: Payloads, store: Store
) -> None:
    a = payloads.put("approve refund 10", sensitive=True)
    b = payloads.put("approve refund 9999", sensitive=True)
    with store.read() as tx:
        row = tx.fetchone("SELECT data FROM payloads WHERE digest = ?", (b,))
    assert row is not None
    tamper(store, a, "UPDATE payloads SET data = ?", (row[0],))
    with pytest.raises(PayloadIntegrityError):
        payloads.get(a)


def test_tampered_encoding_or_size_is_detected(payloads: Payloads, store: Store) -> None:
    plain = payloads.put({"text": "a" * 1000})
    tamper(store, plain, "UPDATE payloads SET encoding = ?", ("json",))
    with pytest.raises(PayloadIntegrityError):
        payloads.get(plain)
    tamper(store, plain, "UPDATE payloads SET encoding = ?", ("json+zlib",))
    tamper(store, plain, "UPDATE payloads SET size = size + 1", ())
    with pytest.raises(PayloadIntegrityError):
        payloads.get(plain)
    secret = payloads.put(SECRET, sensitive=True)
    tamper(store, secret, "UPDATE payloads SET encoding = ?", ("json",))
    with pytest.raises(PayloadIntegrityError):
        payloads.get(secret)
    tamper(store, secret, "UPDATE payloads SET encoding = ?", ("yaml",))
    with pytest.raises(PayloadIntegrityError):
        payloads.get(secret)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=30,
)


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    value=json_values,
    position=st.integers(min_value=0),
    bit=st.integers(0, 7),
    secret=st.booleans(),
)
def test_any_flipped_bit_is_detected_never_wrong_data(
    payloads: Payloads,
    store: Store,
    value: Any,
    position: int,
    bit: int,
    secret: bool,
) -> None:
    ref = payloads.put(value, sensitive=secret)
    with store.read() as tx:
        row = tx.fetchone("SELECT data FROM payloads WHERE digest = ?", (ref,))
    assert row is not None
    original = bytes(row[0])
    flipped = bytearray(original)
    flipped[position % len(flipped)] ^= 1 << bit
    tamper(store, ref, "UPDATE payloads SET data = ?", (bytes(flipped),))
    try:
        with pytest.raises(KeelError) as info:
            payloads.get(ref)
        assert isinstance(info.value, PayloadIntegrityError | ConfigError)
    finally:
        tamper(store, ref, "UPDATE payloads SET data = ?", (original,))


# -- keys ------------------------------------------------------------------------------------


def test_key_file_is_created_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "payload.key"
    key = load_or_create_key(path)
    assert len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_key(path) == key
    assert [p.name for p in tmp_path.iterdir()] == ["payload.key"]


def test_key_file_created_by_racing_threads_is_one_key(tmp_path: Path) -> None:
    path = tmp_path / "payload.key"
    barrier = threading.Barrier(8)
    keys: list[bytes] = []

    def load() -> None:
        barrier.wait()
        keys.append(load_or_create_key(path))

    threads = [threading.Thread(target=load) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(keys)) == 1


def test_bad_key_files_are_refused(tmp_path: Path) -> None:
    short = tmp_path / "short.key"
    short.write_bytes(b"x" * 10)
    short.chmod(0o600)
    with pytest.raises(ConfigError, match="holds 10 bytes"):
        load_or_create_key(short)
    shared = tmp_path / "shared.key"
    shared.write_bytes(generate_key())
    shared.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_or_create_key(shared)
    with pytest.raises(ConfigError, match="folder does not exist"):
        load_or_create_key(tmp_path / "missing" / "p.key")


def test_key_from_env() -> None:
    key = generate_key()
    assert key_from_env(environ={}) is None
    assert key_from_env(environ={"KEEL_PAYLOAD_KEY": ""}) is None
    assert key_from_env(environ={"KEEL_PAYLOAD_KEY": key.hex()}) == key
    assert key_from_env(environ={"KEEL_PAYLOAD_KEY": base64.b64encode(key).decode()}) == key
    urlsafe = base64.urlsafe_b64encode(key).decode().rstrip("=")
    assert key_from_env(environ={"KEEL_PAYLOAD_KEY": urlsafe}) == key
    assert key_from_env("MY_KEY", environ={"MY_KEY": key.hex()}) == key
    for bad in ("not a key", key.hex()[:-2], base64.b64encode(key[:16]).decode()):
        with pytest.raises(ConfigError) as info:
            key_from_env(environ={"KEEL_PAYLOAD_KEY": bad})
        assert bad not in info.value.message


def test_env_and_file_keys_read_each_others_payloads(tmp_path: Path, store: Store) -> None:
    key = load_or_create_key(tmp_path / "payload.key")
    ref = Payloads(store, key=key).put(SECRET, sensitive=True)
    from_env = key_from_env(environ={"KEEL_PAYLOAD_KEY": key.hex()})
    assert Payloads(store, key=from_env).get(ref) == SECRET
