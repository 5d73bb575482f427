"""Loading ``http_tools``: every mistake is a ConfigError naming the tool and the key."""

from __future__ import annotations

from typing import Any

import pytest

from keel.errors import ConfigError
from keel.net import EgressPolicy
from keel.secrets import SecretStore
from keel.tools import HttpEndpoint, load_http_tools

from ._helpers import SECRET

SCHEMA = {
    "type": "object",
    "properties": {
        "contact_id": {"type": "string"},
        "n": {"type": "integer"},
        "filter": {"type": "object"},
        "note": {"type": "string"},
    },
    "required": ["contact_id"],
}


def spec(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "description": "Look up a contact.",
        "method": "GET",
        "url": "https://crm.example.com/api/v2/contacts/{contact_id}",
        "scope": "crm:read",
        "arguments": SCHEMA,
        "headers": {"Authorization": "Bearer {secret:crm_token}"},
    }
    for key, value in changes.items():
        if value is None:
            base.pop(key, None)
        else:
            base[key] = value
    return base


def load(entries: dict[str, Any], secrets: SecretStore) -> list[Any]:
    return list(load_http_tools(entries, secrets=secrets, egress=EgressPolicy()))


def test_a_good_entry_loads_without_touching_the_network(secrets: SecretStore) -> None:
    [tool] = load({"crm.contacts.get": spec()}, secrets)
    described = tool.spec.describe()
    assert described["name"] == "crm.contacts.get"
    assert described["effect"] == "read" and described["scope"] == "crm:read"
    assert described["input_schema"]["additionalProperties"] is False
    assert tool.spec.metadata["http"] == {
        "method": "GET",
        "url": "https://crm.example.com/api/v2/contacts/{contact_id}",
    }
    assert SECRET not in repr(tool) + repr(tool.endpoint) + str(described)


def test_effect_defaults_by_method(secrets: SecretStore) -> None:
    post = spec(method="post", body={"note": "note"})
    [get_tool, post_tool] = load({"a.get": spec(), "a.post": post}, secrets)
    assert get_tool.spec.effect == "read"
    assert post_tool.spec.effect == "irreversible" and post_tool.endpoint.method == "POST"


@pytest.mark.parametrize(
    ("name", "entry", "key", "needle"),
    [
        ("Crm.Get", spec(), "http_tools.Crm.Get", "not canonical"),
        ("crm.g\u0435t", spec(), "http_tools.crm.g\u0435t", "CYRILLIC"),
        ("crm.get", "GET /x", "http_tools.crm.get", "mapping"),
        ("crm.get", spec(verb="GET"), "http_tools.crm.get.verb", "unknown key"),
        ("crm.get", spec(method="TRACE"), "http_tools.crm.get.method", "TRACE"),
        ("crm.get", spec(effect="destructive"), "http_tools.crm.get.effect", "destructive"),
        ("crm.get", spec(scope=None), "http_tools.crm.get.scope", "scope"),
        ("crm.get", spec(url=None), "http_tools.crm.get.url", "URL template"),
        ("crm.get", spec(url="crm.example.com/x"), "http_tools.crm.get.url", "absolute"),
        ("crm.get", spec(url="file:///etc/passwd"), "http_tools.crm.get.url", "file"),
        ("crm.get", spec(url="gopher://crm.example.com/x"), "http_tools.crm.get.url", "gopher"),
        ("crm.get", spec(url="https://{host}/x"), "http_tools.crm.get.url", "fixed"),
        (
            "crm.get",
            spec(url="https://crm.example.com:{port}/x"),
            "http_tools.crm.get.url",
            "fixed",
        ),
        ("crm.get", spec(url="{scheme}://crm.example.com/x"), "http_tools.crm.get.url", "fixed"),
        (
            "crm.get",
            spec(url="https://crm.example.com/x?id={contact_id}"),
            "http_tools.crm.get.url",
            "query:",
        ),
        (
            "crm.get",
            spec(url="https://crm.example.com/x#frag"),
            "http_tools.crm.get.url",
            "fragment",
        ),
        (
            "crm.get",
            spec(url="https://user:pw@crm.example.com/x"),
            "http_tools.crm.get.url",
            "credentials",
        ),
        ("crm.get", spec(url="https://crm.example.com/{nope}"), "http_tools.crm.get.url", "nope"),
        (
            "crm.get",
            spec(url="https://crm.example.com/{note}"),
            "http_tools.crm.get.url",
            "required",
        ),
        ("crm.get", spec(url="https://crm.example.com/{a-b}"), "http_tools.crm.get.url", "a-b"),
        ("crm.get", spec(url="https://crm.example.com/{x"), "http_tools.crm.get.url", "unbalanced"),
        (
            "crm.get",
            spec(
                url="https://crm.example.com/{contact_id}",
                arguments={
                    "type": "object",
                    "properties": {"contact_id": {"type": "array"}},
                    "required": ["contact_id"],
                },
            ),
            "http_tools.crm.get.url",
            "string or integer",
        ),
        ("crm.get", spec(url="http://127.0.0.1/x"), "http_tools.crm.get.url", "loopback"),
        ("crm.get", spec(url="http://169.254.169.254/x"), "http_tools.crm.get.url", "metadata"),
        ("crm.get", spec(arguments={"type": "string"}), "http_tools.crm.get.arguments", "object"),
        (
            "crm.get",
            spec(arguments={"type": "object", "properties": {"x": {"type": 5}}}),
            "http_tools.crm.get.arguments",
            "JSON schema",
        ),
        ("crm.get", spec(query={"q": "missing"}), "http_tools.crm.get.query.q", "missing"),
        ("crm.get", spec(query={"f": "filter"}), "http_tools.crm.get.query.f", "object"),
        ("crm.get", spec(query=["q"]), "http_tools.crm.get.query", "map"),
        ("crm.get", spec(body={"note": "note"}), "http_tools.crm.get.body", "no body"),
        (
            "crm.post",
            spec(method="POST", body={"x": "ghost"}),
            "http_tools.crm.post.body.x",
            "ghost",
        ),
        (
            "crm.post",
            spec(method="POST", body="everything"),
            "http_tools.crm.post.body",
            "arguments",
        ),
        (
            "crm.get",
            spec(headers={"Authorization": "Bearer {token}"}),
            "http_tools.crm.get.headers.Authorization",
            "not a secret reference",
        ),
        (
            "crm.get",
            spec(headers={"Authorization": "Bearer {secret:vault:x}"}),
            "http_tools.crm.get.headers.Authorization",
            "not valid",
        ),
        (
            "crm.get",
            spec(headers={"X-Key": "{secret:env:BAD-NAME}"}),
            "http_tools.crm.get.headers.X-Key",
            "environment variable",
        ),
        (
            "crm.get",
            spec(headers={"Host": "evil.com"}),
            "http_tools.crm.get.headers.Host",
            "itself",
        ),
        (
            "crm.get",
            spec(headers={"X-A": "a\r\nX-B: b"}),
            "http_tools.crm.get.headers.X-A",
            "control character",
        ),
        ("crm.get", spec(headers={"Bad Name": "x"}), "http_tools.crm.get.headers", "header name"),
        ("crm.get", spec(response={"pick": "x"}), "http_tools.crm.get.response.pick", "unknown"),
        (
            "crm.get",
            spec(response={"select": "data..x"}),
            "http_tools.crm.get.response.select",
            "dotted path",
        ),
        (
            "crm.get",
            spec(response={"fields": {"id": ""}}),
            "http_tools.crm.get.response.fields.id",
            "dotted path",
        ),
        ("crm.get", spec(timeout_seconds=0), "http_tools.crm.get.timeout_seconds", "positive"),
        ("crm.get", spec(timeout_seconds="10"), "http_tools.crm.get.timeout_seconds", "number"),
        ("crm.get", spec(idempotent="yes"), "http_tools.crm.get.idempotent", "true or false"),
        ("crm.get", spec(cost_usd="-1"), "http_tools.crm.get.cost_usd", "positive"),
        ("crm.get", spec(cost_usd="lots"), "http_tools.crm.get.cost_usd", "amount"),
        (
            "crm.get",
            spec(max_response_bytes=1.5),
            "http_tools.crm.get.max_response_bytes",
            "integer",
        ),
        ("crm.get", spec(max_redirects=-1), "http_tools.crm.get.max_redirects", "at least 0"),
    ],
)
def test_mistakes_name_the_tool_and_key(
    secrets: SecretStore, name: str, entry: Any, key: str, needle: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load({name: entry}, secrets)
    error = info.value
    assert error.context["key"] == key, error.message
    assert needle in error.message, error.message
    assert error.message.startswith(f"http_tools.{name}")
    [only] = error.context["errors"]
    assert only["tool"] == name and only["key"] == key


def test_every_bad_entry_is_reported_once(secrets: SecretStore) -> None:
    entries = {
        "ok.tool": spec(),
        "bad.one": spec(method="TRACE", effect="nope"),  # only the first problem is named
        "bad.two": spec(scope=None),
    }
    with pytest.raises(ConfigError) as info:
        load(entries, secrets)
    assert [e["tool"] for e in info.value.context["errors"]] == ["bad.one", "bad.two"]
    assert "2 http tools are invalid" in info.value.message
    assert info.value.context["key"] == "http_tools.bad.one.method"


def test_secret_reference_forms(secrets: SecretStore) -> None:
    entry = spec(
        headers={
            "Authorization": "Bearer {secret:crm_token}",
            "X-Env": "{secret:env:CRM_ENV_TOKEN}",
            "X-File": "k={secret:file:/run/secrets/crm}",
            "X-Store": "{secret:store:crm_token}",
        }
    )
    endpoint = HttpEndpoint.parse("crm.get", entry)
    refs = {name: [str(p) for p in parts] for name, parts in endpoint.headers}
    assert refs == {
        "Authorization": ["Bearer ", "store:crm_token"],
        "X-Env": ["env:CRM_ENV_TOKEN"],
        "X-File": ["k=", "file:/run/secrets/crm"],
        "X-Store": ["store:crm_token"],
    }


def test_http_tools_must_be_a_mapping(secrets: SecretStore) -> None:
    with pytest.raises(ConfigError):
        load_http_tools(["crm.get"], secrets=secrets, egress=EgressPolicy())  # type: ignore[arg-type]
