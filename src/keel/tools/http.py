"""HTTP tools: a REST endpoint declared in config (``http_tools:`` in keel.yaml) as a tool.

Each entry names a tool and says how a call becomes one HTTP request and how the answer becomes
the tool's result (format and example: ``docs/http-tools.md``). Loading checks the whole entry
up front and names the tool and key of the first problem (``ConfigError``).

A call is built so that arguments cannot change where it goes (ATTACKS.md #30, #31):

- the scheme, host and port are fixed in the template; arguments fill only path placeholders,
  each value percent-encoded as exactly one path segment (``/`` ``%`` ``?`` ``#`` ``\\`` NUL all
  encoded), and ``.``, ``..`` and empty values are refused outright; query parameters and JSON
  body fields are encoded as data;
- the URL goes through the ``EgressPolicy`` (no private, loopback or metadata addresses unless
  allowed) and the connection is pinned to the checked address; redirects are re-checked.

Credentials come from the secret store at call time (``{secret:NAME}`` in a header value) and
are never kept by the tool: not in its spec, ``describe()``, ``repr`` or errors. Every text that
leaves a call (result strings, error messages) has each resolved secret value replaced by
``***``, in case the server echoes it.

Outcomes: a 2xx JSON answer becomes the selected/mapped value; a 2xx answer that is not JSON
becomes ``{"status", "text"}`` (text cut at 16 KiB, ``"truncated": true`` when cut). A 4xx is a
non-retryable ``ToolError`` (code ``upstream_client_error``), a 5xx, timeout or connection failure
a retryable one; an answer over ``max_response_bytes`` a ``ToolError`` (``response_too_large``).
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import json
import re
import ssl
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Final, Literal
from urllib.parse import quote, urlencode

import httpx

from keel.canonical import canonical_json, parse_json
from keel.core import Effect
from keel.errors import (
    ConfigError,
    EgressDenied,
    InvalidRequestError,
    KeelError,
    SecretNotFound,
    ToolError,
    ToolResultInvalid,
    UsageError,
)
from keel.net import DEFAULT_MAX_RESPONSE_BYTES, EgressClient, EgressPolicy, EgressResponse
from keel.secrets import SecretRef, SecretStore, parse_ref
from keel.tools.contract import JSONSchemaValidator, ToolContext, ToolSpec
from keel.tools.function import Tool
from keel.tools.names import check_tool_name

__all__ = ["HttpEndpoint", "HttpTool", "load_http_tools"]

METHODS: Final = ("GET", "POST", "PUT", "PATCH", "DELETE")
_BODY_METHODS: Final = frozenset({"POST", "PUT", "PATCH"})
_EFFECTS: Final = ("read", "reversible", "irreversible")
_KEYS: Final = frozenset(
    {
        "description",
        "method",
        "url",
        "scope",
        "effect",
        "arguments",
        "query",
        "headers",
        "body",
        "response",
        "timeout_seconds",
        "idempotent",
        "cost_usd",
        "max_response_bytes",
        "max_redirects",
        "sensitive",
    }
)
#: Headers Keel sets itself, or that would change how the request is framed or routed.
_RESERVED_HEADERS: Final = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "upgrade",
        "te",
        "trailer",
        "keep-alive",
        "proxy-authorization",
        "proxy-connection",
        "accept-encoding",
        "idempotency-key",
    }
)
TEXT_LIMIT: Final = 16 * 1024
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_ARG = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}")
_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)([^?#]*)(?:\?([^#]*))?")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")

_Dotted = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class _Arg:
    """A path placeholder: the argument whose value fills it."""

    name: str


@dataclass(frozen=True, slots=True)
class HttpEndpoint:
    """One ``http_tools`` entry, checked: everything needed to build and read a request.

    Holds secret *references* only (``headers`` parts are text or ``SecretRef``), never values.
    """

    name: str
    description: str
    method: str
    url: str
    origin: str
    path: tuple[str | _Arg, ...]
    fixed_query: str
    scope: str
    effect: Effect
    arguments: Mapping[str, Any]
    query: tuple[tuple[str, str], ...] = ()
    headers: tuple[tuple[str, tuple[str | SecretRef, ...]], ...] = ()
    body: Literal["arguments"] | tuple[tuple[str, str], ...] | None = None
    select: _Dotted | None = None
    fields: tuple[tuple[str, _Dotted], ...] | None = None
    timeout_seconds: float = 10.0
    idempotent: bool = False
    cost_usd: Decimal = Decimal("0")
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    max_redirects: int = 5
    sensitive: bool = False
    validator: JSONSchemaValidator | None = field(default=None, compare=False, repr=False)

    @classmethod
    def parse(
        cls,
        name: str,
        spec: Mapping[str, Any],
        *,
        egress: EgressPolicy | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> HttpEndpoint:
        """Check one config entry; raise ConfigError naming the tool and the offending key."""
        return _Parser(name, spec, egress, max_response_bytes).parse()


class _Parser:
    def __init__(
        self,
        name: str,
        spec: Mapping[str, Any],
        egress: EgressPolicy | None,
        max_response_bytes: int,
    ) -> None:
        self.name = name
        self.spec = spec
        self.egress = egress
        self.default_max_bytes = max_response_bytes

    def fail(self, key: str | None, message: str) -> ConfigError:
        where = f"http_tools.{self.name}" + (f".{key}" if key else "")
        return ConfigError(f"{where}: {message}", context={"tool": self.name, "key": where})

    def parse(self) -> HttpEndpoint:
        try:
            check_tool_name(self.name)
        except InvalidRequestError as exc:
            raise self.fail(None, exc.message) from None
        if not isinstance(self.spec, Mapping):
            raise self.fail(None, "must be a mapping of settings (method, url, scope, ...)")
        unknown = sorted(str(k) for k in self.spec if k not in _KEYS)
        if unknown:
            raise self.fail(
                unknown[0], f"unknown key; accepted keys are {', '.join(sorted(_KEYS))}"
            )
        method = self.spec.get("method", "GET")
        if not isinstance(method, str) or method.upper() not in METHODS:
            raise self.fail("method", f"{method!r} is not one of {', '.join(METHODS)}")
        method = method.upper()
        validator = self._validator()
        schema = dict(validator.json_schema)
        properties: Mapping[str, Any] = schema.get("properties") or {}
        required = set(schema.get("required") or ())
        origin, path, fixed_query, url = self._url(properties, required)
        effect = self.spec.get("effect", "read" if method == "GET" else "irreversible")
        if effect not in _EFFECTS:
            raise self.fail("effect", f"{effect!r} is not one of {', '.join(_EFFECTS)}")
        scope = self.spec.get("scope")
        if not isinstance(scope, str) or not scope.strip():
            raise self.fail("scope", "a required scope such as 'crm:read' is needed")
        description = self.spec.get("description", "")
        if not isinstance(description, str):
            raise self.fail("description", "must be text")
        body = self._body(method, properties)
        select, fields = self._response()
        return HttpEndpoint(
            name=self.name,
            description=description.strip(),
            method=method,
            url=url,
            origin=origin,
            path=path,
            fixed_query=fixed_query,
            scope=scope.strip(),
            effect=effect,
            arguments=schema,
            validator=validator,
            query=self._mapping("query", properties),
            headers=self._headers(),
            body=body,
            select=select,
            fields=fields,
            timeout_seconds=self._number("timeout_seconds", 10.0, 600.0),
            idempotent=self._flag("idempotent"),
            cost_usd=self._cost(),
            max_response_bytes=int(
                self._number("max_response_bytes", self.default_max_bytes, 256 * 1024 * 1024, True)
            ),
            max_redirects=int(self._number("max_redirects", 5, 20, True, minimum=0)),
            sensitive=self._flag("sensitive"),
        )

    def _validator(self) -> JSONSchemaValidator:
        raw = self.spec.get("arguments", {"type": "object", "properties": {}})
        if not isinstance(raw, Mapping):
            raise self.fail("arguments", "must be a JSON schema of an object")
        try:
            return JSONSchemaValidator(raw)
        except UsageError as exc:
            raise self.fail("arguments", exc.message) from None

    def _url(
        self, properties: Mapping[str, Any], required: set[str]
    ) -> tuple[str, tuple[str | _Arg, ...], str, str]:
        url = self.spec.get("url")
        if not isinstance(url, str) or not url:
            raise self.fail("url", "a URL template such as https://api.example.com/items/{id}")
        if "#" in url:
            raise self.fail("url", "a URL template must not have a fragment (#...)")
        match = _URL.fullmatch(url)
        if match is None or "{" in match.group(1) or "{" in match.group(2):
            if "{" in url.partition("://")[0] or (match and "{" in match.group(2)):
                raise self.fail("url", "the scheme, host and port must be fixed (no placeholders)")
            raise self.fail("url", f"{url[:200]!r} is not an absolute http(s) URL")
        scheme, authority, path_t, query_t = match.group(1, 2, 3, 4)
        if scheme.lower() not in ("http", "https"):
            raise self.fail("url", f"scheme {scheme!r} is not allowed; use http or https")
        if not authority or "}" in authority:
            raise self.fail("url", "must name a fixed host (https://api.example.com/...)")
        if path_t and not path_t.startswith("/"):
            raise self.fail("url", "the path must start with '/'")
        if query_t and ("{" in query_t or "}" in query_t):
            raise self.fail(
                "url", "placeholders belong in the path; map query parameters in query:"
            )
        parts: list[str | _Arg] = []
        seen: set[str] = set()
        for index, piece in enumerate(_PLACEHOLDER.split(path_t)):
            if index % 2 == 0:
                if "{" in piece or "}" in piece:
                    raise self.fail("url", "unbalanced '{' or '}' in the path")
                if piece:
                    parts.append(piece)
                continue
            if not _ARG.fullmatch(piece):
                raise self.fail("url", f"placeholder {{{piece}}} is not an argument name")
            prop = properties.get(piece)
            if not isinstance(prop, Mapping):
                raise self.fail(
                    "url", f"placeholder {{{piece}}} is not declared under arguments.properties"
                )
            if piece not in required:
                raise self.fail("url", f"placeholder {{{piece}}} must be a required argument")
            if prop.get("type") not in ("string", "integer"):
                raise self.fail(
                    "url", f"placeholder {{{piece}}} must be an argument of type string or integer"
                )
            if piece in seen:
                raise self.fail("url", f"placeholder {{{piece}}} appears twice")
            seen.add(piece)
            parts.append(_Arg(piece))
        origin = f"{scheme.lower()}://{authority}"
        sample = origin + "".join(p if isinstance(p, str) else "x" for p in parts)
        sample += f"?{query_t}" if query_t else ""
        try:
            parsed = httpx.URL(sample)
        except (httpx.InvalidURL, ValueError, TypeError) as exc:
            raise self.fail("url", f"{url[:200]!r} is not a valid URL: {exc}") from None
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise self.fail("url", "must be an http:// or https:// URL with a host")
        if parsed.userinfo:
            raise self.fail("url", "credentials belong in headers: with {secret:...}, not the URL")
        if self.egress is not None:
            try:
                self.egress.precheck(sample)
            except EgressDenied as exc:
                raise self.fail("url", exc.message) from None
        return origin, tuple(parts), query_t or "", url

    def _mapping(self, key: str, properties: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
        raw = self.spec.get(key)
        if raw is None:
            return ()
        if not isinstance(raw, Mapping):
            raise self.fail(key, "must map names to argument names")
        pairs: list[tuple[str, str]] = []
        for out, arg in raw.items():
            if not isinstance(out, str) or not out:
                raise self.fail(key, f"{out!r} is not a name")
            if not isinstance(arg, str) or arg not in properties:
                raise self.fail(
                    f"{key}.{out}", f"{arg!r} is not declared under arguments.properties"
                )
            prop = properties[arg]
            if key == "query" and isinstance(prop, Mapping) and prop.get("type") == "object":
                raise self.fail(f"{key}.{out}", f"argument {arg!r} is an object; not a query value")
            pairs.append((out, arg))
        return tuple(pairs)

    def _headers(self) -> tuple[tuple[str, tuple[str | SecretRef, ...]], ...]:
        raw = self.spec.get("headers")
        if raw is None:
            return ()
        if not isinstance(raw, Mapping):
            raise self.fail("headers", "must map header names to values")
        out: list[tuple[str, tuple[str | SecretRef, ...]]] = []
        for header, value in raw.items():
            if not isinstance(header, str) or not _HEADER_NAME.fullmatch(header):
                raise self.fail("headers", f"{header!r} is not a header name")
            if header.lower() in _RESERVED_HEADERS:
                raise self.fail(f"headers.{header}", "Keel sets this header itself")
            if not isinstance(value, str):
                raise self.fail(f"headers.{header}", "the value must be text")
            if _CONTROL.search(value.replace("\t", " ")):
                raise self.fail(f"headers.{header}", "the value has a control character")
            parts: list[str | SecretRef] = []
            for index, piece in enumerate(_PLACEHOLDER.split(value)):
                if index % 2 == 0:
                    if "{" in piece or "}" in piece:
                        raise self.fail(f"headers.{header}", "unbalanced '{' or '}'")
                    if piece:
                        parts.append(piece)
                    continue
                if not piece.startswith("secret:"):
                    raise self.fail(
                        f"headers.{header}",
                        f"{{{piece}}} is not a secret reference; write {{secret:NAME}}, "
                        "{secret:env:VAR} or {secret:file:PATH}",
                    )
                ref = piece[len("secret:") :]
                if not ref.startswith(("env:", "file:", "store:")):
                    ref = f"store:{ref}"
                try:
                    parts.append(parse_ref(ref))
                except ConfigError as exc:
                    raise self.fail(f"headers.{header}", exc.message) from None
            out.append((header, tuple(parts)))
        return tuple(out)

    def _body(
        self, method: str, properties: Mapping[str, Any]
    ) -> Literal["arguments"] | tuple[tuple[str, str], ...] | None:
        raw = self.spec.get("body")
        if raw is None:
            return None
        if method not in _BODY_METHODS:
            raise self.fail("body", f"a {method} request has no body; use query: or the path")
        if raw == "arguments":
            return "arguments"
        if not isinstance(raw, Mapping):
            raise self.fail("body", "must be 'arguments' or map JSON fields to argument names")
        return self._mapping("body", properties)

    def _response(self) -> tuple[_Dotted | None, tuple[tuple[str, _Dotted], ...] | None]:
        raw = self.spec.get("response")
        if raw is None:
            return None, None
        if not isinstance(raw, Mapping):
            raise self.fail("response", "must be a mapping with select: and/or fields:")
        unknown = sorted(str(k) for k in raw if k not in ("select", "fields"))
        if unknown:
            raise self.fail(f"response.{unknown[0]}", "unknown key; use select and fields")
        select = None
        if raw.get("select") is not None:
            select = self._path("response.select", raw["select"])
        fields = None
        if raw.get("fields") is not None:
            if not isinstance(raw["fields"], Mapping) or not raw["fields"]:
                raise self.fail("response.fields", "must map output keys to dotted paths")
            fields = tuple(
                (str(k), self._path(f"response.fields.{k}", v)) for k, v in raw["fields"].items()
            )
        return select, fields

    def _path(self, key: str, text: object) -> _Dotted:
        if not isinstance(text, str) or not text or any(not s for s in text.split(".")):
            raise self.fail(key, f"{text!r} is not a dotted path such as data.contact")
        return tuple(int(s) if s.isdigit() else s for s in text.split("."))

    def _number(
        self,
        key: str,
        default: float,
        maximum: float,
        integer: bool = False,
        *,
        minimum: float | None = None,
    ) -> float:
        raw = self.spec.get(key, default)
        if (
            isinstance(raw, bool)
            or not isinstance(raw, (int, float))
            or (integer and not isinstance(raw, int))
        ):
            raise self.fail(key, f"{raw!r} is not {'an integer' if integer else 'a number'}")
        value = float(raw)
        low_ok = value >= minimum if minimum is not None else value > 0
        if not low_ok or value > maximum:
            floor = f"at least {minimum}" if minimum is not None else "positive"
            raise self.fail(key, f"{raw!r} must be {floor} and at most {maximum:g}")
        return value

    def _flag(self, key: str) -> bool:
        value = self.spec.get(key, False)
        if not isinstance(value, bool):
            raise self.fail(key, f"{value!r} is not true or false")
        return value

    def _cost(self) -> Decimal:
        raw = self.spec.get("cost_usd", "0")
        if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
            raise self.fail("cost_usd", f"{raw!r} is not an amount")
        try:
            cost = Decimal(str(raw))
        except InvalidOperation:
            raise self.fail("cost_usd", f"{raw!r} is not an amount") from None
        if not cost.is_finite() or cost < 0:
            raise self.fail("cost_usd", "must be zero or a positive amount")
        return cost


class _SharedTLS:
    """One TLS context for the tools of one load, made on the first https call."""

    def __init__(self) -> None:
        self._context: ssl.SSLContext | None = None
        self._lock = threading.Lock()

    def get(self) -> ssl.SSLContext:
        with self._lock:
            if self._context is None:
                import httpcore

                self._context = httpcore.default_ssl_context()
            return self._context


@dataclass(slots=True)
class _Scrubber:
    """Replaces every resolved secret value (and its URL- and JSON-escaped forms) with ***."""

    forms: list[str] = field(default_factory=list)

    def add(self, value: str) -> None:
        for form in (value, quote(value, safe=""), json.dumps(value)[1:-1]):
            if form and form not in self.forms:
                self.forms.append(form)
        self.forms.sort(key=len, reverse=True)

    def text(self, text: str) -> str:
        for form in self.forms:
            if form in text:
                text = text.replace(form, "***")
        return text

    def value(self, value: Any) -> Any:
        if not self.forms:
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.text(k): self.value(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.value(v) for v in value]
        return value


class HttpTool(Tool):
    """An ``HttpEndpoint`` as a tool: builds the request, sends it through the egress policy,
    maps the answer. Async; ``invoke`` runs ``ainvoke`` on a fresh event loop (refused inside
    a running loop: use the async API). Thread-safe: calls share nothing but the TLS context.
    """

    is_async = True

    def __init__(
        self,
        endpoint: HttpEndpoint,
        *,
        secrets: SecretStore,
        egress: EgressPolicy,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.endpoint = endpoint
        self._secrets = secrets
        self._egress = egress
        self._tls: ssl.SSLContext | _SharedTLS = tls if tls is not None else _SharedTLS()
        try:
            validator = endpoint.validator or JSONSchemaValidator(endpoint.arguments)
            self.spec = ToolSpec(
                name=endpoint.name,
                description=endpoint.description,
                arguments=validator,
                scope=endpoint.scope,
                effect=endpoint.effect,
                timeout=_dt.timedelta(seconds=endpoint.timeout_seconds),
                idempotent=endpoint.idempotent,
                cost_usd=endpoint.cost_usd,
                sensitive=endpoint.sensitive,
                tags=("http",),
                metadata={"http": {"method": endpoint.method, "url": endpoint.url}},
            )
        except UsageError as exc:
            raise ConfigError(
                f"http_tools.{endpoint.name}: {exc.message}",
                context={"tool": endpoint.name, "key": f"http_tools.{endpoint.name}"},
            ) from None

    @classmethod
    def from_config(
        cls,
        name: str,
        spec: Mapping[str, Any],
        *,
        secrets: SecretStore,
        egress: EgressPolicy,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> HttpTool:
        endpoint = HttpEndpoint.parse(
            name, spec, egress=egress, max_response_bytes=max_response_bytes
        )
        return cls(endpoint, secrets=secrets, egress=egress)

    def __repr__(self) -> str:
        return f"HttpTool({self.endpoint.name!r}, {self.endpoint.method} {self.endpoint.url})"

    # -- the call ----------------------------------------------------------------------------

    def invoke(self, arguments: dict[str, Any], context: ToolContext) -> Any:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.ainvoke(arguments, context))
        raise UsageError(
            f"tool {self.spec.name} is async and the sync API was called inside an event loop; "
            "use the async API (acall)"
        )

    async def ainvoke(self, arguments: dict[str, Any], context: ToolContext) -> Any:
        endpoint = self.endpoint
        url = self.build_url(arguments)
        content = self._content(arguments)
        scrub = _Scrubber()
        headers = {"Accept": "application/json"}
        if endpoint.headers:
            headers.update(await asyncio.to_thread(self._resolve_headers, scrub))
        if content is not None:
            headers["Content-Type"] = "application/json"
        if endpoint.idempotent and context.idempotency_key:
            headers["Idempotency-Key"] = context.idempotency_key
        tls: ssl.SSLContext | None = None
        if url.startswith("https:"):  # loading CA certificates is not free: only when needed
            tls = self._tls.get() if isinstance(self._tls, _SharedTLS) else self._tls
        try:
            async with EgressClient(
                self._egress,
                timeout=endpoint.timeout_seconds,
                max_redirects=endpoint.max_redirects,
                max_response_bytes=endpoint.max_response_bytes,
                ssl_context=tls,
            ) as client:
                response = await client.request(
                    endpoint.method, url, headers=headers, content=content
                )
        except KeelError as exc:
            raise self._rewrap(exc, scrub) from None
        except Exception as exc:  # never let a library message (it may quote a URL) through
            raise ToolError(
                f"tool {endpoint.name}: the request failed ({type(exc).__name__})",
                context={"tool": endpoint.name, "exception": type(exc).__name__},
            ) from None
        return self._result(response, scrub)

    def build_url(self, arguments: Mapping[str, Any]) -> str:
        """The request URL for ``arguments``: path values as single encoded segments."""
        endpoint = self.endpoint
        path: list[str] = []
        for part in endpoint.path:
            if isinstance(part, str):
                path.append(part)
                continue
            value = arguments.get(part.name)
            if isinstance(value, bool) or not isinstance(value, (str, int)):
                raise self._bad_argument(part.name, "must be a string or an integer")
            text = str(value)
            if text in ("", ".", ".."):
                raise self._bad_argument(part.name, f"{text!r} is not allowed as a path segment")
            path.append(self._encode(part.name, text, lambda t: quote(t, safe="")))
        pairs: list[tuple[str, str]] = []
        for param, arg in endpoint.query:
            if arg not in arguments or arguments[arg] is None:
                continue
            value = arguments[arg]
            for item in value if isinstance(value, list) else [value]:
                pairs.append((param, self._query_value(arg, item)))
        query = "&".join(
            q
            for q in (
                endpoint.fixed_query,
                self._encode("query", pairs, lambda p: urlencode(p, quote_via=quote)),
            )
            if q
        )
        return endpoint.origin + "".join(path) + (f"?{query}" if query else "")

    def _encode(self, argument: str, value: Any, encode: Any) -> str:
        try:
            return str(encode(value))
        except UnicodeError:
            raise self._bad_argument(argument, "is not valid Unicode text") from None

    def _query_value(self, arg: str, item: Any) -> str:
        if isinstance(item, bool):
            return "true" if item else "false"
        if isinstance(item, (str, int, float, Decimal)):
            return str(item)
        raise self._bad_argument(arg, "cannot be sent as a query parameter")

    def _bad_argument(self, argument: str, why: str) -> InvalidRequestError:
        return InvalidRequestError(
            f"arguments for {self.endpoint.name} are invalid: {argument}: {why}",
            code="invalid_arguments",
            context={"tool": self.endpoint.name, "argument": argument},
        )

    def _content(self, arguments: Mapping[str, Any]) -> bytes | None:
        body = self.endpoint.body
        if body is None:
            return None
        if body == "arguments":
            value: Any = dict(arguments)
        else:
            value = {out: arguments[arg] for out, arg in body if arg in arguments}
        return canonical_json(value).encode("utf-8")

    def _resolve_headers(self, scrub: _Scrubber) -> dict[str, str]:
        """Header values with secrets filled in (blocking: reads the store or files)."""
        name = self.endpoint.name
        headers: dict[str, str] = {}
        for header, parts in self.endpoint.headers:
            text: list[str] = []
            for part in parts:
                if isinstance(part, str):
                    text.append(part)
                    continue
                try:
                    value = self._secrets.resolve(part)
                except SecretNotFound as exc:
                    raise ToolError(
                        f"tool {name}: {exc.message}; the request was not sent",
                        code="secret_not_found",
                        context={"tool": name, "ref": str(part)},
                    ) from None
                except ConfigError as exc:
                    raise ToolError(
                        f"tool {name}: {exc.message}; the request was not sent",
                        code=exc.code,
                        context={"tool": name, "ref": str(part)},
                    ) from None
                scrub.add(value)
                if _CONTROL.search(value) or not value.isascii():
                    raise ToolError(
                        f"tool {name}: secret {part} holds a line break, control or non-ASCII "
                        "character and cannot go in a header; the request was not sent",
                        code="secret_invalid",
                        context={"tool": name, "ref": str(part)},
                    )
                text.append(value)
            headers[header] = "".join(text)
        return headers

    def _rewrap(self, exc: KeelError, scrub: _Scrubber) -> KeelError:
        """The same error, its message prefixed with the tool and scrubbed of secret values."""
        context = {**exc.context, "tool": self.endpoint.name}
        message = scrub.text(f"tool {self.endpoint.name}: {exc.message}")
        return type(exc)(message, code=exc.code, retryable=exc.retryable, context=context)

    # -- the answer --------------------------------------------------------------------------

    def _result(self, response: EgressResponse, scrub: _Scrubber) -> Any:
        endpoint = self.endpoint
        status = response.status_code
        host = httpx.URL(response.url).host
        context = {"tool": endpoint.name, "status": status, "host": host}
        if not 200 <= status < 300:
            excerpt = _CONTROL.sub(" ", scrub.text(response.text)[:300]).strip()
            where = f"tool {endpoint.name}: {host} answered HTTP {status}"
            detail = f": {excerpt}" if excerpt else ""
            if status >= 500:
                raise ToolError(
                    where + detail, code="upstream_server_error", retryable=True, context=context
                )
            raise ToolError(
                where + detail, code="upstream_client_error", retryable=False, context=context
            )
        ctype = response.content_type
        is_json = ctype == "application/json" or ctype.endswith("+json")
        mapped = endpoint.select is not None or endpoint.fields is not None
        if not is_json and not mapped:
            text = scrub.text(response.text)
            result: dict[str, Any] = {"status": status, "text": text[:TEXT_LIMIT]}
            if len(text) > TEXT_LIMIT:
                result["truncated"] = True
            return result
        if not response.content and not mapped:
            return {"status": status, "text": ""}
        try:
            value = parse_json(
                response.content,
                max_bytes=endpoint.max_response_bytes,
                what=f"the answer of {endpoint.name}",
            )
        except KeelError as exc:
            raise ToolResultInvalid(
                scrub.text(f"tool {endpoint.name}: {exc.message}"), context=context
            ) from None
        value = scrub.value(value)
        if endpoint.select is not None:
            found, value = _dig(value, endpoint.select)
            if not found:
                dotted = ".".join(str(s) for s in endpoint.select)
                raise ToolResultInvalid(
                    f"tool {endpoint.name}: the answer has no {dotted}", context=context
                )
        if endpoint.fields is not None:
            value = {out: _dig(value, path)[1] for out, path in endpoint.fields}
        return value


def _dig(value: Any, path: Sequence[str | int]) -> tuple[bool, Any]:
    """Follow a dotted path (numbers index lists): ``(found, value)``; missing -> (False, None)."""
    for step in path:
        if isinstance(value, dict) and str(step) in value:
            value = value[str(step)]
        elif isinstance(value, list) and isinstance(step, int) and step < len(value):
            value = value[step]
        else:
            return False, None
    return True, value


def load_http_tools(
    spec: Mapping[str, Any],
    *,
    secrets: SecretStore,
    egress: EgressPolicy,
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
) -> list[HttpTool]:
    """Check every ``http_tools`` entry and build its tool.

    Raises one ConfigError listing the first problem of each bad entry (``context["errors"]``:
    tool, key, message). Secrets are not read here: a missing one fails the call that needs it.
    """
    if not isinstance(spec, Mapping):
        raise ConfigError(
            "http_tools must map tool names to settings", context={"key": "http_tools"}
        )
    tls = _SharedTLS()
    tools: list[HttpTool] = []
    errors: list[ConfigError] = []
    for name, entry in spec.items():
        try:
            endpoint = HttpEndpoint.parse(
                str(name), entry, egress=egress, max_response_bytes=max_response_bytes
            )
            tool = HttpTool(endpoint, secrets=secrets, egress=egress)
        except ConfigError as exc:
            errors.append(exc)
            continue
        tool._tls = tls
        tools.append(tool)
    if errors:
        first = errors[0]
        message = (
            first.message
            if len(errors) == 1
            else (f"{len(errors)} http tools are invalid: " + "; ".join(e.message for e in errors))
        )
        raise ConfigError(
            message,
            context={
                "key": first.context.get("key", "http_tools"),
                "errors": [
                    {
                        "tool": e.context.get("tool"),
                        "key": e.context.get("key"),
                        "message": e.message,
                    }
                    for e in errors
                ],
            },
        )
    return tools
