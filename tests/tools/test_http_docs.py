"""The examples in docs/http-tools.md load as written (examples are tests)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from keel.net import EgressPolicy
from keel.secrets import SecretStore
from keel.tools import load_http_tools

DOC = Path(__file__).resolve().parents[2] / "docs" / "http-tools.md"


def yaml_blocks() -> list[dict[str, object]]:
    text = DOC.read_text(encoding="utf-8")
    return [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", text, re.S)]


def test_the_documented_config_loads(secrets: SecretStore) -> None:
    tools_block, allow_block = yaml_blocks()
    policy = EgressPolicy(allow_block["egress_allow"])  # type: ignore[arg-type]
    tools = load_http_tools(tools_block["http_tools"], secrets=secrets, egress=policy)  # type: ignore[arg-type]
    assert [t.spec.name for t in tools] == ["crm.contacts.get", "crm.notes.create"]
    get, create = tools
    assert get.build_url({"contact_id": "c-1", "fields": "name"}) == (
        "https://crm.example.com/api/v2/contacts/c-1?fields=name"
    )
    assert create.spec.effect == "reversible" and create.spec.idempotent
    assert create.endpoint.max_redirects == 0
