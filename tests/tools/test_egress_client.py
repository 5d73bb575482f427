"""The pinned egress client against a real loopback server: redirects, rebinding, byte caps.

Every refused destination is refused by the policy before a connection exists; nothing here
sends traffic anywhere but 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence
from pathlib import Path

import pytest

from keel.errors import EgressDenied, ToolError
from keel.net import EgressClient, EgressPolicy, EgressResponse

from ._server import Loopback, Reply, gzip_reply, self_signed


def fetch(
    policy: EgressPolicy,
    url: str,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    content: bytes | None = None,
    max_redirects: int = 5,
    max_response_bytes: int = 1024 * 1024,
    truncate: bool = False,
) -> EgressResponse:
    async def go() -> EgressResponse:
        async with EgressClient(
            policy,
            timeout=10,
            max_redirects=max_redirects,
            max_response_bytes=max_response_bytes,
        ) as client:
            return await client.request(
                method, url, headers=headers, content=content, truncate=truncate
            )

    return asyncio.run(go())


def redirect(location: str, status: int = 302) -> Reply:
    return Reply(status, b"", {"Location": location})


@pytest.fixture
def policy() -> EgressPolicy:
    return EgressPolicy(["127.0.0.1"])


def test_without_an_allow_loopback_is_never_dialled(server: Loopback) -> None:
    with pytest.raises(EgressDenied, match="loopback"):
        fetch(EgressPolicy(), server.url("/x"))
    assert server.requests == []


def test_redirects_within_the_allowed_host_are_followed(
    server: Loopback, policy: EgressPolicy
) -> None:
    server.routes["/a"] = lambda seen: redirect("/b")
    server.routes["/b"] = lambda seen: redirect(server.url("/c"), 307)
    response = fetch(policy, server.url("/a"))
    assert response.status_code == 200
    assert response.url == server.url("/c")
    assert response.redirects == (server.url("/b"), server.url("/c"))
    assert [r.path for r in server.requests] == ["/a", "/b", "/c"]


@pytest.mark.parametrize(
    "location",
    [
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "http://[::1]/admin",
        "http://[::ffff:169.254.169.254]/",
        "http://127.0.0.2/",
        "http://0x7f000002/",
        "http://10.0.0.1/",
        "http://100.100.100.200/",
        "file:///etc/passwd",
        "gopher://127.0.0.1:6379/_FLUSHALL",
        "ftp://127.0.0.1/",
        "http://user:pw@127.0.0.1/",
    ],
)
def test_redirects_to_refused_places_are_refused(
    server: Loopback, policy: EgressPolicy, location: str
) -> None:
    server.routes["/hop"] = lambda seen: redirect(location)
    with pytest.raises(EgressDenied) as info:
        fetch(policy, server.url("/hop"))
    assert "pw" not in info.value.message
    assert [r.path for r in server.requests] == ["/hop"]


def test_a_redirect_chain_into_a_private_address_is_refused(
    server: Loopback, policy: EgressPolicy
) -> None:
    server.routes["/1"] = lambda seen: redirect("/2")
    server.routes["/2"] = lambda seen: redirect("/3", 301)
    server.routes["/3"] = lambda seen: redirect("http://192.168.0.1/router")
    with pytest.raises(EgressDenied, match=r"192\.168\.0\.1"):
        fetch(policy, server.url("/1"))
    assert [r.path for r in server.requests] == ["/1", "/2", "/3"]


def test_too_many_redirects(server: Loopback, policy: EgressPolicy) -> None:
    server.routes["/loop"] = lambda seen: redirect("/loop")
    with pytest.raises(ToolError) as info:
        fetch(policy, server.url("/loop"), max_redirects=3)
    assert info.value.code == "too_many_redirects"
    assert len(server.requests) == 4


def test_redirects_can_be_left_to_the_caller(server: Loopback, policy: EgressPolicy) -> None:
    server.routes["/r"] = lambda seen: redirect("http://10.0.0.1/")
    response = fetch(policy, server.url("/r"), max_redirects=0)
    assert response.status_code == 302 and response.headers["location"] == "http://10.0.0.1/"


def test_credentials_are_dropped_when_a_redirect_leaves_the_origin(server: Loopback) -> None:
    policy = EgressPolicy(["127.0.0.1", "localhost"])
    server.routes["/start"] = lambda seen: redirect(f"http://localhost:{server.port}/landed")
    fetch(
        policy,
        server.url("/start"),
        headers={"Authorization": "Bearer tok", "X-Api-Key": "k", "Accept": "application/json"},
    )
    first, second = server.requests
    assert first.headers["authorization"] == "Bearer tok" and first.headers["x-api-key"] == "k"
    assert second.path == "/landed" and second.headers["host"] == f"localhost:{server.port}"
    assert "authorization" not in second.headers and "x-api-key" not in second.headers
    assert second.headers["accept"] == "application/json"


def test_a_303_after_post_becomes_a_get_without_body(
    server: Loopback, policy: EgressPolicy
) -> None:
    server.routes["/submit"] = lambda seen: redirect("/result", 303)
    fetch(
        policy,
        server.url("/submit"),
        method="POST",
        content=b'{"a": 1}',
        headers={"Content-Type": "application/json"},
    )
    post, get = server.requests
    assert (post.method, post.body) == ("POST", b'{"a": 1}')
    assert (get.method, get.body) == ("GET", b"")
    assert "content-type" not in get.headers


def test_the_connection_goes_to_the_pinned_address_not_a_new_dns_answer(
    server: Loopback,
) -> None:
    """DNS rebinding: the name answers 127.0.0.1 for the check, then a metadata address.

    The client resolves once and dials the checked address; the Host header keeps the name.
    """
    answers = [["127.0.0.1"], ["169.254.169.254"]]
    calls: list[str] = []

    def rebinding(host: str, port: int) -> Sequence[str]:
        calls.append(host)
        return answers[min(len(calls), len(answers)) - 1]

    policy = EgressPolicy(["rebind.test"], resolver=rebinding)
    response = fetch(policy, f"http://rebind.test:{server.port}/pinned")
    assert response.status_code == 200
    assert calls == ["rebind.test"]
    [seen] = server.requests
    assert seen.headers["host"] == f"rebind.test:{server.port}"
    with pytest.raises(EgressDenied, match="metadata"):  # the second answer is refused
        policy.resolve(f"http://rebind.test:{server.port}/pinned")


def test_gzip_is_decoded_within_the_cap(server: Loopback, policy: EgressPolicy) -> None:
    server.routes["/z"] = lambda seen: gzip_reply(b"hello " * 1000)
    response = fetch(policy, server.url("/z"))
    assert response.content == b"hello " * 1000
    assert server.requests[0].headers["accept-encoding"] == "identity"


def test_truncation_on_request(server: Loopback, policy: EgressPolicy) -> None:
    server.routes["/big"] = lambda seen: Reply(200, b"a" * 10_000, chunked=True)
    response = fetch(policy, server.url("/big"), max_response_bytes=1000, truncate=True)
    assert response.truncated and response.content == b"a" * 1000
    with pytest.raises(ToolError) as info:
        fetch(policy, server.url("/big"), max_response_bytes=1000)
    assert info.value.code == "response_too_large"


def test_an_unsupported_encoding_is_refused(server: Loopback, policy: EgressPolicy) -> None:
    server.routes["/br"] = lambda seen: Reply(200, b"\x0b\x02\x80", {"Content-Encoding": "br"})
    with pytest.raises(ToolError, match="content-encoding"):
        fetch(policy, server.url("/br"))


def test_a_closed_port_is_a_retryable_connection_error(policy: EgressPolicy) -> None:
    with Loopback() as gone:
        port = gone.port
    with pytest.raises(ToolError) as info:
        fetch(policy, f"http://127.0.0.1:{port}/")
    assert info.value.code == "upstream_unreachable" and info.value.retryable


def test_tls_keeps_the_name_for_sni_and_the_certificate(tmp_path: Path) -> None:
    """The connection goes to the pinned address; the certificate is checked for the name."""
    cert, key = self_signed(tmp_path, "pinned.test")
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    client_tls = ssl.create_default_context(cafile=str(cert))
    names = {"pinned.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]}
    policy = EgressPolicy(list(names), resolver=lambda host, port: names[host])

    async def get(url: str) -> EgressResponse:
        async with EgressClient(policy, timeout=10, ssl_context=client_tls) as client:
            return await client.request("GET", url)

    with Loopback(tls=server_tls) as server:
        response = asyncio.run(get(f"https://pinned.test:{server.port}/secure"))
        assert response.status_code == 200
        assert server.requests[0].headers["host"] == f"pinned.test:{server.port}"
        with pytest.raises(ToolError) as info:  # same address, a name the certificate lacks
            asyncio.run(get(f"https://other.test:{server.port}/secure"))
        assert info.value.code == "tls_error" and not info.value.retryable
        assert len(server.requests) == 1
