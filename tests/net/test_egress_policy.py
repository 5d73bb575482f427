"""The egress policy refuses every SSRF form of ATTACKS.md #31 before any connection is made.

No test here opens a socket: the policy only parses, resolves (the system resolver for names in
/etc/hosts such as ``localhost``, or a resolver the test passes in) and decides.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keel.errors import ConfigError, EgressDenied
from keel.net import EgressPolicy, Target


class Table:
    """A resolver over a fixed table that counts its look-ups."""

    def __init__(self, table: dict[str, Sequence[str]]) -> None:
        self.table = table
        self.calls: list[str] = []

    def __call__(self, host: str, port: int) -> Sequence[str]:
        self.calls.append(host)
        if host not in self.table:
            raise AssertionError(f"unexpected look-up of {host}")
        return self.table[host]


def refused(policy: EgressPolicy, url: str) -> EgressDenied:
    with pytest.raises(EgressDenied) as info:
        policy.resolve(url)
    with pytest.raises(EgressDenied) as ainfo:
        asyncio.run(policy.aresolve(url))
    assert ainfo.value.message == info.value.message
    assert info.value.code == "egress_denied"
    return info.value


@pytest.mark.parametrize(
    ("url", "address", "reason"),
    [
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254", "cloud metadata"),
        ("http://[fd00:ec2::254]/", "fd00:ec2::254", "cloud metadata"),
        ("http://100.100.100.200/", "100.100.100.200", "cloud metadata"),
        ("http://169.254.1.1/", "169.254.1.1", "link-local"),
        ("http://127.0.0.1/", "127.0.0.1", "loopback"),
        ("http://127.0.0.1:8080/admin", "127.0.0.1", "loopback"),
        ("http://[::1]/", "::1", "loopback"),
        ("http://0x7f000001/", "127.0.0.1", "loopback"),
        ("http://0X7F000001/", "127.0.0.1", "loopback"),
        ("http://2130706433/", "127.0.0.1", "loopback"),
        ("http://127.1/", "127.0.0.1", "loopback"),
        ("http://0x7f.1/", "127.0.0.1", "loopback"),
        ("http://[::ffff:127.0.0.1]/", "::ffff:7f00:1", "loopback"),
        ("http://[::ffff:7f00:1]/", "::ffff:7f00:1", "loopback"),
        ("http://[::ffff:169.254.169.254]/", "::ffff:a9fe:a9fe", "cloud metadata"),
        ("http://[2002:7f00:1::]/", "2002:7f00:1::", "127.0.0.1 embedded"),
        ("http://[64:ff9b::a00:1]/", "64:ff9b::a00:1", "10.0.0.1 embedded"),
        ("http://localhost/", "127.0.0.1", "loopback"),
        ("http://LocalHost:9000/", "127.0.0.1", "loopback"),
        ("http://10.0.0.1/", "10.0.0.1", "private"),
        ("http://172.16.5.4/", "172.16.5.4", "private"),
        ("http://192.168.1.1/", "192.168.1.1", "private"),
        ("http://100.64.0.1/", "100.64.0.1", "shared address space"),
        ("http://0.0.0.0/", "0.0.0.0", "unspecified"),
        ("http://0/", "0.0.0.0", "unspecified"),
        ("http://[::]/", "::", "unspecified"),
        ("http://224.0.0.1/", "224.0.0.1", "multicast"),
        ("http://[ff02::1]/", "ff02::1", "multicast"),
        ("http://[fe80::1]/", "fe80::1", "link-local"),
        ("http://[fec0::1]/", "fec0::1", "site-local"),
        ("http://[fc00::1]/", "fc00::1", "unique-local"),
        ("http://240.0.0.1/", "240.0.0.1", "reserved"),
        ("http://255.255.255.255/", "255.255.255.255", "reserved"),
    ],
)
def test_private_addresses_in_every_spelling_are_refused(
    url: str, address: str, reason: str
) -> None:
    error = refused(EgressPolicy(), url)
    assert reason in error.message
    assert error.context["address"] == address
    assert address in error.message


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "gopher://127.0.0.1:25/_HELO",
        "ftp://example.com/file",
        "dict://example.com:11211/stat",
        "ldap://example.com/",
        "data:text/plain,hi",
        "javascript:alert(1)",
        "example.com/path",
        "//example.com/path",
    ],
)
def test_schemes_other_than_http_are_refused(url: str) -> None:
    error = refused(EgressPolicy(), url)
    assert "scheme" in error.message or "malformed" in error.message


@pytest.mark.parametrize(
    "url",
    ["http:///path", "http://%31%32%37.0.0.1/", "http://[fe80::1%25eth0]/", "http://0177.0.0.1/"],
)
def test_malformed_hosts_are_refused(url: str) -> None:
    refused(EgressPolicy(), url)


def test_credentials_in_a_url_are_refused_and_never_echoed() -> None:
    error = refused(EgressPolicy(), "https://admin:hunter2@api.example.com/x?token=abc")
    assert "credentials" in error.message
    for text in ("hunter2", "admin", "token=abc"):
        assert text not in error.message
        assert text not in str(error.context)


def test_a_name_resolving_to_a_private_address_is_refused() -> None:
    table = Table({"intranet.example.com": ["10.20.30.40"]})
    error = refused(EgressPolicy(resolver=table), "https://intranet.example.com/hr")
    assert error.context == {
        "host": "intranet.example.com",
        "address": "10.20.30.40",
        "reason": "private address",
    }


def test_one_private_address_among_public_ones_is_enough_to_refuse() -> None:
    table = Table({"mixed.example.com": ["93.184.216.34", "2606:2800:220:1::1", "127.0.0.1"]})
    error = refused(EgressPolicy(resolver=table), "https://mixed.example.com/")
    assert error.context["address"] == "127.0.0.1"


def test_a_public_name_resolves_once_and_is_pinned() -> None:
    table = Table({"api.example.com.": ["93.184.216.34", "2606:2800:220:1::1"]})
    target = EgressPolicy(resolver=table).resolve("https://API.example.com./v1/items?q=1")
    assert target == Target(
        url="https://API.example.com./v1/items?q=1",
        scheme="https",
        host="api.example.com",
        port=443,
        ip="93.184.216.34",
        addresses=("93.184.216.34", "2606:2800:220:1::1"),
    )
    assert table.calls == ["api.example.com."]


def test_a_public_literal_needs_no_lookup() -> None:
    policy = EgressPolicy(resolver=Table({}))  # any look-up would fail the test
    target = asyncio.run(policy.aresolve("http://93.184.216.34:8080/"))
    assert (target.ip, target.port, target.scheme) == ("93.184.216.34", 8080, "http")


def test_allow_lists_hosts_addresses_and_ranges() -> None:
    table = Table({"hr.internal": ["10.1.2.3"], "other.internal": ["10.9.9.9"]})
    policy = EgressPolicy(["127.0.0.1", "hr.internal", "192.168.0.0/16", "[::1]"], resolver=table)
    assert policy.resolve("http://127.0.0.1:8080/").ip == "127.0.0.1"
    assert policy.resolve("http://[::ffff:127.0.0.1]/").ip == "::ffff:7f00:1"
    assert policy.resolve("http://[::1]/").ip == "::1"
    assert policy.resolve("https://HR.internal/").ip == "10.1.2.3"
    assert policy.resolve("http://192.168.7.7/").ip == "192.168.7.7"
    assert refused(policy, "http://127.0.0.2/").context["reason"] == "loopback address"
    assert refused(policy, "http://other.internal/").context["address"] == "10.9.9.9"
    assert refused(policy, "http://10.0.0.1/").context["reason"] == "private address"


def test_metadata_addresses_need_their_exact_address_allowed() -> None:
    table = Table({"metadata.google.internal": ["169.254.169.254"]})
    wide = EgressPolicy(["169.254.0.0/16", "metadata.google.internal"], resolver=table)
    assert refused(wide, "http://169.254.169.254/").context["reason"] == "cloud metadata address"
    assert refused(wide, "http://metadata.google.internal/").context["reason"] == (
        "cloud metadata address"
    )
    assert wide.resolve("http://169.254.1.1/").ip == "169.254.1.1"
    exact = EgressPolicy(["169.254.169.254"])
    assert exact.resolve("http://169.254.169.254/").ip == "169.254.169.254"


@pytest.mark.parametrize("entry", ["not a host", "http://x.com", "10.0.0.0/33", "", "a..b"])
def test_bad_allow_entries_are_config_errors(entry: str) -> None:
    with pytest.raises(ConfigError) as info:
        EgressPolicy([entry])
    assert info.value.context["key"] == "egress_allow"


def test_schemes_are_limited_to_http_and_https() -> None:
    with pytest.raises(ConfigError):
        EgressPolicy(schemes=["https", "file"])
    refused(EgressPolicy(schemes=["https"]), "http://93.184.216.34/")


def test_precheck_refuses_literals_without_resolving_names() -> None:
    policy = EgressPolicy(resolver=Table({}))
    policy.precheck("https://crm.example.com/api/{x}")
    with pytest.raises(EgressDenied):
        policy.precheck("http://127.0.0.1/api")
    with pytest.raises(EgressDenied):
        policy.precheck("gopher://crm.example.com/")


@given(st.integers(min_value=0x7F000000, max_value=0x7FFFFFFF))
def test_every_spelling_of_every_loopback_address_is_refused(number: int) -> None:
    address = ipaddress.IPv4Address(number)
    a, b, c, d = address.packed
    spellings = [
        str(address),
        str(number),
        hex(number),
        f"0x{a:x}.0x{b:x}.0x{c:x}.0x{d:x}",
        f"{a}.{(b << 16) | (c << 8) | d}",
        f"[::ffff:{address}]",
        f"[2002:{a:02x}{b:02x}:{c:02x}{d:02x}::1]",
    ]
    policy = EgressPolicy(resolver=Table({}))
    for host in spellings:
        with pytest.raises(EgressDenied) as info:
            policy.resolve(f"http://{host}:8000/x")
        assert "loopback" in info.value.message, host
