"""Keel's settings: one immutable object, documented per field. Loading is in ``keel.configfile``.

Only settings that the core needs live here; each later part adds a small settings object of its
own rather than growing this one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["KeelConfig"]


class KeelConfig(BaseModel):
    """Settings of one Keel instance. Immutable; unknown keys are refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    store_url: str = Field(
        "sqlite:///keel.db",
        description="Where Keel keeps its state: sqlite:///path.db (default) or sqlite:///:memory:.",
    )
    home: Path = Field(
        Path(".keel"),
        description="Folder for keys, the redaction salt and the external audit anchor file.",
    )
    policy_paths: tuple[Path, ...] = Field(
        (), description="Policy YAML files (or folders of them) loaded at start."
    )
    token_issuer: str = Field("keel", description="The `iss` of agent tokens Keel mints.")
    token_audience: str = Field("keel", description="The `aud` agent tokens must carry.")
    token_ttl_seconds: int = Field(
        600, ge=60, le=900, description="Default agent token lifetime (1–15 minutes)."
    )
    token_leeway_seconds: int = Field(
        60, ge=0, le=60, description="Clock skew tolerated on exp/nbf/iat (at most 60 s)."
    )
    max_payload_bytes: int = Field(
        1024 * 1024, gt=0, description="Largest accepted arguments or result, in bytes (1 MiB)."
    )
    max_json_depth: int = Field(64, gt=0, le=512, description="Deepest accepted JSON nesting.")
    agent_request_signing: Literal["off", "optional", "required"] = Field(
        "optional",
        description="Signed agent requests on the HTTP server (Keel-Signature headers): 'off' "
        "ignores signatures, 'optional' checks them when present, 'required' refuses unsigned "
        "agent requests.",
    )
    agent_signing_keys: dict[str, dict[str, str]] = Field(
        default_factory=dict,
        description="Key id -> {agent: <agent id>, public_key: <base64url raw Ed25519>}: the keys "
        "agents sign requests with; a signature binds the request to that agent "
        "(`keel token keygen` makes one).",
    )
    agent_mtls_bind: bool = Field(
        True,
        description="When an agent presents a TLS client certificate (keel serve --tls-client-ca), "
        "its identity (a SAN URI's last path segment, else a SAN DNS name, else the CN) must be "
        "the token's agent.",
    )
    proxy_default_max_tokens: int = Field(
        4096,
        gt=0,
        le=262_144,
        description="max_tokens for a proxied model request that names none (the worst case "
        "reserved against budgets).",
    )
    proxy_redact_prompts: bool = Field(
        True,
        description="Replace secrets and personal data in prompts before they reach a provider.",
    )
    proxy_redact_responses: bool = Field(
        True,
        description="Replace secrets and personal data in model answers (also across streamed "
        "chunks) before they reach the client.",
    )
    idempotency_retention_seconds: int = Field(
        24 * 3600, gt=0, description="How long a completed idempotency key replays its outcome."
    )
    kill_switch_refresh_seconds: float = Field(
        0.25,
        gt=0,
        le=1.0,
        description="How stale this process's view of kill switches may be, in seconds.",
    )
    audit_checkpoint_every: int = Field(
        1000, gt=0, description="Sign an audit checkpoint after this many records."
    )
    audit_partitions: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="Independent audit hash chains to spread appends over (records of one run "
        "share a chain). Default: 1 on SQLite, 8 on PostgreSQL, where appends to different "
        "chains run in parallel.",
    )
    models: dict[str, Any] = Field(
        default_factory=dict,
        description="Model providers, models, prices, router and cache (keel.runtime.modelconfig).",
    )
    audit_anchor_file: bool = Field(
        True, description="Also append signed checkpoints to <home>/audit-anchor.jsonl."
    )
    telemetry_tracing: bool = Field(
        False,
        description="Make OpenTelemetry spans (run, step, call) in process; trace ids go into "
        "audit records. Implied by telemetry_otlp_endpoint. Off: no spans, near-zero cost.",
    )
    telemetry_otlp_endpoint: str | None = Field(
        None,
        pattern=r"^https?://[^\s]+$",
        description="Export spans over OTLP/HTTP to this collector (http://host:4318; "
        "/v1/traces is appended unless given). None (default): nothing leaves the machine.",
    )
    telemetry_service_name: str = Field(
        "keel", min_length=1, max_length=200, description="The `service.name` of exported spans."
    )
    telemetry_global_tracer: bool = Field(
        False,
        description="Also install this App's tracer provider as OpenTelemetry's process-global "
        "one (so instrumented libraries join its traces). Only one App per process should.",
    )
    telemetry_metrics: bool = Field(
        True, description="Count calls, latency and cost for Prometheus (GET /metrics)."
    )
    metrics_require_key: bool = Field(
        False,
        description="GET /metrics needs an operator API key (viewer or above, every tenant).",
    )
    mcp: dict[str, Any] = Field(
        default_factory=dict,
        description="The MCP gateway: upstream MCP servers (stdio commands or streamable-HTTP "
        "URLs, each with its own credentials), allowed Hosts/Origins and message limits "
        "(keel.mcp.config).",
    )
    http_tools: dict[str, Any] = Field(
        default_factory=dict,
        description="REST endpoints declared as governed tools: name -> method, URL template, "
        "argument mapping, response mapping, credentials from the secret store "
        "(keel.tools.http).",
    )
    egress_allow: tuple[str, ...] = Field(
        (),
        description="Hosts, IP addresses or CIDR ranges that outbound tool requests may reach "
        "although they are private, loopback or link-local (refused by default: SSRF).",
    )
    log_format: Literal["text", "json"] = Field(
        "text",
        description="Server logs as text, or as JSON lines with run/step/trace ids (secrets "
        "redacted).",
    )
