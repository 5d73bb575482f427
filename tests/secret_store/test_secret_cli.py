"""``keel secret set/list/delete``: values from stdin or a file, never echoed, never in argv."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from keel.cli._secrets import secrets_app
from keel.secrets import SecretStore, default_key_path
from keel.store import open_store

VALUE = "cli-secret-value-42"


@pytest.fixture
def config(tmp_path: Path, store_url: str) -> Path:
    path = tmp_path / "keel.yaml"
    path.write_text(
        f"store_url: {json.dumps(store_url)}\nhome: {json.dumps(str(tmp_path / 'home'))}\n",
        encoding="utf-8",
    )
    return path


def run(*args: str, input: str | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(secrets_app, list(args), input=input)
    return result.exit_code, result.output


def test_set_from_stdin_list_delete(config: Path, tmp_path: Path, store_url: str) -> None:
    code, out = run("set", "crm_token", "--config", str(config), input=VALUE + "\n")
    assert code == 0, out
    assert "stored secret crm_token" in out and VALUE not in out
    with open_store(store_url) as store:
        secrets = SecretStore(store, default_key_path(tmp_path / "home"), environ={})
        assert secrets.get("crm_token") == VALUE  # the trailing newline of echo is dropped
    code, out = run("list", "--config", str(config))
    assert code == 0, out
    [row] = json.loads(out)
    assert row["name"] == "crm_token" and row["updated_by"].startswith("cli")
    assert VALUE not in out
    code, out = run("delete", "crm_token", "--config", str(config))
    assert code == 0, out
    assert json.loads(run("list", "--config", str(config))[1]) == []
    code, out = run("delete", "crm_token", "--config", str(config))
    assert code == 2 and "no stored secret" in out


def test_set_from_a_file(config: Path, tmp_path: Path, store_url: str) -> None:
    source = tmp_path / "token.txt"
    source.write_text(VALUE + "\n", encoding="utf-8")
    code, out = run("set", "crm_token", "--from-file", str(source), "--config", str(config))
    assert code == 0, out
    with open_store(store_url) as store:
        secrets = SecretStore(store, default_key_path(tmp_path / "home"), environ={})
        assert secrets.get("crm_token") == VALUE


@pytest.mark.parametrize(
    ("args", "stdin", "needle"),
    [
        (("set", "Bad Name"), VALUE, "not valid"),
        (("set", "crm_token"), "", "empty"),
        (("set", "crm_token", "--from-file", "/nonexistent/token"), None, "cannot read"),
    ],
)
def test_bad_input_is_refused(
    config: Path, args: tuple[str, ...], stdin: str | None, needle: str
) -> None:
    code, out = run(*args, "--config", str(config), input=stdin)
    assert code == 2
    assert needle in out
    assert VALUE not in out


def test_the_value_cannot_be_given_as_an_argument(config: Path) -> None:
    code, _out = run("set", "crm_token", VALUE, "--config", str(config))
    assert code != 0
