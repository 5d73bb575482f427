"""The secret store on SQLite and PostgreSQL: sealed at rest, tamper-evident, never shown.

(This folder is not called ``secrets``: as a test package it would shadow the standard library's
``secrets`` module.)
"""

from __future__ import annotations

import base64
import os
import pickle
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from keel.errors import ConfigError, SecretNotFound
from keel.secrets import (
    MASTER_KEY_ENV,
    Secret,
    SecretInfo,
    SecretRef,
    SecretStore,
    default_key_path,
    parse_ref,
)
from keel.store import Store, open_store

VALUE = "sk-live-0123456789abcdef"


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    with open_store(store_url) as opened:
        yield opened


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def secrets(store: Store, home: Path) -> SecretStore:
    return SecretStore(store, default_key_path(home), environ={})


def sealed_row(store: Store, name: str) -> tuple[bytes, str]:
    row = store.read_one("SELECT sealed, key_id FROM secrets WHERE name = ?", (name,))
    assert row is not None
    return bytes(row[0]), str(row[1])


def test_put_get_list_delete(secrets: SecretStore, store: Store, home: Path) -> None:
    assert secrets.names() == []
    assert not (home / "master.key").exists()  # made on the first put, not before
    info = secrets.put("crm_token", VALUE, actor="ana")
    assert info.name == "crm_token" and info.updated_by == "ana"
    assert secrets.get("crm_token") == VALUE
    assert secrets.resolve("store:crm_token") == VALUE
    secrets.put("crm_token", VALUE + "-2", actor="ben")
    secrets.put("billing.api-key", "other", actor="ana")
    assert secrets.get("crm_token") == VALUE + "-2"
    assert [(i.name, i.updated_by) for i in secrets.names()] == [
        ("billing.api-key", "ana"),
        ("crm_token", "ben"),
    ]
    assert all(isinstance(i, SecretInfo) for i in secrets.names())
    secrets.delete("crm_token", actor="ana")
    with pytest.raises(SecretNotFound) as info_missing:
        secrets.get("crm_token")
    assert "crm_token" in info_missing.value.message
    assert info_missing.value.code == "secret_not_found"
    with pytest.raises(SecretNotFound):
        secrets.delete("crm_token", actor="ana")


def test_the_value_is_sealed_at_rest(secrets: SecretStore, store: Store, home: Path) -> None:
    secrets.put("crm_token", VALUE, actor="ana")
    sealed, key_id = sealed_row(store, "crm_token")
    assert VALUE.encode() not in sealed
    assert len(sealed) == 12 + len(VALUE) + 16  # nonce, ciphertext, tag
    assert key_id == secrets.key_id and len(key_id) == 16
    key_file = home / "master.key"
    assert len(key_file.read_bytes()) == 32
    if os.name == "posix":
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    secrets.put("crm_token", VALUE, actor="ana")
    assert sealed_row(store, "crm_token")[0] != sealed  # a fresh nonce every time


@pytest.mark.parametrize("position", [0, 5, 12, 20, -1])
def test_a_flipped_byte_is_detected(secrets: SecretStore, store: Store, position: int) -> None:
    secrets.put("crm_token", VALUE, actor="ana")
    sealed = bytearray(sealed_row(store, "crm_token")[0])
    sealed[position] ^= 0x01
    with store.write() as tx:
        tx.execute("UPDATE secrets SET sealed = ? WHERE name = ?", (bytes(sealed), "crm_token"))
    with pytest.raises(ConfigError) as info:
        secrets.get("crm_token")
    assert info.value.code == "secret_unreadable"
    assert "crm_token" in info.value.message and "altered" in info.value.message
    assert VALUE not in info.value.message


def test_a_row_copied_under_another_name_does_not_open(secrets: SecretStore, store: Store) -> None:
    secrets.put("admin_token", VALUE, actor="ana")
    secrets.put("intern_token", "harmless", actor="ana")
    sealed, _ = sealed_row(store, "admin_token")
    with store.write() as tx:
        tx.execute("UPDATE secrets SET sealed = ? WHERE name = ?", (sealed, "intern_token"))
    with pytest.raises(ConfigError) as info:
        secrets.get("intern_token")
    assert info.value.code == "secret_unreadable"
    assert "intern_token" in info.value.message
    assert secrets.get("admin_token") == VALUE


def test_a_truncated_row_is_detected(secrets: SecretStore, store: Store) -> None:
    secrets.put("crm_token", VALUE, actor="ana")
    with store.write() as tx:
        tx.execute("UPDATE secrets SET sealed = ? WHERE name = ?", (b"short", "crm_token"))
    with pytest.raises(ConfigError, match="altered"):
        secrets.get("crm_token")


def test_another_master_key_is_told_apart(
    secrets: SecretStore, store: Store, tmp_path: Path
) -> None:
    secrets.put("crm_token", VALUE, actor="ana")
    other = SecretStore(store, tmp_path / "elsewhere" / "master.key", environ={})
    with pytest.raises(ConfigError) as missing:
        other.get("crm_token")
    assert "no master key" in missing.value.message
    other.put("unrelated", "x", actor="ana")  # creates a different key
    with pytest.raises(ConfigError) as wrong:
        other.get("crm_token")
    assert wrong.value.code == "secret_unreadable"
    assert secrets.key_id is not None and secrets.key_id in wrong.value.message
    assert other.key_id is not None and other.key_id in wrong.value.message
    assert VALUE not in wrong.value.message


def test_the_master_key_from_the_environment_wins(store: Store, home: Path) -> None:
    key = os.urandom(32)
    encoded = base64.urlsafe_b64encode(key).rstrip(b"=").decode()
    env_store = SecretStore(store, default_key_path(home), environ={MASTER_KEY_ENV: encoded})
    env_store.put("crm_token", VALUE, actor="ana")
    assert not (home / "master.key").exists()
    again = SecretStore(store, default_key_path(home), environ={MASTER_KEY_ENV: encoded + "\n"})
    assert again.get("crm_token") == VALUE
    without = SecretStore(store, default_key_path(home), environ={})
    with pytest.raises(ConfigError, match="no master key"):
        without.get("crm_token")


@pytest.mark.parametrize("bad", ["short", "not base64 at all!!", "A" * 60])
def test_a_malformed_environment_key_is_refused_without_echo(
    store: Store, home: Path, bad: str
) -> None:
    secrets = SecretStore(store, default_key_path(home), environ={MASTER_KEY_ENV: bad})
    with pytest.raises(ConfigError) as info:
        secrets.put("crm_token", VALUE, actor="ana")
    assert MASTER_KEY_ENV in info.value.message and bad not in info.value.message


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_a_key_file_others_can_read_is_refused(
    secrets: SecretStore, store: Store, home: Path
) -> None:
    secrets.put("crm_token", VALUE, actor="ana")
    (home / "master.key").chmod(0o644)
    fresh = SecretStore(store, default_key_path(home), environ={})
    with pytest.raises(ConfigError, match="chmod 600"):
        fresh.get("crm_token")


def test_env_and_file_references(store: Store, home: Path, tmp_path: Path) -> None:
    home.mkdir()
    (home / "token.txt").write_text("from-file\r\n\n", encoding="utf-8")
    absolute = tmp_path / "abs.txt"
    absolute.write_text("absolute-value", encoding="utf-8")
    secrets = SecretStore(
        store, default_key_path(home), environ={"CRM_TOKEN": "from-env", "EMPTY": ""}
    )
    assert secrets.resolve("env:CRM_TOKEN") == "from-env"
    assert secrets.resolve("file:token.txt") == "from-file"  # relative to the home folder
    assert secrets.resolve(f"file:{absolute}") == "absolute-value"
    assert secrets.resolve(SecretRef("env", "CRM_TOKEN")) == "from-env"
    assert repr(secrets.secret("env:CRM_TOKEN")) == "Secret('***')"
    for ref in ("env:MISSING", "env:EMPTY", "file:nope.txt", f"file:{tmp_path / 'x'}"):
        with pytest.raises(SecretNotFound) as info:
            secrets.resolve(ref)
        assert ref.split(":", 1)[1] in info.value.message
        assert info.value.context["ref"] == ref


@pytest.mark.parametrize(
    "ref",
    [
        "crm_token",
        "vault:crm_token",
        "env:",
        "env:BAD-NAME",
        "file:",
        "store:",
        "store:Bad_Name",
        "store:../x",
        "store:" + "a" * 200,
    ],
)
def test_malformed_references_are_config_errors(ref: str) -> None:
    with pytest.raises(ConfigError):
        parse_ref(ref)


@pytest.mark.parametrize("name", ["", "Crm", "1abc", "a b", "a/b", "é", "a" * 129])
def test_secret_names_are_checked(secrets: SecretStore, name: str) -> None:
    with pytest.raises(ConfigError):
        secrets.put(name, VALUE, actor="ana")


def test_empty_values_are_refused(secrets: SecretStore) -> None:
    with pytest.raises(ConfigError, match="empty"):
        secrets.put("crm_token", "", actor="ana")


def test_secret_values_never_show() -> None:
    secret = Secret(VALUE)
    assert repr(secret) == str(secret) == f"{secret}" == "Secret('***')"
    assert VALUE not in repr([secret, {"k": secret}])
    assert secret.reveal() == VALUE
    assert secret == Secret(VALUE) and secret != Secret("other")
    with pytest.raises(TypeError):
        pickle.dumps(secret)


def test_the_store_repr_shows_no_secret(secrets: SecretStore) -> None:
    secrets.put("crm_token", VALUE, actor="ana")
    assert VALUE not in repr(secrets)
