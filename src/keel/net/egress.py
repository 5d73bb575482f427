"""Outbound HTTP that cannot be turned against the machine it runs on (ATTACKS.md #31, SSRF).

``EgressPolicy`` decides whether a URL may be fetched. It parses the URL with the same parser
that sends it (httpx's), refuses schemes other than http(s), credentials in the URL and odd
hosts, resolves the host **once** and refuses if *any* address it resolves to is loopback,
private, link-local (cloud metadata at 169.254.169.254 included), shared (100.64/10), multicast,
reserved, unspecified, site- or unique-local, or otherwise not global. IPv4 addresses hidden in
IPv6 ones (``::ffff:127.0.0.1``, 6to4 ``2002::/16``, NAT64 ``64:ff9b::/96``) are unwrapped and
checked too; numeric spellings (``0x7f000001``, ``2130706433``, ``0177.0.0.1``, ``127.1``) are
read the way the operating system reads them. The answer is a ``Target`` holding the addresses
that were checked.

Exceptions are explicit: ``allow`` lists host names, addresses and CIDR ranges an operator trusts
(an internal API on ``10.1.2.3``). A cloud metadata address (169.254.169.254, fd00:ec2::254,
100.100.100.200) is only reachable when that exact address is listed, never through a wider range
or a host name.

``EgressClient`` sends requests that can only reach checked addresses: its connection pool dials
the address the policy pinned for each host (the Host header, TLS SNI and certificate checks
keep the name), so a DNS answer that changes between check and connect (DNS rebinding) changes
nothing, and a host the policy never saw cannot be dialled at all. Redirects are followed by hand,
each hop checked again; credentials are dropped when a redirect leaves the origin. Bodies are
read up to a byte cap (also after gzip/deflate decoding), and every request has an overall
deadline, so neither a huge nor a slow-drip answer holds memory or a worker for long.

Errors: ``EgressDenied`` (a policy refusal; names the host, the address and why, never the URL's
path, query or credentials), ``ToolTimeout`` and ``ToolError`` for transport trouble
(``retryable`` when a retry may help), ``ToolError`` with code ``response_too_large`` or
``too_many_redirects``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import ssl
import threading
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

import httpcore
import httpx

from keel.errors import ConfigError, EgressDenied, ToolError, ToolTimeout

__all__ = [
    "DEFAULT_MAX_RESPONSE_BYTES",
    "METADATA_ADDRESSES",
    "EgressClient",
    "EgressPolicy",
    "EgressResponse",
    "Resolver",
    "Target",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: ``(host, port) -> addresses``: how a policy resolves names. Blocking; called once per check.
Resolver = Callable[[str, int], Sequence[str]]

DEFAULT_MAX_RESPONSE_BYTES: Final = 1024 * 1024

#: Cloud instance-metadata endpoints (AWS/GCP/Azure/OpenStack, AWS IPv6, Alibaba).
METADATA_ADDRESSES: Final[frozenset[IPAddress]] = frozenset(
    {
        ipaddress.ip_address("169.254.169.254"),
        ipaddress.ip_address("fd00:ec2::254"),
        ipaddress.ip_address("100.100.100.200"),
    }
)

_SHARED = ipaddress.ip_network("100.64.0.0/10")
_UNIQUE_LOCAL = ipaddress.ip_network("fc00::/7")
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_HOSTNAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*")
_NUMERIC_LABELS = re.compile(r"[0-9][0-9a-fx]*(?:\.[0-9][0-9a-fx]*){0,3}")
_REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})
#: Headers kept when a redirect leaves the origin; everything else a caller set is dropped.
_CROSS_ORIGIN_KEEP: Final = frozenset({"accept", "accept-language", "user-agent"})


def _classify(address: IPAddress) -> str | None:
    """Why ``address`` must not be reached, or None when it is a public address."""
    if address.is_loopback:
        return "loopback address"
    if address.is_unspecified:
        return "unspecified address"
    if address.is_link_local:
        return "link-local address"
    if address.is_multicast:
        return "multicast address"
    if isinstance(address, ipaddress.IPv4Address) and address in _SHARED:
        return "shared address space (100.64.0.0/10)"
    if isinstance(address, ipaddress.IPv6Address):
        if address.is_site_local:
            return "site-local address"
        if address in _UNIQUE_LOCAL:
            return "unique-local address"
    if address.is_reserved:
        return "reserved address"
    if address.is_private:
        return "private address"
    if not address.is_global:
        return "non-global address"
    return None


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped, 6to4, NAT64, IPv4-compatible), if any."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if any(address in net for net in _NAT64):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if int(address) >> 32 == 0 and int(address) > 1:  # ::a.b.c.d (deprecated compatible form)
        return ipaddress.IPv4Address(int(address))
    return None


def _parse_address(text: str) -> IPAddress | None:
    """``text`` as an IP address the way the OS reads it (inet_aton forms included), or None."""
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        pass
    if _NUMERIC_LABELS.fullmatch(text):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(text))
        except OSError:
            return None
    return None


def _normalize_host(host: str) -> str:
    host = host.lower()
    return host[:-1] if host.endswith(".") else host


@dataclass(frozen=True, slots=True)
class Target:
    """A URL the policy checked: where it goes and the addresses it may be connected to.

    ``ip`` is the pinned address (the first of ``addresses``); connections go to these addresses
    only, never to a fresh DNS answer. ``host`` is the normalized name (lowercase, no trailing
    dot); ``url`` the URL as given.
    """

    url: str
    scheme: str
    host: str
    port: int
    ip: str
    addresses: tuple[str, ...]


class EgressPolicy:
    """Which URLs outbound requests may reach. Immutable and thread-safe.

    ``allow``: host names (exact, case-insensitive), IP addresses and CIDR ranges that may be
    reached although they are not public. ``schemes``: accepted URL schemes (http and https).
    ``resolver``: how names are resolved (default: the system's ``getaddrinfo``); a custom one is
    for tests and embedders, and must return every address the name has.
    """

    def __init__(
        self,
        allow: Iterable[str] = (),
        *,
        schemes: Iterable[str] = ("https", "http"),
        resolver: Resolver | None = None,
    ) -> None:
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        exact: set[IPAddress] = set()
        for entry in allow:
            text = entry.strip() if isinstance(entry, str) else ""
            if text.startswith("[") and text.endswith("]"):
                text = text[1:-1]
            try:
                network = ipaddress.ip_network(text, strict=False)
            except ValueError:
                network = None
            if network is not None:
                networks.append(network)
                if network.num_addresses == 1:
                    exact.add(network.network_address)
                continue
            name = _normalize_host(text)
            try:
                name = name.encode("idna").decode("ascii")
            except UnicodeError:
                name = ""
            if not _HOSTNAME.fullmatch(name):
                raise ConfigError(
                    f"egress_allow entry {entry!r} is not a host name, IP address or CIDR range",
                    context={"key": "egress_allow"},
                )
            hosts.add(name)
        self.schemes: frozenset[str] = frozenset(s.lower() for s in schemes)
        unknown = self.schemes - {"http", "https"}
        if unknown:
            raise ConfigError(
                f"egress schemes may only be http and https, not {', '.join(sorted(unknown))}",
                context={"key": "schemes"},
            )
        self._hosts = frozenset(hosts)
        self._networks = tuple(networks)
        self._exact = frozenset(exact)
        self._resolver = resolver

    def __repr__(self) -> str:
        allow = sorted(self._hosts) + [str(n) for n in self._networks]
        return f"EgressPolicy(allow={allow!r}, schemes={sorted(self.schemes)!r})"

    # -- checks ------------------------------------------------------------------------------

    def _parse(self, url: str) -> tuple[httpx.URL, str, str, int]:
        """Parse and check ``url`` without resolving: ``(url, raw host, host, port)``."""
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, TypeError, ValueError):
            raise EgressDenied(
                "the URL is malformed", context={"reason": "malformed URL"}
            ) from None
        scheme = parsed.scheme.lower()
        if scheme not in self.schemes:
            shown = scheme or "(none)"
            raise EgressDenied(
                f"URL scheme {shown!r} is not allowed; only {', '.join(sorted(self.schemes))}",
                context={"scheme": shown, "reason": "scheme"},
            )
        if parsed.userinfo:
            raise EgressDenied(
                "URLs with credentials (user:password@host) are not allowed",
                context={"reason": "userinfo"},
            )
        raw_host = parsed.raw_host.decode("ascii", "replace")
        if not raw_host:
            raise EgressDenied("the URL has no host", context={"reason": "empty host"})
        host = _normalize_host(raw_host)
        if "%" in host or (_parse_address(host) is None and not _HOSTNAME.fullmatch(host)):
            raise EgressDenied(
                f"host {host[:100]!r} is not a valid host name or address",
                context={"host": host[:100], "reason": "invalid host"},
            )
        port = parsed.port or (443 if scheme == "https" else 80)
        return parsed, raw_host, host, port

    def _check(self, url: str, host: str, port: int, scheme: str, found: Sequence[str]) -> Target:
        if not found:
            raise EgressDenied(
                f"host {host} resolved to no address", context={"host": host, "reason": "dns"}
            )
        host_allowed = host in self._hosts
        addresses: list[str] = []
        for text in found:
            address = _parse_address(text.split("%", 1)[0])
            if address is None:
                raise EgressDenied(
                    f"host {host} resolved to an unreadable address {text[:60]!r}",
                    context={"host": host, "reason": "dns"},
                )
            reason = self._refusal(address, host_allowed)
            if reason is not None:
                raise EgressDenied(
                    f"request to {host} refused: it resolves to {address} ({reason})",
                    context={"host": host, "address": str(address), "reason": reason},
                )
            addresses.append(str(address))
        unique = tuple(dict.fromkeys(addresses))
        return Target(url=url, scheme=scheme, host=host, port=port, ip=unique[0], addresses=unique)

    def _refusal(self, address: IPAddress, host_allowed: bool) -> str | None:
        embedded = _embedded_ipv4(address)
        candidates = [address] if embedded is None else [embedded, address]
        if any(a in METADATA_ADDRESSES for a in candidates):
            if any(a in self._exact for a in candidates):
                return None
            return "cloud metadata address"
        if host_allowed or any(a in net for a in candidates for net in self._networks):
            return None
        for candidate in candidates:
            reason = _classify(candidate)
            if reason is not None:
                if candidate is embedded:
                    return f"{reason}, {embedded} embedded in an IPv6 address"
                return reason
        return None

    def precheck(self, url: str) -> None:
        """Check what can be checked without DNS: scheme, credentials, host syntax, and the
        address itself when the host is a literal one. For config loading."""
        parsed, _raw, host, port = self._parse(url)
        literal = _parse_address(host)
        if literal is not None:
            self._check(url, host, port, parsed.scheme.lower(), [str(literal)])

    def resolve(self, url: str) -> Target:
        """Check ``url`` and resolve its host once (blocking); raise EgressDenied if refused."""
        parsed, raw_host, host, port = self._parse(url)
        return self._check(url, host, port, parsed.scheme.lower(), self._lookup(raw_host, port))

    async def aresolve(self, url: str) -> Target:
        """Async form of :meth:`resolve` (the lookup runs off the event loop)."""
        parsed, raw_host, host, port = self._parse(url)
        literal = _parse_address(_normalize_host(raw_host))
        if literal is not None:
            found: Sequence[str] = [str(literal)]
        elif self._resolver is not None:
            found = await asyncio.to_thread(self._resolver, raw_host, port)
        else:
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(
                    raw_host, port, type=socket.SOCK_STREAM
                )
            except (OSError, UnicodeError):
                raise _unresolvable(host) from None
            found = [str(info[4][0]) for info in infos]
        return self._check(url, host, port, parsed.scheme.lower(), found)

    def _lookup(self, raw_host: str, port: int) -> Sequence[str]:
        literal = _parse_address(_normalize_host(raw_host))
        if literal is not None:
            return [str(literal)]
        if self._resolver is not None:
            return self._resolver(raw_host, port)
        try:
            infos = socket.getaddrinfo(raw_host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            raise _unresolvable(_normalize_host(raw_host)) from None
        return [str(info[4][0]) for info in infos]


def _unresolvable(host: str) -> ToolError:
    return ToolError(
        f"host {host} could not be resolved",
        code="host_unresolvable",
        retryable=True,
        context={"host": host},
    )


# -- the pinned client -------------------------------------------------------------------------


class _PinnedBackend(httpcore.AsyncNetworkBackend):
    """Dials only addresses a policy checked: ``connect_tcp(host)`` goes to ``host``'s pin.

    httpcore passes the name separately to TLS (SNI, certificate), so both keep the host name.
    A host with no pin cannot be dialled (fail closed).
    """

    def __init__(self) -> None:
        self._inner = httpcore.AnyIOBackend()
        self._pins: dict[tuple[str, int], tuple[str, ...]] = {}
        self._lock = threading.Lock()

    def pin(self, raw_host: str, target: Target) -> None:
        with self._lock:
            self._pins[(raw_host.lower(), target.port)] = target.addresses

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        with self._lock:
            addresses = self._pins.get((host.lower(), port))
        if not addresses:
            raise httpcore.ConnectError(f"no checked address for {host}:{port}; refusing to dial")
        error: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    address,
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except httpcore.ConnectError as exc:  # try the next checked address
                error = exc
        assert error is not None
        raise error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not reachable through the egress client")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


@dataclass(frozen=True, slots=True)
class EgressResponse:
    """A response read within the byte cap. ``content`` is decoded (gzip/deflate undone);
    ``truncated`` says the cap cut it (only when the caller asked to truncate); ``url`` is the
    final URL after redirects."""

    status_code: int
    headers: httpx.Headers
    content: bytes
    url: str
    truncated: bool = False
    redirects: tuple[str, ...] = field(default_factory=tuple)

    @property
    def content_type(self) -> str:
        return str(self.headers.get("content-type", "")).split(";", 1)[0].strip().lower()

    @property
    def text(self) -> str:
        """The body as text (the declared charset, else UTF-8; undecodable bytes replaced)."""
        charset = "utf-8"
        for part in self.headers.get("content-type", "").split(";")[1:]:
            key, _, value = part.strip().partition("=")
            if key.lower() == "charset" and value:
                charset = value.strip("\"' ")
        try:
            return self.content.decode(charset, "replace")
        except LookupError:
            return self.content.decode("utf-8", "replace")


class EgressClient:
    """Sends HTTP requests that only reach what ``policy`` allows. Use as an async context.

    ``timeout`` (seconds) bounds each request from first lookup to last byte, redirects
    included; ``max_redirects`` (0: none followed, the 3xx is returned); ``max_response_bytes``
    caps a body. ``ssl_context``: TLS settings (default: httpcore's, certificates verified);
    share one between clients to save loading CA files per client.

    One client may serve concurrent requests on one event loop; do not share it across loops.
    It keeps no cookies and reads no proxy or credential settings from the environment.
    """

    def __init__(
        self,
        policy: EgressPolicy,
        *,
        timeout: float = 10.0,
        max_redirects: int = 5,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        ssl_context: ssl.SSLContext | None = None,
        user_agent: str = "keel",
    ) -> None:
        if timeout <= 0 or max_redirects < 0 or max_response_bytes <= 0:
            raise ValueError("timeout and max_response_bytes must be positive")
        self._policy = policy
        self._timeout = timeout
        self._max_redirects = max_redirects
        self._max_bytes = max_response_bytes
        self._user_agent = user_agent
        self._backend = _PinnedBackend()
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context, network_backend=self._backend, max_connections=10
        )

    async def __aenter__(self) -> EgressClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._pool.aclose()

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
        truncate: bool = False,
    ) -> EgressResponse:
        """Send one request, following redirects; return the response read within the cap.

        Over the cap: a ``ToolError`` (code ``response_too_large``), or with ``truncate`` the
        first ``max_response_bytes`` bytes and ``truncated=True``.
        """
        try:
            async with asyncio.timeout(self._timeout):
                return await self._follow(
                    method.upper(), url, dict(headers or {}), content, truncate
                )
        except TimeoutError:
            raise ToolTimeout(
                f"no complete answer within {self._timeout}s", context={"timeout": self._timeout}
            ) from None

    async def _follow(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        content: bytes | None,
        truncate: bool,
    ) -> EgressResponse:
        hops: list[str] = []
        origin: tuple[str, str, int] | None = None
        while True:
            target = await self._policy.aresolve(url)
            hop_origin = (target.scheme, target.host, target.port)
            if origin is not None and hop_origin != origin:
                headers = {k: v for k, v in headers.items() if k.lower() in _CROSS_ORIGIN_KEEP}
            origin = hop_origin
            parsed = httpx.URL(url)
            self._backend.pin(parsed.raw_host.decode("ascii"), target)
            status, raw_headers, stream = await self._send(method, parsed, headers, content)
            response_headers = httpx.Headers(raw_headers)
            if status not in _REDIRECTS or self._max_redirects == 0:
                body, truncated = await self._read(stream, response_headers, truncate, target.host)
                return EgressResponse(status, response_headers, body, url, truncated, tuple(hops))
            await stream.aclose()
            location = response_headers.get("location")
            if not location:
                return EgressResponse(status, response_headers, b"", url, False, tuple(hops))
            if len(hops) >= self._max_redirects:
                raise ToolError(
                    f"more than {self._max_redirects} redirects, the last from {target.host}",
                    code="too_many_redirects",
                    context={"host": target.host, "max_redirects": self._max_redirects},
                )
            try:
                url = str(parsed.join(location))
            except (httpx.InvalidURL, ValueError, TypeError):
                raise EgressDenied(
                    f"{target.host} redirected to a malformed URL",
                    context={"host": target.host, "reason": "malformed redirect"},
                ) from None
            hops.append(url)
            if status == 303 or (status in (301, 302) and method == "POST"):
                method, content = ("HEAD" if method == "HEAD" else "GET"), None
                headers = {k: v for k, v in headers.items() if k.lower() != "content-type"}

    async def _send(
        self,
        method: str,
        url: httpx.URL,
        headers: Mapping[str, str],
        content: bytes | None,
    ) -> tuple[int, list[tuple[bytes, bytes]], httpcore.Response]:
        # httpx builds the request (Host, Content-Length, header checks); httpcore sends it.
        host = url.host
        try:
            request = httpx.Request(
                method,
                url,
                headers={"User-Agent": self._user_agent, "Accept-Encoding": "identity", **headers},
                content=content,
            )
        except (UnicodeError, ValueError, TypeError):  # no detail: it may quote a header value
            raise ToolError(
                f"the request to {host} cannot be encoded (a header or the URL is not valid)",
                code="invalid_request",
                context={"host": host},
            ) from None
        timeout = {
            "connect": self._timeout,
            "read": self._timeout,
            "write": self._timeout,
            "pool": self._timeout,
        }
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=content or b"",
            extensions={"timeout": timeout},
        )
        try:
            response = await self._pool.handle_async_request(core_request)
        except httpcore.TimeoutException:
            raise ToolTimeout(f"{host} did not answer in time", context={"host": host}) from None
        except httpcore.LocalProtocolError:  # no detail: it may quote a header value
            raise ToolError(
                f"the request to {host} is malformed (a header or the URL is not valid)",
                code="invalid_request",
                context={"host": host},
            ) from None
        except httpcore.ConnectError as exc:
            if _is_certificate_failure(exc):
                raise ToolError(
                    f"the TLS certificate of {host} could not be verified",
                    code="tls_error",
                    retryable=False,
                    context={"host": host},
                ) from None
            raise ToolError(
                f"could not connect to {host}",
                code="upstream_unreachable",
                retryable=True,
                context={"host": host},
            ) from None
        except (httpcore.NetworkError, httpcore.ProtocolError) as exc:
            raise ToolError(
                f"the connection to {host} failed ({type(exc).__name__})",
                code="upstream_protocol_error",
                retryable=True,
                context={"host": host},
            ) from None
        return response.status, list(response.headers), response

    async def _read(
        self,
        response: httpcore.Response,
        headers: httpx.Headers,
        truncate: bool,
        host: str,
    ) -> tuple[bytes, bool]:
        cap = self._max_bytes
        encoding = headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("identity", "", "gzip", "x-gzip", "deflate"):
            await response.aclose()
            raise ToolError(
                f"{host} answered with unsupported content-encoding {encoding[:40]!r}",
                code="upstream_protocol_error",
                context={"host": host},
            )
        declared = headers.get("content-length", "")
        identity = encoding in ("identity", "")
        if not truncate and identity and declared.isdigit() and int(declared) > cap:
            await response.aclose()
            raise _too_large(host, cap)
        decoder = _Decoder(encoding)
        chunks: list[bytes] = []
        size = 0
        truncated = False
        try:
            async for raw in response.aiter_stream():
                piece = decoder.feed(raw, cap - size + 1)
                chunks.append(piece)
                size += len(piece)
                if size > cap:
                    if not truncate:
                        raise _too_large(host, cap)
                    truncated = True
                    break
            else:
                tail = decoder.flush(cap - size + 1)
                chunks.append(tail)
                size += len(tail)
                if size > cap:
                    if not truncate:
                        raise _too_large(host, cap)
                    truncated = True
        except httpcore.TimeoutException:
            raise ToolTimeout(
                f"{host} stopped sending the answer", context={"host": host}
            ) from None
        except (httpcore.NetworkError, httpcore.ProtocolError) as exc:
            raise ToolError(
                f"reading the answer from {host} failed ({type(exc).__name__})",
                code="upstream_protocol_error",
                retryable=True,
                context={"host": host},
            ) from None
        except zlib.error:
            raise ToolError(
                f"{host} sent a body that does not decompress",
                code="upstream_protocol_error",
                context={"host": host},
            ) from None
        finally:
            await response.aclose()
        return b"".join(chunks)[:cap], truncated


class _Decoder:
    """Undoes gzip/deflate with a bound on the output of each step (no decompression bombs)."""

    def __init__(self, encoding: str) -> None:
        self._zlib: zlib._Decompress | None = None
        if encoding in ("gzip", "x-gzip"):
            self._zlib = zlib.decompressobj(zlib.MAX_WBITS | 16)
        elif encoding == "deflate":
            self._zlib = zlib.decompressobj()
        self._pending = b""

    def feed(self, data: bytes, limit: int) -> bytes:
        if self._zlib is None:
            return data
        out = self._zlib.decompress(self._pending + data, max(1, limit))
        self._pending = self._zlib.unconsumed_tail
        return out

    def flush(self, limit: int) -> bytes:
        if self._zlib is None:
            return b""
        out = self._zlib.decompress(self._pending, max(1, limit))
        self._pending = self._zlib.unconsumed_tail
        return out


def _is_certificate_failure(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _too_large(host: str, cap: int) -> ToolError:
    return ToolError(
        f"the answer from {host} is larger than {cap} bytes",
        code="response_too_large",
        context={"host": host, "limit": cap},
    )
