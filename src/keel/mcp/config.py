"""The ``mcp:`` section of the Keel config: upstream servers and the front door's limits.

```yaml
mcp:
  upstreams:
    time:                                   # the alias: tools appear as time.<tool>
      command: [mcp-server-time, --local-timezone, UTC]
      scope: time:read                      # what a caller needs (default mcp:<alias>)
      effect: read                          # default for its tools (default irreversible)
    crm:
      url: https://mcp.crm.example.com/mcp
      headers: {Authorization: "Bearer {secret:crm_mcp_token}"}   # Keel's own credential
      approve_new_tools: review             # every new tool waits for `keel mcp tools review`
      tools:
        delete_contact: {effect: irreversible, scope: "crm:admin"}
  allowed_hosts: ["127.0.0.1", "localhost", "keel.internal"]
  allowed_origins: ["https://ide.example.com"]
```

Values in ``env`` and ``headers`` may name secrets as ``{secret:NAME}`` (the encrypted store),
``{secret:env:VAR}`` or ``{secret:file:/path}``; they are resolved when the upstream is
started, never shown to a caller, never logged.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from keel.errors import ConfigError, InvalidRequestError
from keel.mcp.names import check_alias

__all__ = ["McpConfig", "ToolOverride", "UpstreamConfig", "parse_mcp_config", "secret_refs"]

_SECRET = re.compile(r"\{secret:([^{}\s]+)\}")


def secret_refs(text: str) -> list[str]:
    """The secret references in ``text``, as secret-store references (``store:NAME`` ...)."""
    return [ref if ":" in ref else f"store:{ref}" for ref in _SECRET.findall(text)]


def fill_secrets(text: str, resolve: Any) -> str:
    """``text`` with each ``{secret:...}`` replaced by ``resolve(reference)``."""
    return _SECRET.sub(lambda m: resolve(secret_refs(m.group(0))[0]), text)


class ToolOverride(BaseModel):
    """Per-tool settings that override the upstream's defaults."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    effect: Literal["read", "reversible", "irreversible"] | None = None
    scope: str | None = Field(None, min_length=1, max_length=200)
    cost_usd: Decimal | None = Field(None, ge=0)
    timeout_seconds: float | None = Field(None, gt=0, le=3600)
    idempotent: bool | None = None
    hidden: bool = False


class UpstreamConfig(BaseModel):
    """One upstream MCP server: a command spoken to over stdio, or a streamable-HTTP URL."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    command: str | list[str] | None = None
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None
    url: str | None = Field(None, pattern=r"^https?://[^\s]+$")
    headers: dict[str, str] = Field(default_factory=dict)
    scope: str | None = Field(None, min_length=1, max_length=200)
    effect: Literal["read", "reversible", "irreversible"] = "irreversible"
    cost_usd: Decimal = Field(Decimal("0"), ge=0)
    timeout_seconds: float = Field(30.0, gt=0, le=3600)
    connect_timeout_seconds: float = Field(20.0, gt=0, le=600)
    protocol: Literal["auto", "legacy"] = "auto"
    approve_new_tools: Literal["auto", "review"] = "auto"
    trusted_output: bool = False
    resources: bool = True
    prompts: bool = True
    tools: dict[str, ToolOverride] = Field(default_factory=dict)
    path_roots: list[str] = Field(
        default_factory=list,
        description="Folders path arguments must stay inside (symlinks resolved); empty: any "
        "absolute path, but never traversal, NUL bytes, '~' or device paths.",
    )

    @pydantic.model_validator(mode="after")
    def _one_transport(self) -> UpstreamConfig:
        if (self.command is None) == (self.url is None):
            raise ValueError("give either 'command' (stdio) or 'url' (streamable HTTP), not both")
        if self.url is not None and (self.env or self.args or self.cwd):
            raise ValueError("'env', 'args' and 'cwd' apply to a 'command' upstream only")
        if self.command is not None and self.headers:
            raise ValueError("'headers' apply to a 'url' upstream only")
        if isinstance(self.command, list) and not self.command:
            raise ValueError("'command' is empty")
        return self

    def argv(self) -> list[str]:
        """The command line of a stdio upstream."""
        assert self.command is not None
        command = shlex.split(self.command) if isinstance(self.command, str) else self.command
        return [*command, *self.args]

    def override(self, tool: str) -> ToolOverride:
        return self.tools.get(tool) or ToolOverride()


_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")


class McpConfig(BaseModel):
    """The MCP gateway's settings."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    upstreams: dict[str, UpstreamConfig] = Field(default_factory=dict)
    allowed_hosts: tuple[str, ...] = Field(
        _LOOPBACK_HOSTS,
        description="Host header values /mcp accepts (port ignored; '*' accepts any): "
        "DNS-rebinding protection.",
    )
    allowed_origins: tuple[str, ...] = Field(
        (),
        description="Browser origins /mcp accepts besides loopback ones; a request with any "
        "other Origin header is refused (403).",
    )
    max_message_bytes: int | None = Field(
        None, gt=0, description="Largest JSON-RPC message accepted (default: max_payload_bytes)."
    )
    max_result_bytes: int = Field(
        1024 * 1024, gt=0, description="Upstream results larger than this are truncated."
    )
    refresh_seconds: float = Field(
        15.0, gt=0, description="How old an upstream's tool list may get before it is re-read."
    )
    approval_wait_seconds: float = Field(
        0.0,
        ge=0,
        le=3600,
        description="How long a tools/call that needs approval waits for the decision when the "
        "client asked for progress (a progressToken); 0 answers 'pending' at once.",
    )
    expose_keel_tools: bool = Field(
        True, description="List Keel's own registered tools beside the upstreams' ones."
    )
    session_idle_seconds: float = Field(1800.0, gt=0)
    stateless_http: bool = Field(
        False,
        description="Serve handshake-era clients without server-side sessions (every request "
        "stands alone). Needed when several `keel serve` workers or replicas share clients "
        "without session affinity; 2026-07-28 clients are stateless anyway.",
    )
    body_timeout_seconds: float = Field(
        30.0, gt=0, le=600, description="A request body must arrive within this (slow drip: 408)."
    )


def parse_mcp_config(raw: Mapping[str, Any]) -> McpConfig:
    """Validate the ``mcp:`` section; ConfigError naming the key that is wrong."""
    try:
        config = McpConfig.model_validate(dict(raw))
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ConfigError(
            f"setting 'mcp.{where}': {err['msg']}", context={"key": f"mcp.{where}"}
        ) from None
    for alias, upstream in config.upstreams.items():
        try:
            check_alias(alias)
        except InvalidRequestError as exc:
            raise ConfigError(
                f"setting 'mcp.upstreams.{alias}': {exc.message}",
                context={"key": f"mcp.upstreams.{alias}"},
            ) from None
        texts = [*upstream.env.values(), *upstream.headers.values()]
        for text in texts:
            for ref in secret_refs(text):
                kind = ref.split(":", 1)[0]
                if kind not in ("store", "env", "file"):
                    raise ConfigError(
                        f"setting 'mcp.upstreams.{alias}': secret reference {ref!r} is not "
                        "store:NAME, env:VAR or file:PATH",
                        context={"key": f"mcp.upstreams.{alias}"},
                    )
    return config
