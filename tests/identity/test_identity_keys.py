"""Ed25519 keys, key sets, rotation and JWK key files."""

from __future__ import annotations

import base64
import json
import os
import stat

import pytest

from keel.errors import ConfigError, UsageError
from keel.identity import (
    ALGORITHM,
    KeySet,
    PublicKey,
    SignatureVerifier,
    Signer,
    SigningKey,
    check_kid,
)

posix_only = pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")


def mode_of(path: object) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)  # type: ignore[arg-type]


# -- keys ----------------------------------------------------------------------------------------


def test_signing_key_signs_and_its_public_key_verifies():
    key = SigningKey.generate("k1")
    signature = key.sign(b"hello")
    assert len(signature) == 64
    assert key.public.verify("k1", b"hello", signature)
    assert key.verify("k1", b"hello", signature)
    assert not key.verify("k1", b"hello!", signature)
    assert not key.verify("k2", b"hello", signature)
    assert not key.verify("K1", b"hello", signature)
    assert not key.public.verify_signature(b"hello", signature[:-1])
    assert not key.public.verify_signature(b"hello", b"\x00" * 64)
    assert key.algorithm == ALGORITHM == "EdDSA"
    assert key.public.algorithm == "EdDSA"


def test_generated_kid_is_the_rfc_7638_thumbprint():
    key = SigningKey.generate()
    assert key.kid == key.public.thumbprint
    assert len(key.kid) == 43
    assert SigningKey.generate().kid != key.kid


def test_rfc_8037_test_vector():
    # RFC 8037 appendix A: the example Ed25519 key, its public part, thumbprint and signature.
    d = b64decode("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A")
    key = SigningKey.from_bytes("rfc8037", d)
    assert key.to_jwk()["x"] == "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
    assert key.public.thumbprint == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
    signature = key.sign(b"eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc")
    assert signature == b64decode(
        "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"
    )


def b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def test_repr_never_shows_private_parts():
    key = SigningKey.generate("k1")
    keyset = KeySet([key], active="k1")
    d = key.to_jwk()["d"]
    assert d not in repr(key)
    assert d not in repr(keyset)
    assert repr(key) == "SigningKey(kid='k1')"


@pytest.mark.parametrize("kid", ["", "a" * 129, "k 1", "k/1", "k\n1", "ｋ1", None, 3])
def test_invalid_key_ids_are_refused(kid):
    with pytest.raises(UsageError):
        check_kid(kid)
    if kid is not None:  # None asks generate() for the thumbprint
        with pytest.raises(UsageError):
            SigningKey.generate(kid)


def test_wrong_key_sizes_are_refused():
    with pytest.raises(UsageError):
        SigningKey.from_bytes("k1", b"\x00" * 31)
    with pytest.raises(UsageError):
        PublicKey.from_bytes("k1", b"\x00" * 33)


def test_public_keys_compare_by_kid_and_bytes():
    key = SigningKey.generate("k1")
    same = PublicKey.from_bytes("k1", key.public.raw)
    assert same == key.public
    assert hash(same) == hash(key.public)
    assert PublicKey.from_bytes("k2", key.public.raw) != key.public


# -- key sets ------------------------------------------------------------------------------------


def test_keyset_is_a_duck_typed_signer_and_verifier():
    keyset = KeySet.generate("k1")
    assert isinstance(keyset, Signer)
    assert isinstance(keyset, SignatureVerifier)
    assert isinstance(keyset.active, Signer)
    assert isinstance(keyset.active.public, SignatureVerifier)
    assert keyset.key_id == "k1"
    signature = keyset.sign(b"checkpoint")
    assert keyset.verify("k1", b"checkpoint", signature)
    assert keyset.active.public.verify(keyset.key_id, b"checkpoint", signature)
    assert not keyset.verify("k2", b"checkpoint", signature)
    assert not keyset.verify("k1", b"checkpoint", b"short")


def test_rotation_and_retirement():
    keyset = KeySet.generate("k1")
    signed_old = keyset.sign(b"data")
    new = keyset.rotate("k2")
    assert keyset.key_id == "k2" == new.kid
    assert keyset.kids == ("k1", "k2")
    assert keyset.verify("k1", b"data", signed_old)
    assert keyset.verify("k2", b"data", keyset.sign(b"data"))
    version = keyset.version
    keyset.retire("k1")
    assert keyset.version > version
    assert keyset.kids == ("k2",)
    assert not keyset.verify("k1", b"data", signed_old)
    assert keyset.public_key("k1") is None
    assert "k1" not in keyset
    assert len(keyset) == 1


def test_the_active_key_cannot_be_retired():
    keyset = KeySet.generate("k1")
    with pytest.raises(UsageError) as info:
        keyset.retire("k1")
    assert info.value.code == "retire_active_key"
    with pytest.raises(UsageError):
        keyset.retire("nope")


def test_rotate_to_an_existing_kid_is_refused():
    keyset = KeySet.generate("k1")
    with pytest.raises(UsageError):
        keyset.rotate("k1")


def test_public_key_lookup_is_exact():
    keyset = KeySet.generate("k1")
    assert keyset.public_key("k1") is not None
    for kid in ["K1", "k1 ", "./k1", "k1\x00", "ｋ1", ""]:
        assert keyset.public_key(kid) is None
    assert keyset.public_key(1) is None  # type: ignore[arg-type]


def test_add_a_foreign_public_key():
    keyset = KeySet.generate("k1")
    other = SigningKey.generate("partner")
    keyset.add(other.public)
    assert keyset.verify("partner", b"x", other.sign(b"x"))
    with pytest.raises(UsageError):
        keyset.add(other.public)


def test_public_only_keyset_verifies_but_cannot_sign():
    keyset = KeySet.generate("k1")
    public = keyset.public_only()
    assert not public.has_signing_key
    assert public.verify("k1", b"x", keyset.sign(b"x"))
    with pytest.raises(UsageError) as info:
        public.sign(b"x")
    assert info.value.code == "no_signing_key"


def test_keyset_construction_checks():
    key = SigningKey.generate("k1")
    with pytest.raises(UsageError):
        KeySet([key, key.public])
    with pytest.raises(UsageError):
        KeySet([key.public], active="k1")


# -- files ---------------------------------------------------------------------------------------


@posix_only
def test_save_and_load_round_trip_with_private_file_mode(tmp_path):
    keyset = KeySet.generate("k1")
    keyset.rotate("k2")
    path = tmp_path / "keys.json"
    keyset.save(path)
    assert mode_of(path) == 0o600
    document = json.loads(path.read_text())
    assert document["active"] == "k2"
    assert [k["kid"] for k in document["keys"]] == ["k1", "k2"]
    for jwk in document["keys"]:
        assert jwk["kty"] == "OKP"
        assert jwk["crv"] == "Ed25519"
        assert jwk["alg"] == "EdDSA"
        assert "d" in jwk
    loaded = KeySet.load(path)
    assert loaded.key_id == "k2"
    assert loaded.kids == ("k1", "k2")
    assert loaded.to_jwks() == keyset.to_jwks()
    old = next(k for k in loaded.to_jwks()["keys"] if k["kid"] == "k1")
    signature = SigningKey.from_bytes("k1", b64decode(old["d"])).sign(b"x")
    assert keyset.verify("k1", b"x", signature)


@posix_only
def test_save_replaces_a_loose_file_with_a_private_one(tmp_path):
    path = tmp_path / "keys.json"
    path.write_text("{}")
    path.chmod(0o644)
    KeySet.generate("k1").save(path)
    assert mode_of(path) == 0o600


@posix_only
def test_public_save_has_no_private_parts(tmp_path):
    path = tmp_path / "public.json"
    KeySet.generate("k1").save(path, include_private=False)
    document = json.loads(path.read_text())
    assert "active" not in document
    assert all("d" not in jwk for jwk in document["keys"])
    assert mode_of(path) == 0o644
    assert not KeySet.load(path).has_signing_key


@posix_only
def test_load_refuses_a_private_key_file_readable_by_others(tmp_path):
    path = tmp_path / "keys.json"
    KeySet.generate("k1").save(path)
    path.chmod(0o644)
    with pytest.raises(ConfigError) as info:
        KeySet.load(path)
    assert "chmod 600" in info.value.message


@posix_only
def test_load_or_create_creates_once_then_loads(tmp_path):
    path = tmp_path / "keys.json"
    first = KeySet.load_or_create(path)
    assert mode_of(path) == 0o600
    second = KeySet.load_or_create(path)
    assert second.key_id == first.key_id
    assert second.verify(first.key_id, b"x", first.sign(b"x"))
    assert [p.name for p in tmp_path.iterdir()] == ["keys.json"]


def _jwks(**jwk_overrides: object) -> dict[str, object]:
    jwk: dict[str, object] = SigningKey.generate("k1").to_jwk()  # type: ignore[assignment]
    jwk.update(jwk_overrides)
    return {"keys": [jwk], "active": "k1"}


@pytest.mark.parametrize(
    ("document", "key"),
    [
        ([], None),
        ({"keys": {}}, "keys"),
        ({"keys": [], "extra": 1}, "extra"),
        ({"keys": [], "active": 3}, "active"),
        ({"keys": [], "active": "k1"}, "keys"),
        ({"keys": ["x"]}, "keys[0]"),
        (_jwks(kty="RSA"), "keys[0].kty"),
        (_jwks(kty="oct", k="c2VjcmV0"), "keys[0].kty"),
        (_jwks(crv="X25519"), "keys[0].crv"),
        (_jwks(alg="HS256"), "keys[0].alg"),
        (_jwks(use="enc"), "keys[0].use"),
        (_jwks(kid="bad kid"), "keys[0].kid"),
        (_jwks(x="AAAA"), "keys[0].x"),
        (_jwks(x=None), "keys[0].x"),
        (_jwks(d="AAAA="), "keys[0].d"),
        (_jwks(x=SigningKey.generate().to_jwk()["x"]), "keys[0].d"),
    ],
)
def test_malformed_key_documents_are_config_errors(document, key):
    with pytest.raises(ConfigError) as info:
        KeySet.from_jwks(document, source="keys.json")
    assert "keys.json" in info.value.message
    if key is not None:
        assert info.value.context["key"] == key


def test_duplicate_kids_in_a_file_are_refused():
    a, b = SigningKey.generate("k1"), SigningKey.generate("k1")
    with pytest.raises(ConfigError):
        KeySet.from_jwks({"keys": [a.to_jwk(), b.to_jwk()]})


@posix_only
@pytest.mark.parametrize(
    "text",
    ["not json", '{"keys": [], "keys": []}', '{"keys": [{"kty": "OKP", "kty": "RSA"}]}'],
)
def test_malformed_key_files_are_config_errors(tmp_path, text):
    path = tmp_path / "keys.json"
    path.write_text(text)
    path.chmod(0o600)
    with pytest.raises(ConfigError) as info:
        KeySet.load(path)
    assert info.value.context["file"] == str(path)


def test_missing_key_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError):
        KeySet.load(tmp_path / "nope.json")


def test_saving_into_a_missing_folder_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError):
        KeySet.generate("k1").save(tmp_path / "missing" / "keys.json")
    with pytest.raises(ConfigError):
        KeySet.load_or_create(tmp_path / "missing" / "keys.json")
